import json
from pathlib import Path

import pytest
import yaml

from dmrnet.bench import collect, job_state, load_suite, run_bench
from dmrnet.bench import runner as bench_runner
from dmrnet.bench.report import compare, mean_std
from dmrnet.cli import main
from dmrnet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write_suite(tmp_path: Path, make_config, dataset: dict | None = None, **changes) -> Path:
    """A two-method, two-seed suite on the synthetic views (tests/conftest.py), one epoch a run;
    `dataset` adds keys to its dataset section, `changes` replaces top-level keys."""
    for method in ("dmrnet", "moddrop"):
        config = make_config(method)
        config["train"]["epochs"] = 1
        (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump(config))
    suite = {
        "name": "tiny",
        "description": "two methods on synthetic views",
        "seeds": [0, 1],
        "speed": {"train_steps": 2, "warmup_steps": 1, "repeats": 2, "isolate": False},
        "datasets": {
            "synthetic": {
                "methods": {
                    "dmrnet": {"config": "dmrnet.yaml"},
                    "moddrop": {"config": "moddrop.yaml", "overrides": ["model.mu_norm=false"]},
                },
                **(dataset or {}),
            }
        },
    }
    suite.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def quiet():
    from rich.console import Console

    return Console(quiet=True)


def test_a_suite_expands_to_one_job_per_dataset_method_and_seed(tmp_path, make_config):
    loaded = load_suite(str(write_suite(tmp_path, make_config)), overrides=["train.epochs=2"])
    assert [job.key for job in loaded.jobs] == [
        "synthetic/dmrnet/seed0",
        "synthetic/dmrnet/seed1",
        "synthetic/moddrop/seed0",
        "synthetic/moddrop/seed1",
    ]
    moddrop = loaded.jobs[3].config
    assert moddrop.seed == 1 and moddrop.train.epochs == 2 and moddrop.model.mu_norm is False
    assert not moddrop.train.progress_bar
    sliced = load_suite(str(tmp_path / "tiny.yaml"), seeds=[1], methods=["moddrop"])
    assert [job.key for job in sliced.jobs] == ["synthetic/moddrop/seed1"]


def test_suite_errors_name_the_key(tmp_path, make_config):
    path = write_suite(tmp_path, make_config, epochs=3)
    with pytest.raises(ConfigError, match=r"tiny.yaml: invalid config: epochs: unknown key"):
        load_suite(str(path))
    path = write_suite(tmp_path, make_config, reference="hemis")
    with pytest.raises(ConfigError, match=r"datasets.synthetic.methods: no method 'hemis'"):
        load_suite(str(path))
    path = write_suite(tmp_path, make_config, overrides=["model.no_such_key=1"])
    with pytest.raises(ConfigError, match=r"(?s)methods.dmrnet: .*model.no_such_key: unknown key"):
        load_suite(str(path))
    with pytest.raises(ConfigError, match="no method 'hemis' in the suite"):
        load_suite(str(write_suite(tmp_path, make_config)), methods=["hemis"])
    with pytest.raises(ConfigError, match="no suite file 'nope'"):
        load_suite("nope")


def test_methods_of_a_dataset_must_see_the_same_data(tmp_path, make_config):
    path = write_suite(tmp_path, make_config)
    raw = yaml.safe_load(path.read_text())
    raw["datasets"]["synthetic"]["methods"]["moddrop"]["overrides"] = ["data.val_fraction=0.3"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="different `data` sections"):
        load_suite(str(path))


def test_paired_comparison_counts_wins_per_seed_and_better_combinations():
    def entry(means, combos):
        return {
            "seeds": {
                str(s): {"summary": {"mean": m, "worst": m - 0.1, "full": None, "expected": m}}
                for s, m in enumerate(means)
            },
            "combinations": {k: {"mean": v} for k, v in combos.items()},
        }

    reference = entry([0.9, 0.8, 0.7], {"a": 0.9, "b": 0.5, "a+b": 0.95})
    method = entry([0.8, 0.8, 0.75], {"a": 0.8, "b": 0.6, "a+b": 0.95})
    result = compare(method, reference, higher_is_better=True)
    assert result["mean"]["reference_wins"] == 1
    assert result["mean"]["ties"] == 1
    assert result["mean"]["reference_losses"] == 1
    assert result["mean"]["difference"]["mean"] == pytest.approx((-0.1 + 0 + 0.05) / 3)
    assert result["full"]["difference"]["n"] == 0
    assert (result["combinations_reference_better"], result["combinations_method_better"]) == (1, 1)
    lower = compare(method, reference, higher_is_better=False)
    assert lower["mean"]["reference_wins"] == 1 and lower["mean"]["reference_losses"] == 1
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}


