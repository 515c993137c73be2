"""APCER / BPCER / ACER (ISO/IEC 30107-3), the equal-error threshold, the `pad` task and its
calibration on validation, checked against hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dmrnet.config import parse_config
from dmrnet.data.base import ArrayMultiModalDataset, DataSpec
from dmrnet.engine import build_trainer
from dmrnet.errors import DataError
from dmrnet.evaluate import build_report, calibrate_combinations, evaluate_combinations
from dmrnet.methods import build_method
from dmrnet.metrics import (
    PAD_METRICS,
    EqualErrorThreshold,
    PresentationAttackMetric,
    equal_error_threshold,
    summarize,
)
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import PresentationAttackTask, build_task

# The hand-computed case: 4 bona fide samples (label 1), 3 accepted and 1 rejected; 6 attacks
# (label 0), 2 accepted as bona fide and 4 rejected.
#   APCER = 2/6, BPCER = 1/4, ACER = HTER = (1/3 + 1/4) / 2 = 7/24, accuracy = (3 + 4) / 10.
TARGET = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
ACCEPTED = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0, 0, 0]).bool()
EXPECTED = {"apcer": 2 / 6, "bpcer": 1 / 4, "acer": 7 / 24, "hter": 7 / 24, "accuracy": 0.7}


def logits_for(accepted: torch.Tensor, bona_fide_class: int = 1, margin: float = 2.0):
    """2-way logits whose bona fide log-odds is +margin where accepted, -margin elsewhere."""
    logits = torch.zeros(len(accepted), 2)
    logits[:, bona_fide_class] = torch.where(accepted, margin, -margin)
    return logits


def computed(metric_kwargs: dict, logits: torch.Tensor, target: torch.Tensor) -> dict:
    values = {}
    for name in PAD_METRICS:
        metric = PresentationAttackMetric(name, **metric_kwargs)
        metric.update(logits, target)
        values[name] = float(metric.compute())
    return values


def test_hand_computed_confusion_case_with_argmax():
    values = computed({}, logits_for(ACCEPTED), TARGET)
    assert values == pytest.approx(EXPECTED, abs=1e-12)


def test_the_paper_codes_apcer_is_the_standard_bpcer():
    # calc_accuracy_multi: APCER = living_wrong / living, NPCER = spoofing_wrong / spoofing.
    living_wrong, living = 1, 4  # bona fide rejected
    spoofing_wrong, spoofing = 2, 6  # attacks accepted
    values = computed({}, logits_for(ACCEPTED), TARGET)
    assert values["bpcer"] == pytest.approx(living_wrong / living)  # the code's "APCER"
    assert values["apcer"] == pytest.approx(spoofing_wrong / spoofing)  # the code's "NPCER"


def test_bona_fide_class_zero_gives_the_same_rates():
    logits = logits_for(ACCEPTED, bona_fide_class=0)
    values = computed({"bona_fide_class": 0}, logits, 1 - TARGET)
    assert values == pytest.approx(EXPECTED, abs=1e-12)


def test_fixed_threshold_decides_on_the_bona_fide_log_odds():
    # log-odds 1.0 where "accepted", -1.0 elsewhere: threshold 0.5 reproduces the case, a
    # threshold of 2 rejects everything (APCER 0, BPCER 1).
    logits = logits_for(ACCEPTED, margin=1.0)
    assert computed({"threshold": 0.5}, logits, TARGET) == pytest.approx(EXPECTED, abs=1e-12)
    strict = computed({"threshold": 2.0}, logits, TARGET)
    assert (strict["apcer"], strict["bpcer"], strict["acer"]) == (0.0, 1.0, 0.5)


def test_batches_and_merged_process_states_equal_one_pass():
    whole = PresentationAttackMetric("acer")
    whole.update(logits_for(ACCEPTED), TARGET)
    # Two "processes", each with part of the data, merged as the DDP sync would.
    first, second = PresentationAttackMetric("acer"), PresentationAttackMetric("acer")
    first.update(logits_for(ACCEPTED[:3]), TARGET[:3])
    second.update(logits_for(ACCEPTED[3:7]), TARGET[3:7])
    second.update(logits_for(ACCEPTED[7:]), TARGET[7:])
    first.merge_state(second)
    assert float(first.compute()) == pytest.approx(float(whole.compute()))
    assert float(whole.compute()) == pytest.approx(7 / 24)


def test_metric_without_a_class_is_nan_not_a_crash():
    only_attacks = PresentationAttackMetric("bpcer")
    only_attacks.update(logits_for(ACCEPTED[4:]), TARGET[4:])
    assert torch.isnan(only_attacks.compute())
    with pytest.raises(ValueError, match="unknown PAD metric"):
        PresentationAttackMetric("far")


def test_equal_error_threshold_hand_case():
    # Bona fide scores 0.9, 0.8, 0.3; attacks 0.1, 0.4, 0.2. At any t in (0.3, 0.4] one attack
    # (0.4) is accepted and one bona fide (0.3) rejected: APCER = BPCER = 1/3; the threshold sits
    # midway, 0.35.
    scores = torch.tensor([0.9, 0.8, 0.3, 0.1, 0.4, 0.2])
    bona_fide = torch.tensor([1, 1, 1, 0, 0, 0]).bool()
    assert float(equal_error_threshold(scores, bona_fide)) == pytest.approx(0.35)
    # Separable scores: the threshold lies in the gap, midway between 0.2 and 0.8.
    separable = torch.tensor([0.9, 0.8, 0.1, 0.2])
    assert float(equal_error_threshold(separable, bona_fide[[0, 1, 3, 4]])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="bona fide and attack"):
        equal_error_threshold(scores[:3], bona_fide[:3])


def test_self_calibrating_metric_scores_at_its_own_equal_error_threshold():
    scores = torch.tensor([0.9, 0.8, 0.3, 0.1, 0.4, 0.2])
    target = torch.tensor([1, 1, 1, 0, 0, 0])
    logits = torch.stack([torch.zeros(6), scores], dim=1)  # log-odds = score
    values = computed({"self_calibrate": True}, logits, target)
    assert values["apcer"] == pytest.approx(1 / 3)
    assert values["bpcer"] == pytest.approx(1 / 3)
    threshold = EqualErrorThreshold()
    threshold.update(logits[:4], target[:4])
    other = EqualErrorThreshold()
    other.update(logits[4:], target[4:])
    threshold.merge_state(other)  # concatenated states, as across DDP processes
    assert float(threshold.compute()) == pytest.approx(0.35)
    one_class = EqualErrorThreshold()
    one_class.update(logits[:3], target[:3])
    with pytest.raises(DataError, match="validation split"):
        one_class.compute()


def pad_spec(threshold: str = "argmax") -> DataSpec:
    return DataSpec(
        name="toy-pad",
        modalities=ModalitySet(("a", "b")),
        input_shapes={"a": (4,), "b": (3,)},
        task="pad",
        num_classes=2,
        extra={"bona_fide_class": 1, "threshold": threshold},
    )


def test_pad_task_headline_is_acer_lower_is_better_and_checkpoints_minimize(tmp_path: Path):
    task = build_task(pad_spec())
    assert isinstance(task, PresentationAttackTask)
    assert task.headline.name == "acer" and not task.headline.higher_is_better
    assert [m.name for m in task.metrics] == ["acer", "apcer", "bpcer", "hter", "accuracy"]
    assert task.make_calibration() is None  # argmax needs no calibration
    # The worst combination of an error rate is its largest value.
    modalities = ModalitySet(("a", "b"))
    summary = summarize([0.1, 0.3, 0.05], modalities.combinations(), modalities, False)
    assert summary["worst"] == 0.3
    # runs.train passes the headline's direction: the best checkpoint has the lowest ACER.
    config = parse_config({"data": {"name": "x"}, "model": {"method": "moddrop"}})
    trainer = build_trainer(config, tmp_path, 1, maximize=task.headline.higher_is_better)
    assert trainer.checkpoint_callback.mode == "min"
    with pytest.raises(ValueError, match="threshold"):
        PresentationAttackTask(threshold="median")


def toy_pad_data(samples: int = 96, seed: int = 0) -> ArrayMultiModalDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % 2
    a = labels[:, None] * 1.5 + torch.randn(samples, 4, generator=generator)
    b = labels[:, None] * 0.5 + torch.randn(samples, 3, generator=generator)
    return ArrayMultiModalDataset(ModalitySet(("a", "b")), {"a": a, "b": b}, labels, 2)


def test_calibration_on_validation_is_recorded_and_matches_the_eer_operating_point():
    spec = pad_spec("eer")
    task = build_task(spec)
    config = parse_config(
        {
            "data": {"name": "x"},
            "model": {
                "method": "moddrop",
                "encoder": {"name": "mlp", "options": {"hidden": [8]}},
                "feature_dim": 4,
                "embed_dim": 4,
            },
        }
    )
    torch.manual_seed(0)
    method = build_method(config.model, spec, task).eval()
    loader = DataLoader(toy_pad_data(), batch_size=32)
    thresholds = calibrate_combinations(method, loader).decision
    assert thresholds is not None and set(thresholds) == set(spec.modalities.combinations())
    report = build_report(method, loader, "toy-pad", "moddrop", "val", calibration_loader=loader)
    calibration = report.to_dict()["calibration"]
    assert calibration["split"] == "validation"
    assert set(calibration["decision_threshold"]) == {"a", "b", "a+b"}
    # Calibrated on the same samples, the fixed-threshold ACER equals the self-calibrating one
    # (the equal-error operating point that selects checkpoints in validation).
    self_calibrated = evaluate_combinations(method, loader)
    for fixed, own in zip(report.results, self_calibrated, strict=True):
        assert fixed.metrics["acer"] == pytest.approx(own.metrics["acer"])
        assert fixed.metrics["apcer"] == pytest.approx(own.metrics["apcer"])
    # An argmax task has no decision threshold, and says so by recording none.
    plain = build_method(config.model, pad_spec(), build_task(pad_spec())).eval()
    assert calibrate_combinations(plain, loader).decision is None
    report = build_report(plain, loader, "toy-pad", "moddrop", "val", calibration_loader=loader)
    assert "decision_threshold" not in report.to_dict()["calibration"]
