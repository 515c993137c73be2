"""The bench figures: zero-based summaries with value labels, error bars only with several seeds,
combinations in one panel per size, the suite in every title."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure
import pytest

from dmrnet.bench.report import plot_combinations, plot_summaries, size_colour, write_outputs


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved, kept open for inspection."""
    saved = []
    real = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return saved


def stat(mean, std=None):
    return {"mean": mean, "std": std, "n": 1 if std is None else 3}


def dataset(names, seeds=(0,), std=None):
    methods = {}
    for offset, label in enumerate(("dmrnet", "moddrop")):
        methods[label] = {
            "summary": {
                k: stat(0.9 - 0.1 * offset, std) for k in ("mean", "worst", "full", "expected")
            },
            "combinations": {
                n: stat(0.95 - 0.01 * i - 0.05 * offset, std) for i, n in enumerate(names)
            },
        }
    return {
        "metric": "accuracy",
        "higher_is_better": True,
        "combinations": names,
        "seeds": list(seeds),
        "methods": methods,
    }


def test_summaries_are_zero_based_labelled_and_without_error_bars_for_one_seed(tmp_path, figures):
    plot_summaries(dataset(["a", "b", "a+b"]), "suite tiny, synthetic", tmp_path / "s.png")
    ax = figures[-1].axes[0]
    assert ax.get_ylim()[0] == 0
    assert "80.0" in [t.get_text() for t in ax.texts] and "90.0" in [t.get_text() for t in ax.texts]
    assert not ax.containers[4:], "no error bars with one seed"  # 4 bar groups, nothing else
    assert "suite tiny" in ax.get_title() and "1 seed" in ax.get_title()
    legend = ax.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1  # right of the bars
    plot_summaries(dataset(["a", "b", "a+b"], (0, 1, 2), std=0.01), "x", tmp_path / "t.png")
    assert len(figures[-1].axes[0].containers) == 8  # 4 bar groups + 4 error bars


def test_combinations_are_split_by_size_with_values_in_the_cells(tmp_path, figures):
    names = ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]
    plot_combinations(dataset(names), "suite tiny, synthetic", tmp_path / "c.png", "dmrnet")
    fig = figures[-1]
    panels = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in panels] == [
        "1 modality (3 combinations)",
        "2 modalities (3 combinations)",
        "3 modalities (1 combination)",
    ]
    assert panels[0]._left_title.get_color() == size_colour(1)
    assert [t.get_text() for t in panels[0].xaxis.get_ticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in panels[2].texts] == ["89.0", "84.0"]
    assert "suite tiny" in fig._suptitle.get_text()
    assert min(t.get_fontsize() for t in panels[0].xaxis.get_ticklabels()) >= 8


def test_write_outputs_names_figures_by_suite_and_dataset(tmp_path):
    data = dataset(["a", "b", "a+b"])
    for entry in data["methods"].values():
        entry.update(config="x.yaml", train_wall_s=stat(1.0), evaluations={})
    data["methods"]["moddrop"]["comparison"] = {
        "seeds": [0],
        "combinations_reference_better": 3,
        "combinations_method_better": 0,
        "combinations": 3,
        **{
            k: {"difference": stat(-0.1), "reference_wins": 1, "ties": 0, "reference_losses": 0}
            for k in ("mean", "worst", "full", "expected")
        },
    }
    data.update(split="test", modalities=["a", "b"], leaders={"mean": "dmrnet"})
    results = {
        "suite": "tiny",
        "command": "x",
        "date": "now",
        "reference": "dmrnet",
        "machine": {"summary": "here"},
        "datasets": {"syn": data},
    }
    written = write_outputs(results, tmp_path / "report.md", tmp_path / "figures")
    assert {p.name for p in written} == {
        "tiny-syn-summaries.png",
        "tiny-syn-combinations.png",
        "report.md",
    }
    assert all(p.stat().st_size > 0 for p in written)


def test_a_lower_is_better_metric_is_drawn_to_its_own_scale(tmp_path, figures):
    data = dataset(["a", "b", "a+b"], (0, 1), std=0.002)
    data["higher_is_better"] = False
    for entry in data["methods"].values():
        for stat_ in [*entry["summary"].values(), *entry["combinations"].values()]:
            stat_["mean"] /= 20  # ACER-like values of a few percent
    plot_summaries(data, "suite pad, pad", tmp_path / "s.png")
    ax = figures[-1].axes[0]
    bottom, top = ax.get_ylim()
    assert bottom == 0 and 4.7 < top < 6  # 4.5% + the spread, with room for the labels
    assert "4.50" in [t.get_text() for t in ax.texts]  # two decimals below 10
    plot_combinations(data, "suite pad, pad", tmp_path / "c.png", "dmrnet")
    first = next(ax for ax in figures[-1].axes if ax.get_title(loc="left"))
    # moddrop's ACER is lower, so better: its cells lie above the colour midpoint (blue).
    image = first.get_images()[0]
    assert (image.get_array()[1] > 0).all() and [t.get_text() for t in first.texts][:2] == [
        "4.75",
        "4.70",
    ]