def test_bench_writes_the_report_and_json_with_every_summary(tmp_path, make_config):
    loaded = load_suite(str(write_suite(tmp_path, make_config)))
    out = tmp_path / "out"
    results = run_bench(loaded, out, report=tmp_path / "BENCH.md", console=quiet(), command="x")
    dataset = results["datasets"]["synthetic"]
    assert dataset["combinations"] == ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]
    moddrop = dataset["methods"]["moddrop"]
    seed_values = [moddrop["seeds"][s]["combinations"]["b+c"] for s in ("0", "1")]
    assert moddrop["combinations"]["b+c"]["mean"] == pytest.approx(sum(seed_values) / 2)
    assert set(moddrop["summary"]) == {"mean", "worst", "full", "expected"}
    comparison = moddrop["comparison"]["mean"]
    assert comparison["reference_wins"] + comparison["ties"] + comparison["reference_losses"] == 2
    assert "comparison" not in dataset["methods"]["dmrnet"]
    speed = dataset["methods"]["dmrnet"]["speed"]
    assert speed["evaluation"]["combinations"] == 7
    assert speed["evaluation"]["max_metric_difference"] == 0.0
    assert speed["training"]["samples_per_s"] > 0
    assert json.loads((out / "results.json").read_text())["datasets"]["synthetic"]["seeds"] == [
        0,
        1,
    ]
    report = (out / "report.md").read_text()
    assert "Generated by `x`" in report and "Machine:" in report
    assert "### Paired comparison with dmrnet" in report and "| moddrop |" in report
    assert "![every combination](figures/tiny-synthetic-combinations.png)" in report
    assert (out / "figures" / "tiny-synthetic-summaries.png").stat().st_size > 0
    assert "(figures/tiny-synthetic-summaries.png)" in (tmp_path / "BENCH.md").read_text()
    assert "dmrnet leads" in report or "dmrnet does not lead" in report


def test_a_slice_without_the_reference_reports_without_comparisons(tmp_path, make_config):
    loaded = load_suite(str(write_suite(tmp_path, make_config)), methods=["moddrop"], seeds=[0])
    loaded.suite.speed.enabled = False
    results = run_bench(loaded, tmp_path / "out", console=quiet(), command="x")
    assert list(results["datasets"]["synthetic"]["methods"]) == ["moddrop"]
    assert "no paired comparison" in (tmp_path / "out" / "report.md").read_text()


class Killed(Exception):
    pass


def test_a_killed_bench_skips_finished_runs_and_resumes_the_interrupted_one(
    tmp_path, make_config, monkeypatch
):
    from dmrnet.engine import LitMethod

    path = write_suite(tmp_path, make_config, overrides=["train.epochs=2"])
    loaded = load_suite(str(path))
    loaded.suite.speed.enabled = False
    out = tmp_path / "out"
    calls = []
    real_train, real_step = bench_runner.train, LitMethod.training_step

    def recording_train(config, run_dir, data_root=None, resume=False):
        calls.append((Path(run_dir).relative_to(out / "runs").as_posix(), resume))
        return real_train(config, run_dir, data_root=data_root, resume=resume)

    def dies_in_the_third_run(self, batch, batch_idx):
        if len(calls) == 3 and self.current_epoch == 1:
            raise Killed
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(bench_runner, "train", recording_train)
    monkeypatch.setattr(LitMethod, "training_step", dies_in_the_third_run)
    with pytest.raises(Killed):
        run_bench(loaded, out, console=quiet())
    states = [job_state(job, out) for job in loaded.jobs]
    assert states == ["done", "done", "resume", "new"]
    monkeypatch.setattr(LitMethod, "training_step", real_step)
    calls.clear()
    results = run_bench(loaded, out, console=quiet())
    assert calls == [("synthetic/moddrop/seed0", True), ("synthetic/moddrop/seed1", False)]
    assert len(results["datasets"]["synthetic"]["methods"]["moddrop"]["seeds"]) == 2
    assert any("resumed" in note for note in results["notes"])
    # Changing the suite afterwards is refused instead of mixing old and new results.
    changed = load_suite(str(path), overrides=["train.epochs=3"])
    with pytest.raises(ConfigError, match=r"different config \(train.epochs: 2 there, 3 now\)"):
        run_bench(changed, out, console=quiet())
    assert collect(loaded, out, None, "x", bench_runner.torch.device("cpu"))["datasets"]


