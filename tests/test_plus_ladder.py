"""The ladder of the dmrnet-plus suites: rungs named in the suite (with `method@evaluation` for an
extra evaluation of a method's runs), paired on the mean and the worst combination with W/T/L."""

import pytest
import yaml

from dmrnet.bench.analysis import ANALYSES, paired_rungs
from dmrnet.bench.suite import load_suite
from dmrnet.errors import ConfigError


def seed(a, b, ab):
    return {
        "combinations": {"a": a, "b": b, "a+b": ab},
        "summary": {"mean": (a + b + ab) / 3, "worst": min(a, b, ab)},
    }


DATASET = {
    "metric": "accuracy",
    "higher_is_better": True,
    "combinations": ["a", "b", "a+b"],
    "ladder": ["base", "plus@fixed", "plus"],
    "methods": {
        "base": {"seeds": {"0": seed(0.6, 0.5, 0.9), "1": seed(0.7, 0.5, 0.9)}, "evaluations": {}},
        "baseline": {"seeds": {"0": seed(0.9, 0.9, 0.9)}, "evaluations": {}},  # not a rung
        "plus": {
            "seeds": {"0": seed(0.7, 0.6, 0.9), "1": seed(0.7, 0.6, 0.9)},
            "evaluations": {
                "fixed": {"seeds": {"0": seed(0.6, 0.6, 0.9), "1": seed(0.7, 0.4, 0.9)}}
            },
        },
    },
}


def test_the_ladder_follows_the_suites_rungs_and_counts_wins_on_mean_and_worst():
    rows = paired_rungs(DATASET)
    assert [(r["from"], r["to"]) for r in rows] == [("base", "plus@fixed"), ("plus@fixed", "plus")]
    first, second = rows
    # plus@fixed - base: seed 0 worst 0.6 vs 0.5 (win), seed 1 worst 0.4 vs 0.5 (loss).
    assert first["wins_ties_losses"]["worst"] == [1, 0, 1]
    assert first["differences"]["worst"]["mean"] == pytest.approx(0.0)
    assert second["wins_ties_losses"]["mean"] == [2, 0, 0]
    assert second["differences"]["b"]["mean"] == pytest.approx(0.1)
    text = "\n".join(ANALYSES["ladder"](DATASET))
    assert "| plus - plus@fixed | 2 |" in text and "| 2/0/0 |" in text
    lower = {**DATASET, "higher_is_better": False}  # ACER: lower is better, wins flip
    assert paired_rungs(lower)[1]["wins_ties_losses"]["mean"] == [0, 0, 2]


def test_a_ladder_rung_that_is_not_a_method_or_evaluation_is_a_one_line_error(tmp_path):
    suite = {
        "name": "x",
        "seeds": [0],
        "datasets": {
            "handwritten": {
                "evaluations": {"fixed": ["eval.ensemble_fit=none"]},
                "ladder": ["dmrnet", "dmrnet@fitted"],
                "methods": {"dmrnet": {"config": "handwritten/dmrnet"}},
            }
        },
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match=r"ladder: 'dmrnet@fitted' is not a method label"):
        load_suite(str(path))
    suite["datasets"]["handwritten"]["ladder"] = ["dmrnet", "dmrnet@fixed"]
    path.write_text(yaml.safe_dump(suite))
    assert load_suite(str(path)).suite.datasets["handwritten"].ladder[1] == "dmrnet@fixed"


def test_report_only_trains_nothing_and_reports_the_finished_runs(tmp_path, capsys):
    from dmrnet.cli import main

    out = tmp_path / ("long-folder-name-" * 5) / "bench"  # a path wider than the console
    args = ["bench", "quick", "--out", str(out), "--report-only", "--datasets", "handwritten"]
    assert main([*args, "--seeds", "0"]) == 0
    assert not (out / "runs").exists()  # nothing trained
    assert (out / "report.md").is_file() and (out / "results.json").is_file()
    printed = capsys.readouterr().out
    assert f"written: {out / 'report.md'}, {out / 'results.json'}" in printed  # unwrapped
