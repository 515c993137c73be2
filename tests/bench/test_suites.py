"""The packaged suites parse: the studies that were scripts, and the throughput suites."""

import pytest

from dmrnet.bench import load_suite, load_throughput_suite, suite_kind
from dmrnet.bench.suite import SUITES_DIR

TRAINING = sorted(p.stem for p in SUITES_DIR.glob("*.yaml") if suite_kind(p) == "training")
THROUGHPUT = sorted(p.stem for p in SUITES_DIR.glob("*.yaml") if suite_kind(p) == "throughput")


def test_the_studies_are_packaged_suites():
    assert {"quick", "standard", "handwritten", "handwritten-pad", "avdigits-ladder"} <= set(
        TRAINING
    )
    assert {"throughput", "throughput-cpu"} <= set(THROUGHPUT)


@pytest.mark.parametrize("name", TRAINING)
def test_every_packaged_training_suite_parses(name):
    loaded = load_suite(name)
    assert loaded.jobs and all(job.config.seed == job.seed for job in loaded.jobs)


def test_the_pad_suite_evaluates_every_run_again_at_the_equal_error_threshold():
    loaded = load_suite("handwritten-pad")
    job = loaded.jobs[0]
    assert job.config.data.options["threshold"] == "argmax"
    assert job.evaluations["eer"].data.options["threshold"] == "eer"
    # Everything but the decision rule is the run's own config.
    trained, again = job.config.to_dict(), job.evaluations["eer"].to_dict()
    trained["data"]["options"].pop("threshold"), again["data"]["options"].pop("threshold")
    assert trained == again


def test_the_ladder_suite_lists_its_rungs_in_order():
    loaded = load_suite("avdigits-ladder")
    assert loaded.methods("avdigits") == ["moddrop", "moddrop-hcr", "dmrnet-no-hcr", "dmrnet"]
    clean = loaded.jobs_of("avdigits-clean", "dmrnet")[0].config
    assert clean.data.options["preset"] == "clean"
    assert loaded.suite.datasets["avdigits"].analyses == ["ladder", "variance"]


@pytest.mark.parametrize("name", THROUGHPUT)
def test_every_packaged_throughput_suite_parses(name):
    _, built = load_throughput_suite(SUITES_DIR / f"{name}.yaml")
    if name in ("throughput", "throughput-cpu"):  # the three families' networks at paper size
        assert set(built) == {"av", "seg", "surf"}
    for config, spec in built.values():
        assert config.model.hcr.warmup_epochs == 1  # the untimed epoch is the HCR's warm-up
        assert set(spec.input_shapes) == set(spec.modalities.names)
