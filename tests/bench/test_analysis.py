"""The analyses of dmrnet.bench.analysis on hand-made results.json sections."""

import pytest

from dmrnet.bench.analysis import (
    ANALYSES,
    evaluation_shift,
    metric_tables,
    paired_rungs,
    variance_against_error,
)


def seed(combinations, variance=None, hcr=None, metrics=None):
    values = list(combinations.values())
    result = {
        "combinations": combinations,
        "summary": {"mean": sum(values) / len(values), "worst": min(values)},
    }
    if variance is not None:
        result["variance"] = variance
    if hcr is not None:
        result["hcr"] = {"rule": "unimodal-max", "selected": hcr}
    if metrics is not None:
        result["metrics"] = metrics
    return result


def dataset(methods, higher=True):
    return {
        "metric": "accuracy",
        "higher_is_better": higher,
        "modalities": ["a", "b"],
        "combinations": ["a", "b", "a+b"],
        "seeds": [0, 1],
        "evaluations": [],
        "methods": methods,
    }


LADDER = dataset(
    {
        "base": {
            "seeds": {
                "0": seed({"a": 0.7, "b": 0.6, "a+b": 0.9}),
                "1": seed({"a": 0.8, "b": 0.6, "a+b": 0.9}),
            }
        },
        "mid": {
            "seeds": {
                "0": seed({"a": 0.75, "b": 0.6, "a+b": 0.95}),
                "1": seed({"a": 0.8, "b": 0.7, "a+b": 0.9}),
            }
        },
        "top": {"seeds": {"1": seed({"a": 0.9, "b": 0.7, "a+b": 1.0})}},
    }
)


def test_ladder_rungs_are_paired_by_seed_against_the_rung_below():
    rungs = paired_rungs(LADDER)
    assert [(r["from"], r["to"]) for r in rungs] == [("base", "mid"), ("mid", "top")]
    first = rungs[0]
    assert first["seeds"] == [0, 1]
    assert first["differences"]["a"]["mean"] == pytest.approx(0.025)
    assert first["differences"]["b"]["mean"] == pytest.approx(0.05)
    assert first["differences"]["a+b"]["std"] == pytest.approx(0.0353553, rel=1e-5)
    # Only seed 1 is shared with the top rung: one difference, no spread.
    second = rungs[1]
    assert second["seeds"] == [1]
    assert second["differences"]["a"] == {"mean": pytest.approx(0.1), "std": None, "n": 1}
    text = "\n".join(ANALYSES["ladder"](LADDER))
    assert "| mid - base | 2 | +2.50 ± 3.54 |" in text


def test_variance_against_error_compares_the_hardest_unimodal_combination():
    data = dataset(
        {
            "dmrnet": {
                "seeds": {
                    # b has the larger error and the larger variance: agrees.
                    "0": seed(
                        {"a": 0.9, "b": 0.6, "a+b": 0.95},
                        {"a": 0.2, "b": 0.5, "a+b": 1.0},
                        hcr=["b"],
                    ),
                    # a has the larger error but b the larger variance: disagrees.
                    "1": seed({"a": 0.5, "b": 0.6, "a+b": 0.95}, {"a": 0.2, "b": 0.5, "a+b": 1.0}),
                    # equal unimodal errors: not counted.
                    "2": seed({"a": 0.6, "b": 0.6, "a+b": 0.95}, {"a": 0.2, "b": 0.5, "a+b": 1.0}),
                }
            },
            "moddrop": {"seeds": {"0": seed({"a": 0.9, "b": 0.6, "a+b": 0.95})}},
        }
    )
    found = variance_against_error(data)
    assert (found["agreed"], found["counted"]) == (1, 2)
    rows = found["rows"]
    assert [r["method"] for r in rows] == ["dmrnet"] * 3  # moddrop has no variance
    assert [r["agrees"] for r in rows] == [True, False, None]
    assert rows[0]["error"]["b"] == pytest.approx(0.4) and rows[0]["hcr_selected"] == ["b"]
    text = "\n".join(ANALYSES["variance"](data))
    assert "| dmrnet | 0 | 10.0 / 0.200 | 40.0 / 0.500 | 5.0 / 1.000 | yes | b |" in text
    assert "in 1 of 2 runs" in text
    # For a lower-is-better metric the metric itself is the error.
    lower = dict(data, higher_is_better=False)
    assert variance_against_error(lower)["rows"][0]["hardest_by_error"] == ["a"]


def pad_metrics(acer_a, acer_b):
    def metric(a, b):
        return {
            "combinations": {"a": a, "b": b, "a+b": min(a, b)},
            "summary": {"mean": (a + b + min(a, b)) / 3, "worst": max(a, b)},
        }

    return {"apcer": metric(acer_a, acer_b), "acer": metric(acer_a, acer_b)}


def test_metric_tables_and_the_shift_of_an_extra_evaluation():
    def method(own, again):
        return {
            "seeds": {
                str(s): seed({"a": v[0], "b": v[1], "a+b": min(v)}, metrics=pad_metrics(*v))
                for s, v in enumerate(own)
            },
            "evaluations": {
                "eer": {
                    "seeds": {
                        str(s): seed({"a": v[0], "b": v[1], "a+b": min(v)}, metrics=pad_metrics(*v))
                        for s, v in enumerate(again)
                    }
                }
            },
        }

    data = dataset(
        {
            "dmrnet": method([(0.1, 0.2), (0.2, 0.2)], [(0.05, 0.1), (0.1, 0.1)]),
            "moddrop": method([(0.1, 0.3), (0.1, 0.3)], [(0.1, 0.3), (0.1, 0.3)]),
        },
        higher=False,
    )
    data["evaluations"] = ["eer"]
    own = metric_tables(data)
    assert set(own) == {"apcer", "acer"}
    assert own["acer"]["dmrnet"]["a"]["mean"] == pytest.approx(0.15)
    assert own["acer"]["moddrop"]["worst"] == {"mean": pytest.approx(0.3), "std": 0.0, "n": 2}
    assert metric_tables(data, "eer")["acer"]["dmrnet"]["b"]["mean"] == pytest.approx(0.1)
    shift = evaluation_shift(data, "eer")
    assert shift["dmrnet"]["differences"]["b"]["mean"] == pytest.approx(-0.1)
    assert shift["moddrop"]["differences"]["mean"]["mean"] == pytest.approx(0.0)
    text = "\n".join(ANALYSES["metrics"](data))
    assert "### Every metric, the runs' own evaluation" in text
    assert "### Every metric, evaluation `eer`" in text
    assert "| combination | APCER dmrnet | APCER moddrop | ACER dmrnet | ACER moddrop |" in text
    assert "dmrnet -8.33 ± 2.36" in text