@pytest.mark.slow
def test_ci_slice_of_the_quick_suite(tmp_path, handwritten_available, monkeypatch, capsys):
    """The CI smoke test: the quick suite on a tiny slice, speed measured in fresh processes."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "quick"
    code = main(
        ["bench", "quick", "--set", "train.epochs=1", "--methods", "dmrnet", "--out", str(out)]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    dmrnet = results["datasets"]["handwritten"]["methods"]["dmrnet"]
    assert len(dmrnet["combinations"]) == 63
    assert dmrnet["summary"]["mean"]["mean"] > 0.5
    evaluation = dmrnet["speed"]["evaluation"]
    assert evaluation["max_metric_difference"] == 0.0 and evaluation["speedup"] > 1
    assert dmrnet["speed"]["training"]["peak_memory_mib"] is not None
    assert "quick" in capsys.readouterr().out


def test_bad_evaluations_and_analyses_name_the_key(tmp_path, make_config):
    path = write_suite(tmp_path, make_config, {"evaluations": {"wide": ["model.embed_dim=4"]}})
    with pytest.raises(
        ConfigError,
        match=r"datasets.synthetic.evaluations.wide: 'model.embed_dim=4' changes what trains",
    ):
        load_suite(str(path))
    path = write_suite(tmp_path, make_config, {"analyses": ["nope"]})
    with pytest.raises(
        ConfigError, match=r"datasets.synthetic.analyses: no analysis 'nope'; known: ladder"
    ):
        load_suite(str(path))


def test_extra_evaluations_and_the_hcr_selection_reach_results_json(tmp_path, make_config):
    dataset = {"evaluations": {"likely": ["eval.availability_p=0.9"]}, "analyses": ["variance"]}
    path = write_suite(tmp_path, make_config, dataset, seeds=[0])
    out = tmp_path / "out"
    loaded = load_suite(str(path))
    loaded.suite.speed.enabled = False
    results = run_bench(loaded, out, console=quiet(), command="x")
    dmrnet = results["datasets"]["synthetic"]["methods"]["dmrnet"]
    # The HCR's selection and the statistics it was made on, from the run's results.json.
    hcr = dmrnet["seeds"]["0"]["hcr"]
    assert hcr["rule"] == "unimodal-max" and hcr["selected_at_epoch"] == 0
    assert len(hcr["selected"]) == 1 and hcr["selected"][0] in ("a", "b", "c")
    unimodal = {c: hcr["statistics"][c]["variance"] for c in ("a", "b", "c")}
    assert hcr["selected"][0] == max(unimodal, key=unimodal.get)
    assert "hcr" not in results["datasets"]["synthetic"]["methods"]["moddrop"]["seeds"]["0"]
    # The extra evaluation: the same weights and numbers per combination, another expected value.
    again = dmrnet["evaluations"]["likely"]
    assert again["combinations"] == dmrnet["combinations"]
    assert again["summary"]["expected"] != dmrnet["summary"]["expected"]
    assert (
        "comparison"
        in results["datasets"]["synthetic"]["methods"]["moddrop"]["evaluations"]["likely"]
    )
    stored = out / "runs/synthetic/dmrnet/seed0/evaluations/likely"
    assert json.loads((stored / "results.json").read_text())["combinations"]
    report = (out / "report.md").read_text()
    assert "### Embedding variance beside the error" in report
    # The one reuse rule covers the evaluations too: changing one is refused, not mixed in.
    changed = write_suite(
        tmp_path, make_config, {"evaluations": {"likely": ["eval.availability_p=0.8"]}}, seeds=[0]
    )
    with pytest.raises(
        ConfigError, match=r"likely holds results of a different config \(eval.availability_p"
    ):
        run_bench(load_suite(str(changed)), out, console=quiet())
