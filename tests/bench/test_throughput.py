"""`dmrnet bench throughput` at tiny sizes on CPU: the engine's training step in fp32 and bf16
with the HCR on, and the one-pass against per-combination evaluation."""

import json

import pytest
import torch
import yaml

from dmrnet.bench.throughput import RandomInputs, load_throughput_suite
from dmrnet.cli import main
from dmrnet.errors import ConfigError


def write_suite(tmp_path, make_config, **changes):
    config = make_config("dmrnet")
    config["train"]["batch_size"] = 4
    config["eval"]["batch_size"] = 8
    (tmp_path / "dmrnet.yaml").write_text(yaml.safe_dump(config))
    suite = {
        "kind": "throughput",
        "name": "tiny-throughput",
        "steps": 2,
        "eval_batches": 1,
        "repeats": 1,
        "models": {
            "vector": {
                "config": "dmrnet.yaml",
                "classes": 4,
                "inputs": {"a": [8], "b": [5], "c": [3]},
            }
        },
        **changes,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_random_inputs_look_like_the_dataset(tmp_path, make_config):
    _, built = load_throughput_suite(write_suite(tmp_path, make_config))
    spec = built["vector"][1]
    item = RandomInputs(spec, 3)[2]
    assert item["inputs"]["b"].shape == (5,) and item["present"].all()
    assert 0 <= int(item["target"]) < 4


def test_throughput_times_both_precisions_with_the_hcr_on(tmp_path, make_config, capsys):
    path = write_suite(tmp_path, make_config)
    out = tmp_path / "out"
    assert main(["bench", str(path), "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    vector = results["models"]["vector"]
    assert vector["method"] == "dmrnet" and vector["hcr_rule"] == "unimodal-max"
    for precision in ("fp32", "bf16"):
        training = vector["training"][precision]
        assert training["steps"] == 2 and training["samples_per_s"] > 0
        assert training["hcr_active"] is True
    assert vector["training"]["bf16_over_fp32"] > 0
    evaluation = vector["evaluation"]
    assert evaluation["combinations"] == 7 and evaluation["max_metric_difference"] == 0.0
    assert evaluation["full_pass_s"] > 0 and evaluation["one_pass_over_full"] > 0
    report = (out / "report.md").read_text()
    assert (
        "# dmrnet throughput: suite `tiny-throughput`" in report and "| vector | dmrnet |" in report
    )
    # rich wraps a long path (a pytest-xdist worker's tmp_path is one) at the console's width.
    assert str(out / "report.md") in capsys.readouterr().out.replace("\n", "")


def test_bad_throughput_suites_name_the_key(tmp_path, make_config):
    path = write_suite(tmp_path, make_config, precisions=["fp16"])
    with pytest.raises(ConfigError, match=r"precisions"):
        load_throughput_suite(path)
    path = write_suite(tmp_path, make_config)
    with pytest.raises(ConfigError, match=r"no model 'av' in the suite; it has vector"):
        load_throughput_suite(path, models=["av"])
    with pytest.raises(ConfigError, match=r"(?s)models.vector: .*model.nope: unknown key"):
        load_throughput_suite(path, overrides=["model.nope=1"])
    assert main(["bench", str(path), "--seeds", "0"]) != 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_throughput_on_a_gpu(tmp_path, make_config):
    out = tmp_path / "out"
    assert (
        main(
            [
                "bench",
                str(write_suite(tmp_path, make_config)),
                "--device",
                "cuda",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    training = json.loads((out / "results.json").read_text())["models"]["vector"]["training"]
    assert training["fp32"]["peak_memory_gib"] > 0
