"""Unimodal experts and their product with the fused prediction (`model.experts`), and the mixing
weights fitted on validation (`eval.ensemble_fit`, dmrnet.ensemble). The conformance suite checks
the experts variant of every method family (decode_many exact, checkpoint round trip, loss)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import dmrnet
from dmrnet.config import parse_config
from dmrnet.ensemble import GRID, _groups, choose
from dmrnet.errors import ConfigError
from dmrnet.modalities import ModalitySet
from dmrnet.nn.heads import (
    DistillConfig,
    ExpertsConfig,
    UnimodalExperts,
    distillation_loss,
    present_mean,
)
from dmrnet.runs import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_present_mean_averages_only_the_present_modalities():
    values = torch.tensor([[[1.0], [3.0], [8.0]], [[2.0], [4.0], [6.0]]])  # (B=2, M=3, K=1)
    mask = torch.tensor([[True, True, False], [False, False, True]])
    assert present_mean(values, mask).tolist() == [[2.0], [6.0]]
    assert present_mean(values, torch.zeros_like(mask)).tolist() == [[0.0], [0.0]]


def test_the_product_of_experts_is_the_formula_with_each_combinations_weight():
    torch.manual_seed(0)
    experts = UnimodalExperts(
        ExpertsConfig(weight=1.0, ensemble=True), [torch.nn.Identity() for _ in range(3)]
    )
    experts.set_mix({(0, 1): 0.5, (2,): 2.0})
    fused, logits = torch.randn(2, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [False, False, True]])
    product = experts.combine(fused, logits, mask)
    log_p, log_e = F.log_softmax(fused, 1), F.log_softmax(logits, 2)
    expected = torch.stack(
        [log_p[0] + 0.5 * (log_e[0, 0] + log_e[0, 1]) / 2, log_p[1] + 2.0 * log_e[1, 2]]
    )
    assert torch.allclose(product, expected)
    # C combinations at once: per-sample masks (C, B, M), or masks (C, M) every sample shares.
    masks = torch.tensor([[True, True, False], [False, False, True]])
    many = torch.stack([fused, fused + 1.0])  # (C=2, B=2, K)
    per_sample = experts.combine(many, logits, masks[:, None].expand(-1, 2, -1))
    assert torch.allclose(experts.combine(many, logits, masks), per_sample)
    assert torch.allclose(per_sample[0, 0], expected[0]) and torch.allclose(
        per_sample[1, 1], expected[1]
    )


def test_the_experts_loss_counts_each_sample_and_modality_of_its_combination():
    experts = UnimodalExperts(ExpertsConfig(weight=0.5), [torch.nn.Identity()] * 2)
    logits = torch.tensor([[[4.0, 0.0], [0.0, 4.0]], [[0.0, 4.0], [4.0, 0.0]]])  # (2, 2, 2)
    target = torch.tensor([0, 1])
    mask = torch.tensor([[True, False], [True, True]])

    def per_sample(x, y):
        return F.cross_entropy(x, y, reduction="none")

    terms = [per_sample(logits[0:1, 0], target[0:1]), per_sample(logits[1:2, 0], target[1:2])]
    terms.append(per_sample(logits[1:2, 1], target[1:2]))
    expected = 0.5 * torch.cat(terms).mean()
    assert torch.allclose(experts.loss(logits, mask, target, per_sample), expected)


def test_choose_takes_each_groups_best_mean_and_breaks_ties_toward_the_configured_mix():
    combinations = ModalitySet(("a", "b", "c")).combinations()
    scores = torch.zeros(len(GRID), len(combinations), dtype=torch.float64)
    scores[GRID.index(0.0), 0] = 1.0  # "a" alone is best without experts
    scores[GRID.index(2.0), 3:6] = 1.0  # every pair is best at w = 2
    scores[:, 6] = 0.5  # the full set: a tie everywhere
    groups = _groups(combinations, "combination")
    chosen = choose(scores, groups, default=1.0, higher_is_better=True)
    assert chosen[0] == 0.0 and chosen[3:6] == [2.0] * 3 and chosen[6] == 1.0
    assert choose(scores, _groups(combinations, "size"), 1.0, True) == [0.0, 2.0, 1.0]
    # A lower-is-better metric (ACER) picks the minimum; no validation sample keeps the default.
    assert choose(-scores, groups, 1.0, higher_is_better=False)[3] == 2.0
    assert choose(torch.full_like(scores, math.nan), groups, 0.75, True)[0] == 0.75
    assert len(_groups(combinations, "global")) == 1


def test_the_ensemble_needs_trained_experts_and_only_head_families_have_them(make_config):
    raw = make_config()
    raw["model"]["experts"] = {"ensemble": True}
    with pytest.raises(ConfigError, match="needs trained experts"):
        parse_config(raw)
    raw = make_config("hemis")
    raw["model"]["experts"] = {"weight": 1.0}
    with pytest.raises(ConfigError, match="experts"):
        parse_config(raw)


@pytest.fixture(scope="module")
def plus_run(tmp_path_factory, tiny_files):
    """A tiny dmrnet-plus-like run: tuned head, experts, product with one w per size fitted."""
    write_synthetic_views, tiny_config = tiny_files
    root = tmp_path_factory.mktemp("plus")
    raw = tiny_config(
        write_synthetic_views(root / "views.npz"),
        kl_weight=0.01,
        mu_norm=False,
        logvar_norm=False,
        logvar_init_bias=-4.0,
        # A mix off the grid: the checkpoint holds it unless the fitted weights are stored.
        experts={"weight": 0.5, "ensemble": True, "mix": 0.6},
    )
    raw["eval"]["ensemble_fit"] = "size"
    report = dmrnet.train(raw, root / "run")
    return root / "run", report


def test_fitted_weights_are_stored_in_the_checkpoint_and_reported(plus_run, tmp_path):
    run, report = plus_run
    ensemble = json.loads((run / "results.json").read_text())["ensemble"]
    assert ensemble["fit"] == "size" and ensemble["grid"] == list(GRID)
    assert set(ensemble["weights"]) == {r.name for r in report.results}
    assert all(w in GRID for w in ensemble["weights"].values())
    by_size = {}
    for name, weight in ensemble["weights"].items():
        by_size.setdefault(name.count("+"), set()).add(weight)
    assert all(len(v) == 1 for v in by_size.values())  # one weight per size
    # The weights travel in the checkpoint: a fresh load predicts with them, so evaluating the
    # test split again gives the run's own results.
    loaded = load_checkpoint(run)
    modalities = loaded.spec.modalities
    for combination in modalities.combinations():
        bits = sum(1 << i for i in combination)
        expected = ensemble["weights"][modalities.format(combination)]
        assert loaded.method.experts.mix[bits].item() == expected
    again = dmrnet.evaluate(run, out_dir=tmp_path / "again")
    assert [r.metrics for r in again.results] == [r.metrics for r in report.results]


def test_a_product_of_experts_exports_to_onnx_and_agrees_with_predict(plus_run, tmp_path):
    from dmrnet.export import export

    result = export(plus_run[0], "onnx", tmp_path / "model.onnx")
    # `export` compares the exported graph with predict on every combination.
    assert result.combinations == 7 and result.max_difference <= 1e-4


@pytest.mark.parametrize("train_on", ["present", "combination"])
def test_experts_train_on_every_present_modality_or_only_the_drawn_combination(train_on):
    from dmrnet.data.base import DataSpec
    from dmrnet.methods import build_method
    from dmrnet.methods.dmrnet import DMRNetConfig
    from dmrnet.tasks import build_task

    spec = DataSpec("tiny", ModalitySet(("a", "b")), {"a": (4,), "b": (3,)}, "classification", 3)
    config = DMRNetConfig(
        feature_dim=4,
        embed_dim=4,
        experts={"weight": 1.0, "train_on": train_on},
        encoder={"name": "mlp", "options": {"hidden": [8], "dropout": 0.0}},
    )
    torch.manual_seed(0)
    method = build_method(config, spec, build_task(spec))
    method.train()
    inputs = {"a": torch.randn(6, 4), "b": torch.randn(6, 3)}
    present = torch.ones(6, 2, dtype=torch.bool)
    mask = torch.tensor([[True, False]] * 6)  # the sampler dropped b everywhere
    target = torch.arange(6) % 3
    output = method.decode(method.encode(inputs, present), mask)
    loss = method.loss(output, target, mask, present=present)
    experts = output.extras["experts"]  # (B, M, K)
    per_modality = [F.cross_entropy(experts[:, m], target) for m in range(2)]
    expected = sum(per_modality) / 2 if train_on == "present" else per_modality[0]
    assert loss.terms["unimodal"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_is_t_squared_kl_on_the_taught_rows_only():
    student = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [9.0, -9.0, 0.0]])
    rows = torch.tensor([True, False])
    t = 2.0
    p, q = F.softmax(teacher[0] / t, 0), F.softmax(student[0] / t, 0)
    expected = t**2 * (p * (p.log() - q.log())).sum()
    assert distillation_loss(student, teacher, rows, t).item() == pytest.approx(expected.item())
    assert distillation_loss(student, teacher, torch.zeros(2, dtype=torch.bool), t).item() == 0
    maps = student[:, :, None, None].expand(-1, -1, 2, 3)  # per pixel, averaged over pixels
    teacher_maps = teacher[:, :, None, None].expand(-1, -1, 2, 3)
    assert distillation_loss(maps, teacher_maps, rows, t).item() == pytest.approx(expected.item())


def test_the_teacher_is_the_full_prediction_in_evaluation_mode_without_gradient():
    from dmrnet.data.base import DataSpec
    from dmrnet.methods import build_method
    from dmrnet.methods.dmrnet import DMRNetConfig
    from dmrnet.tasks import build_task

    spec = DataSpec("tiny", ModalitySet(("a", "b")), {"a": (4,), "b": (3,)}, "classification", 3)
    config = DMRNetConfig(
        feature_dim=4,
        embed_dim=4,
        distill={"weight": 0.5, "temperature": 3.0},
        encoder={"name": "mlp", "options": {"hidden": [8], "dropout": 0.5}},
    )
    torch.manual_seed(0)
    method = build_method(config, spec, build_task(spec))
    method.train()
    method.standardize.eval()  # a module kept in evaluation mode during training stays so
    inputs = {"a": torch.randn(6, 4), "b": torch.randn(6, 3)}
    present = torch.ones(6, 2, dtype=torch.bool)
    present[5, 1] = False  # sample 5 has no b: its drawn mask is all it has
    mask = torch.tensor([[True, False]] * 3 + [[True, True]] * 2 + [[True, False]])
    target = torch.arange(6) % 3
    features = method.encode(inputs, present)
    output = method.decode(features, mask)
    method.add_teacher(output, features, mask, present)
    assert method.training and not method.standardize.training
    teacher, rows = output.extras["teacher"], output.extras["teacher_rows"]
    assert rows.tolist() == [True, True, True, False, False, False]
    assert not teacher.requires_grad
    method.eval()
    assert torch.allclose(teacher, method.decode(features, present).logits)  # the mean, no noise
    method.train()
    loss = method.loss(output, target, mask, present=present)
    expected = 0.5 * distillation_loss(output.logits, teacher, rows, 3.0)
    assert loss.terms["distill"].item() == pytest.approx(expected.item())
    off = build_method(
        config.model_copy(update={"distill": DistillConfig()}), spec, build_task(spec)
    )
    off.train()
    output = off.decode(off.encode(inputs, present), mask)
    off.add_teacher(output, features, mask, present)
    assert "teacher" not in output.extras
