"""Per-combination calibration (dmrnet.calibration): temperature scaling, the confidence metrics,
abstention thresholds, storage in the checkpoint, predict / CLI abstention and availability."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAUROC, MulticlassCalibrationError

import dmrnet
from dmrnet.calibration import Calibration, RiskCoverage, fit_temperature, parse_availability
from dmrnet.cli import main
from dmrnet.config import parse_config
from dmrnet.data.loaders import make_loader
from dmrnet.errors import ConfigError, DataError
from dmrnet.evaluate import CONFIDENCE_PLOTS, build_report, calibrate_combinations
from dmrnet.files import write_with_checksum
from dmrnet.metrics import (
    CombinationLogits,
    calibration_error_floor,
    confidence_metrics,
    expected_value,
    summarize,
)
from dmrnet.modalities import ModalitySet
from dmrnet.runs import build_data_for, load_checkpoint, train
from dmrnet.tasks import PresentationAttackTask


def overconfident_logits(samples: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(base); the logits handed out are 4 * base (overconfident)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(samples, 5, generator=generator)
    target = torch.multinomial(base.softmax(-1), 1, generator=generator).squeeze(1)
    return 4.0 * base, target


def test_temperature_scaling_lowers_nll_on_an_overconfident_fixture():
    logits, target = overconfident_logits()
    temperature = fit_temperature(logits, target)
    assert temperature == pytest.approx(4.0, rel=0.2)  # recovers the factor
    before = confidence_metrics(logits, target)
    after = confidence_metrics(logits / temperature, target)
    assert after["nll"] < before["nll"] - 0.1
    assert after["ece"] < before["ece"] / 2
    assert after["brier"] < before["brier"]
    assert fit_temperature(logits[:0], target[:0]) == 1.0  # no samples: identity


def test_confidence_metrics_match_torchmetrics_and_a_hand_computed_case():
    logits, target = overconfident_logits(200, seed=1)
    values = confidence_metrics(logits, target)
    probabilities = logits.softmax(-1)
    ece = MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")
    assert values["ece"] == pytest.approx(float(ece(probabilities, target)), abs=1e-6)
    confidence, prediction = probabilities.max(-1)
    errors = (prediction != target).long()
    assert values["auroc"] == pytest.approx(float(BinaryAUROC()(1 - confidence, errors)), 1e-5)
    # Four samples, confidences 0.9 > 0.8 > 0.7 > 0.6, correct: yes, no, yes, no.
    hand = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]]))
    values = confidence_metrics(hand, torch.tensor([0, 0, 0, 0]))
    assert values["accuracy_at_50"] == pytest.approx(0.5)  # top 2: correct, wrong
    assert values["accuracy_at_80"] == pytest.approx(0.5)  # ceil(3.2) = 4 samples
    # risks of the top 1..4: 0, 1/2, 1/3, 1/2
    assert values["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert values["auroc"] == pytest.approx(0.75)  # errors at 0.8 and 0.6 vs correct 0.9, 0.7
    assert math.isnan(confidence_metrics(hand[:0], torch.zeros(0))["nll"])


def test_the_ece_floor_is_the_ece_of_outcomes_drawn_from_the_confidences():
    from torchmetrics.functional.classification import binary_calibration_error

    confidence = torch.rand(500, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.5
    generator = torch.Generator().manual_seed(0)
    drawn = torch.rand(1, 500, generator=generator, dtype=torch.float64)[0] < confidence
    one_draw = calibration_error_floor(confidence, draws=1, seed=0)
    expected = binary_calibration_error(confidence.double(), drawn.long(), n_bins=15)
    assert one_draw == pytest.approx(float(expected), abs=1e-9)
    # Sampling noise shrinks with the number of samples.
    many = torch.rand(20000, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.5
    assert calibration_error_floor(many) < calibration_error_floor(confidence) / 3


def test_thresholds_reach_the_requested_accuracy_on_validation():
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(300, generator=generator).round(decimals=2)  # with ties
    correct = torch.rand(300, generator=generator) < confidence  # confident = more often right
    curve = RiskCoverage.of(confidence, correct)
    for accuracy in (0.6, 0.8, 0.95):
        threshold, coverage = curve.threshold_for(accuracy)
        kept = confidence >= threshold
        assert float(correct[kept].double().mean()) >= accuracy
        assert coverage == pytest.approx(float(kept.double().mean()))
        # No lower threshold on these samples keeps more of them at that accuracy.
        for lower in confidence[confidence < threshold].unique():
            mask = confidence >= lower
            assert float(correct[mask].double().mean()) < accuracy
    assert curve.threshold_for(1.01) == (math.inf, 0.0)


def test_dense_logits_are_collected_per_pixel_without_ignored_pixels():
    collector = CombinationLogits(ignore_index=255, max_pixels=5)
    logits = torch.randn(2, 3, 4, 2, 2)  # (C, B, K, H, W)
    target = torch.tensor([[[0, 1], [255, 2]], [[3, 255], [255, 255]], [[1, 1], [1, 1]]])
    usable = torch.tensor([[True, True, False], [True, False, True]])
    collector.update(logits, target, usable)
    collected = collector.compute()
    assert collected["logits"].shape == (5, 2, 4)  # 7 valid pixels, at most 5 kept
    assert not (collected["target"] == 255).any()
    # Each pixel keeps its image's usability and its own logits.
    for row in range(5):
        matches = (logits.permute(1, 3, 4, 0, 2) == collected["logits"][row]).all(-1).all(-1)
        image = int(torch.nonzero(matches)[0, 0])
        assert collected["usable"][row].tolist() == usable[:, image].tolist()


def test_pad_predicts_with_its_calibrated_threshold():
    task = PresentationAttackTask(bona_fide_class=1, threshold="eer")
    logits = torch.tensor([[0.0, 0.5], [0.0, -0.5], [0.0, 2.0]])  # log-odds 0.5, -0.5, 2
    assert task.decide(logits, None).tolist() == [1, 0, 1]  # argmax
    assert task.decide(logits, torch.tensor([1.0, -1.0, 1.0])).tolist() == [0, 1, 1]
    # Through the API: each sample at its combination's validation equal-error threshold.
    from tests.test_pad_metrics import pad_spec, toy_pad_data

    from dmrnet.api import Predictor
    from dmrnet.methods import build_method
    from dmrnet.runs import LoadedRun
    from dmrnet.tasks import build_task

    spec = pad_spec("eer")
    model = {"method": "moddrop", "encoder": {"name": "mlp", "options": {"hidden": [8]}}}
    config = parse_config({"data": {"name": "x"}, "model": {**model, "feature_dim": 4}})
    torch.manual_seed(0)
    method = build_method(config.model, spec, build_task(spec)).eval()
    data = toy_pad_data()
    calibration = calibrate_combinations(method, torch.utils.data.DataLoader(data, 32))
    predictor = Predictor(LoadedRun(method, config, spec, Path("pad.ckpt"), calibration))
    a = data.inputs["a"][:40]
    labels = predictor.predict({"a": a}).labels
    only_a = torch.tensor([[True, False]] * 40)
    scores = method({"a": a, "b": torch.zeros(40, 3)}, only_a).logits @ torch.tensor([-1.0, 1.0])
    assert calibration.decision is not None
    assert labels.tolist() == (scores >= calibration.decision[(0,)]).long().tolist()


def test_expected_value_per_modality_and_the_plain_mean_at_one_half():
    modalities = ModalitySet(("a", "b"))
    combinations = modalities.combinations()  # a, b, a+b
    values = [0.6, 0.7, 0.9]
    mean = summarize(values, combinations, modalities)["mean"]
    assert expected_value(values, combinations, modalities, [0.5, 0.5]) == pytest.approx(mean)
    # a with 0.9, b with 0.5: P(a only) = .45, P(b only) = .05, P(a+b) = .45, renormalized.
    expected = (0.45 * 0.6 + 0.05 * 0.7 + 0.45 * 0.9) / 0.95
    assert expected_value(values, combinations, modalities, [0.9, 0.5]) == pytest.approx(expected)
    assert parse_availability("a=0.9, b=0.5", "--availability") == {"a": 0.9, "b": 0.5}
    with pytest.raises(ConfigError, match="--availability: expected MODALITY=PROBABILITY"):
        parse_availability("a0.9", "--availability")


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory, tiny_files) -> tuple[Path, Path]:
    write_synthetic_views, tiny_config = tiny_files
    folder = tmp_path_factory.mktemp("calibration")
    views = write_synthetic_views(folder / "views.npz")
    config = tiny_config(views, "dmrnet")
    config["train"]["epochs"] = 3
    train(parse_config(config), folder / "run")
    return folder / "run", views


def test_calibration_is_fitted_after_training_stored_and_applied_by_predict(calibrated_run):
    run_dir, views = calibrated_run
    results = json.loads((run_dir / "results.json").read_text())
    section = results["calibration"]
    loaded = load_checkpoint(run_dir)
    assert loaded.calibration is not None
    names = {
        loaded.spec.modalities.format(c): t for c, t in loaded.calibration.temperatures.items()
    }
    assert names == pytest.approx(section["temperature"])
    for name in section["temperature"]:
        assert section["accuracy_at_90_before"][name] is not None
        assert {"ece_before", "ece_after", "nll_after", "brier_after", "aurc_after"} <= set(section)
    assert set(section["auroc_pooled"]) == {"confidence", "variance", "normalized_variance"}
    assert all((run_dir / name).is_file() for name in CONFIDENCE_PLOTS)
    assert "ece_after" in (run_dir / "results.csv").read_text().splitlines()[0]
    # predict: probabilities are softmax(logits / T) of each sample's combination.
    data = np.load(views)
    predictor = dmrnet.load(run_dir)
    prediction = predictor.predict({"a": data["a"][:4], "c": data["c"][:4]})
    full = {
        name: torch.as_tensor(data[name][:4], dtype=torch.float32)
        if name in "ac"
        else torch.zeros(4, data[name].shape[1])
        for name in ("a", "b", "c")
    }
    present = torch.tensor([[True, False, True]] * 4)
    logits = predictor.method(full, present).logits
    temperature = loaded.calibration.temperature((0, 2))
    assert torch.allclose(prediction.probabilities, (logits / temperature).softmax(-1), atol=1e-6)
    assert torch.allclose(prediction.confidence, prediction.probabilities.max(-1).values)
    assert not prediction.abstained.any()  # no threshold asked for


def test_calibration_lowers_validation_nll_through_the_one_pass_evaluation(calibrated_run):
    run_dir, _ = calibrated_run
    loaded = load_checkpoint(run_dir)
    loader = make_loader(build_data_for(loaded.config).val, 64, False)
    calibration = calibrate_combinations(loaded.method, loader)
    assert calibration.seconds > 0 and calibration.decision is None
    report = build_report(loaded.method, loader, "views", "dmrnet", "val", calibration=calibration)
    section = report.to_dict()["calibration"]
    # Fitted on these samples, the NLL can only go down (T = 1 was a candidate).
    for name, before in section["nll_before"].items():
        assert section["nll_after"][name] <= before + 1e-9
    assert set(report.confidences) == set(loaded.spec.modalities.combinations())
    # Round trip through the checkpoint's plain-type form.
    modalities = loaded.spec.modalities
    copy = Calibration.from_dict(calibration.to_dict(modalities), modalities)
    assert copy.temperatures == calibration.temperatures
    assert copy.threshold_for((0,), 0.5) == calibration.threshold_for((0,), 0.5)


def test_abstention_flags_round_trip_through_the_cli_csv(calibrated_run, tmp_path, capsys):
    run_dir, views = calibrated_run
    data = np.load(views)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, a=data["a"][:20], b=data["b"][:20])
    out = tmp_path / "predictions.csv"
    args = ["predict", str(run_dir), str(inputs), "--out", str(out), "--min-confidence", "0.4"]
    assert main(args) == 0
    rows = list(csv.DictReader(out.open()))
    expected = dmrnet.load(run_dir).predict(
        {"a": data["a"][:20], "b": data["b"][:20]}, min_confidence=0.4
    )
    assert [int(r["abstained"]) for r in rows] == expected.abstained.int().tolist()
    assert [float(r["confidence"]) for r in rows] == pytest.approx(
        expected.confidence.tolist(), abs=1e-4
    )
    assert all((float(r["confidence"]) < 0.4) == (r["abstained"] == "1") for r in rows)
    # --target-accuracy: per-combination thresholds from validation, and the coverage they cost.
    capsys.readouterr()
    args = ["predict", str(run_dir), str(inputs), "--out", str(out), "--target-accuracy", "0.5"]
    assert main(args) == 0
    assert "a+b: target accuracy 50%" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    expected = dmrnet.load(run_dir).predict(
        {"a": data["a"][:20], "b": data["b"][:20]}, target_accuracy=0.5
    )
    assert [int(r["abstained"]) for r in rows] == expected.abstained.int().tolist()
    threshold, _ = load_checkpoint(run_dir).calibration.threshold_for((0, 1), 0.5)
    assert torch.equal(expected.abstained, expected.confidence < threshold)
    both = [*args, "--min-confidence", "0.3"]
    with pytest.raises(SystemExit):
        main(both)  # mutually exclusive options


def test_evaluate_reports_the_expected_metric_under_given_availability(calibrated_run, tmp_path):
    run_dir, _ = calibrated_run
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--out", str(out), "--availability", "a=0.9,c=0.2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["availability"] == {"a": 0.9, "b": 0.5, "c": 0.2}
    values = list(results["combinations"].values())
    modalities = ModalitySet(tuple(results["modalities"]))
    combinations = modalities.combinations()
    expected = expected_value(values, combinations, modalities, [0.9, 0.5, 0.2])
    assert results["summary"]["expected_availability"] == pytest.approx(expected)
    all_high = expected_value(values, combinations, modalities, 0.9)
    assert results["summary"]["expected_all_p0.9"] == pytest.approx(all_high)


def test_bad_availability_and_missing_calibration_are_one_line_errors(calibrated_run, capsys):
    run_dir, views = calibrated_run
    assert main(["evaluate", str(run_dir), "--availability", "zz=0.9"]) == 2
    assert "--availability: unknown modality 'zz'" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--availability", "a=1.5"]) == 2
    assert "not a probability" in capsys.readouterr().err
    predictor = dmrnet.load(run_dir)
    data = np.load(views)
    with pytest.raises(DataError, match="min_confidence must be in"):
        predictor.predict({"a": data["a"][:2]}, min_confidence=2.0)
    predictor.calibration = None  # a checkpoint from before calibration existed
    with pytest.raises(DataError, match="no calibration"):
        predictor.predict({"a": data["a"][:2]}, target_accuracy=0.9)


def test_segmentation_is_calibrated_and_abstains_per_pixel():
    from tests.methods.test_dense import make_batch, make_method, make_spec

    from dmrnet.api import Predictor
    from dmrnet.runs import LoadedRun

    spec = make_spec(size=(16, 16))
    torch.manual_seed(0)
    method = make_method(spec=spec).eval()
    inputs, present, target = make_batch(spec, batch=3)
    target[0, :4] = 255  # ignored pixels count for nothing
    loader = [{"inputs": inputs, "present": present, "target": target}]
    calibration = calibrate_combinations(method, loader)
    assert set(calibration.temperatures) == set(spec.modalities.combinations())
    report = build_report(method, loader, "tiny", "dmrnet-seg", "val", calibration=calibration)
    section = report.to_dict()["calibration"]
    valid = int((target != 255).sum())
    before, _, correct = report.confidences[(0, 1)]
    assert before.shape == correct.shape == (valid,)  # one sample per valid pixel
    for name, value in section["nll_before"].items():
        assert section["nll_after"][name] <= value + 1e-9
    # The API scales each sample's pixel logits by its combination's temperature.
    config = parse_config({"data": {"name": spec.name}, "model": {"method": "dmrnet-seg"}})
    predictor = Predictor(LoadedRun(method, config, spec, Path("seg.ckpt"), calibration))
    prediction = predictor.predict({"rgb": inputs["rgb"]}, min_confidence=0.3)
    assert prediction.confidence.shape == prediction.abstained.shape == (3, 16, 16)
    assert torch.equal(prediction.abstained, prediction.confidence < 0.3)
    rgb_only = torch.tensor([[True, False]] * 3)
    expected = method(inputs, rgb_only).logits / calibration.temperature((0,))
    assert torch.allclose(prediction.probabilities, expected.softmax(1), atol=1e-5)


def test_evaluate_calibrates_and_stores_a_checkpoint_trained_before_calibration(
    calibrated_run, tmp_path
):
    import shutil

    run_dir, _ = calibrated_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    checkpoint_path = old / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    del checkpoint["dmrnet"]["calibration"]
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_with_checksum(checkpoint_path, buffer.getvalue())
    assert load_checkpoint(old).calibration is None
    assert main(["evaluate", str(old), "--out", str(tmp_path / "eval")]) == 0
    stored = load_checkpoint(old).calibration
    assert stored is not None
    assert stored.temperatures == pytest.approx(load_checkpoint(run_dir).calibration.temperatures)


def test_the_bench_analysis_tabulates_the_runs_calibration(calibrated_run):
    from dmrnet.bench.analysis import ANALYSES

    run_dir, _ = calibrated_run
    results = json.loads((run_dir / "results.json").read_text())
    seeds = {
        "0": {"calibration": results["calibration"]},
        "1": {"calibration": results["calibration"]},
    }
    dataset = {
        "modalities": results["modalities"],
        "methods": {"dmrnet": {"seeds": seeds, "train_wall_s": {"mean": 100.0}}},
    }
    lines = ANALYSES["calibration"](dataset)
    table = "\n".join(lines)
    ece = statistics.fmean(results["calibration"]["ece_after"].values())
    assert "| dmrnet | 2 | " in table and f"{ece:.3f} ± 0.000" in table
    share = 100 * results["calibration"]["seconds"] / 100.0
    assert f"{share:.2f} ± 0.00 |" in table
    assert sum(line.startswith("| dmrnet | ") for line in lines) == 2 + len(results["modalities"])
