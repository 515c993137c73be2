import json

import pytest
import torch
from synthetic import (
    accuracy_per_combination,
    batch_of,
    build,
    train_briefly,
)

from dmrnet.config import parse_config
from dmrnet.engine import LitMethod
from dmrnet.methods import METHODS
from dmrnet.methods.mmanet import MMANet, margin_aware_distillation, similarity
from dmrnet.runs import load_checkpoint, train


def test_mmanet_is_registered_with_a_teacher_stage_then_a_student_stage(make_config):
    assert METHODS.get("mmanet") is MMANet
    model, _ = build(make_config, "mmanet", teacher_epochs=3)
    stages = model.training_stages(7)
    assert [(s.name, s.epochs, s.monitor) for s in stages] == [
        ("teacher", 3, "val/full"),
        ("student", 7, "val/mean"),
    ]


def test_each_stage_trains_only_its_network(make_config):
    model, _ = build(make_config, "mmanet")
    teacher = set(model.teacher.parameters())
    model.begin_stage("teacher")
    assert all(p.requires_grad == (p in teacher) for p in model.parameters())
    present = torch.tensor([[True, False, True]])
    assert torch.equal(model.training_mask(present), present)  # the teacher sees everything
    model.begin_stage("student")
    assert all(p.requires_grad == (p not in teacher) for p in model.parameters())
    model.train()
    assert not model.teacher.training  # frozen, BatchNorm statistics included


def test_loss_is_finite_and_distills_after_the_warm_up(make_config):
    model, data = build(make_config, "mmanet", warmup_epochs=1)
    model.begin_stage("student")
    model.weak[1] = True
    model.start_epoch(1)
    batch = batch_of(data.train, 32)
    mask = model.training_mask(batch["present"])
    output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
    assert set(model.loss(output, batch["target"], mask).terms) == {"task", "mad", "mar"}


def test_a_short_training_run_learns(make_config):
    model, data = build(make_config, "mmanet", warmup_epochs=3)
    train_briefly(model, data, epochs=8, stage="teacher")
    train_briefly(model, data, epochs=12)  # the student stage, distilled from that teacher
    accuracy = accuracy_per_combination(model, data)
    assert accuracy["a"] > 0.8 and accuracy["a+b+c"] > 0.8 and accuracy["b"] > 0.4, accuracy
    assert model.weak.any()  # MAR mined a weak combination at the end of the warm-up


def test_margin_aware_distillation_is_zero_for_equal_similarities_and_weights_by_entropy():
    torch.manual_seed(0)
    features = torch.randn(6, 5)
    logits = torch.randn(6, 3)
    assert margin_aware_distillation(features, features * 2, logits).item() == pytest.approx(0)
    student = torch.randn(6, 5)
    confident = torch.zeros(6, 3)
    confident[:, 0] = 50.0
    confident[2, 0] = 0.0  # only sample 2 is uncertain: only its similarity row counts
    row = (similarity(student) - similarity(features))[2].square().sum()
    assert margin_aware_distillation(student, features, confident).item() == pytest.approx(
        row.item(), rel=1e-4
    )


def test_the_weak_combination_is_the_one_whose_predictions_drift_most_from_the_full_set(
    make_config,
):
    model, _ = build(make_config, "mmanet")
    names = [model.modalities.format(c) for c in model.modalities.combinations()]
    counts = torch.full((len(names), 4), 10.0)
    counts[names.index("a+c"), 0] = 200.0  # a+c predicts class 0 far too often
    model.label_counts.copy_(counts)
    model.select_weak_modalities()
    assert model.weak.tolist() == [True, False, True]


def test_train_runs_both_stages_and_resumes_the_interrupted_one(make_config, tmp_path, monkeypatch):
    config = parse_config(make_config("mmanet", teacher_epochs=2, warmup_epochs=1))
    run_dir = tmp_path / "run"
    original = LitMethod.training_step

    class Interrupt(Exception):
        pass

    def dies_in_the_student_stage(self, batch, batch_idx):
        if not self.method.in_teacher_stage and self.current_epoch == 1:
            raise Interrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LitMethod, "training_step", dies_in_the_student_stage)
    with pytest.raises(Interrupt):
        train(config, run_dir)
    teacher_dir = run_dir / "stages" / "teacher"
    assert (teacher_dir / "STAGE_DONE").is_file()
    assert (teacher_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "results.json").exists()
    teacher_weights = torch.load(teacher_dir / "checkpoints" / "best.ckpt", weights_only=True)
    monkeypatch.setattr(LitMethod, "training_step", original)
    report = train(config, run_dir, resume=True)
    assert report is not None and json.loads((run_dir / "results.json").read_text())["summary"]
    loaded = load_checkpoint(run_dir)
    assert not loaded.method.in_teacher_stage  # the deployed model is the student
    # The frozen teacher in the final checkpoint is the teacher stage's best one.
    key = "method.teacher.head.readout.weight"
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(final["state_dict"][key], teacher_weights["state_dict"][key])
