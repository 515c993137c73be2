"""Dense DMRNet (dmrnet-seg), its ModDrop baseline (moddrop-seg) and the segmentation task."""

from __future__ import annotations

import math

import pytest
import torch

from dmrnet.config import parse_config
from dmrnet.data.base import DataSpec
from dmrnet.errors import ConfigError
from dmrnet.evaluate import CombinationEvaluator
from dmrnet.methods import METHODS
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import SegmentationTask

CLASSES = 5


def make_spec(names=("rgb", "depth"), size=(32, 32), channels=None, task="segmentation"):
    channels = channels or {"rgb": 3, "depth": 1, "ir": 1}
    return DataSpec(
        name="tiny",
        modalities=ModalitySet(tuple(names)),
        input_shapes={n: (channels[n], *size) for n in names},
        task=task,
        num_classes=CLASSES,
        ignore_index=255,
        extra={"holes": {"depth": 0.0}},
    )


def make_method(method="dmrnet-seg", spec=None, **fields):
    spec = spec or make_spec()
    config = {
        "encoder": {"name": "resnet", "options": {"depth": 10, "width": 8}},
        "embed_dim": 16,
        "decoder_channels": [16, 12, 8],
        "decoder_blocks": 1,
        "context_bins": [1, 2],
    }
    if method == "dmrnet-seg":
        config["hcr"] = {"rule": "incomplete", "weight": 0.5, "warmup_epochs": 1}
    config.update(fields)
    cls = METHODS.get(method)
    return cls(cls.config_class(**config), spec, SegmentationTask.from_spec(spec))


def make_batch(spec, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        name: torch.rand(batch, *shape, generator=generator)
        for name, shape in spec.input_shapes.items()
    }
    target = torch.randint(0, CLASSES, (batch, *spec.input_shapes[spec.modalities.names[0]][1:]))
    present = torch.ones(batch, len(spec.modalities), dtype=torch.bool)
    return inputs, present, target


@pytest.mark.parametrize("names", [("rgb", "depth"), ("rgb", "depth", "ir")])
@pytest.mark.parametrize("method", ["dmrnet-seg", "moddrop-seg"])
def test_logits_have_the_input_size_for_any_number_of_modalities(names, method):
    spec = make_spec(names, size=(36, 44))  # not a multiple of 32: odd intermediate sizes
    model = make_method(method, spec).eval()
    inputs, present, _ = make_batch(spec)
    outputs = model.decode_many(
        model.encode(inputs, present), spec.modalities.masks(spec.modalities.combinations())
    )
    assert len(outputs) == 2 ** len(names) - 1
    for output in outputs:
        assert output.logits.shape == (4, CLASSES, 36, 44)
        assert (output.variance is not None) == (method == "dmrnet-seg")


@pytest.mark.parametrize("feedback", [True, False])
def test_absent_modalities_contribute_nothing(feedback):
    spec = make_spec()
    model = make_method(spec=spec, fusion_feedback=feedback).eval()
    inputs, _, _ = make_batch(spec)
    for kept, changed in ((0, "depth"), (1, "rgb")):
        mask = torch.zeros(4, 2, dtype=torch.bool)
        mask[:, kept] = True
        before = model(inputs, mask).logits
        other = dict(inputs, **{changed: torch.randn_like(inputs[changed]) * 5})
        after = model(other, mask).logits
        assert torch.allclose(before, after, atol=1e-5)
    both = torch.ones(4, 2, dtype=torch.bool)
    other = dict(inputs, depth=torch.randn_like(inputs["depth"]) * 5)
    assert not torch.allclose(model(inputs, both).logits, model(other, both).logits)


def test_every_combination_evaluation_matches_the_per_combination_forward():
    spec = make_spec()
    model = make_method(spec=spec).eval()
    inputs, present, target = make_batch(spec)
    present[0, 1] = False  # sample 0 has no depth: it only counts for rgb
    inputs["depth"][0] = 0.0
    batch = {"inputs": inputs, "present": present, "target": target}
    batched, naive = CombinationEvaluator(model), CombinationEvaluator(model)
    batched.update(model, batch)
    naive.update(model, batch, batched=False)
    for fast, slow in zip(batched.compute(), naive.compute(), strict=True):
        assert fast.samples == slow.samples
        assert fast.metrics["miou"] == pytest.approx(slow.metrics["miou"], abs=1e-6)
    assert [r.samples for r in batched.compute()] == [4, 3, 3]


@pytest.mark.parametrize("feedback", [True, False])
def test_each_dense_expert_decodes_its_own_modality_alone_once_for_all_combinations(feedback):
    spec = make_spec(size=(36, 44))
    model = make_method(spec=spec, fusion_feedback=feedback, experts={"weight": 1.0})
    model.train()
    inputs, present, _ = make_batch(spec)
    mask = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    experts = model.decode(model.encode(inputs, present), mask).extras["experts"]
    assert experts.shape == (4, 2, CLASSES, 36, 44)  # (B, M, K, H, W) at the input size
    model.eval()
    assert model.encode(inputs, present).own is None  # no product: no experts, no own pass
    model.experts.ensemble = True
    # (BatchNorm of the branches in evaluation) each expert changes with its own input only
    before = model.experts(model.encode(inputs, present).own, (36, 44))
    for index, name in enumerate(("rgb", "depth")):
        other = dict(inputs, **{name: torch.rand_like(inputs[name])})
        after = model.experts(model.encode(other, present).own, (36, 44))
        assert not torch.allclose(before[:, index], after[:, index])
        assert torch.equal(before[:, 1 - index], after[:, 1 - index])
    calls = []
    model.experts.register_forward_hook(lambda *_: calls.append(1))
    masks = spec.modalities.masks(spec.modalities.combinations())
    model.decode_many(model.encode(inputs, present), masks)
    assert len(calls) == 1  # not once per combination


def test_dense_embedding_samples_per_pixel_in_training_and_kl_has_gradient():
    spec = make_spec()
    model = make_method(spec=spec)
    inputs, present, _ = make_batch(spec)
    features = model.encode(inputs, present)
    output = model.decode(features, present)
    mu, logvar = output.extras["mu"], output.extras["logvar"]
    assert mu.dim() == 4 and mu.shape[1] == 16 and logvar.shape == mu.shape  # (B, E, h, w)
    assert output.variance.shape == (4,)
    again = model.decode(features, present)  # same input, a new per-pixel draw of z
    assert torch.equal(again.extras["mu"], mu) and not torch.allclose(again.logits, output.logits)
    kl = model.extra_losses(output)["kl"]
    kl.backward()
    assert model.head.mu_proj.weight.grad.abs().sum() > 0  # unlike the paper's code
    model.eval()
    first = model(inputs, present).logits
    assert torch.equal(first, model(inputs, present).logits)  # z = mu in evaluation


def test_multiscale_side_outputs_only_in_training_and_added_to_the_loss():
    spec = make_spec()
    model = make_method("moddrop-seg", spec)
    inputs, present, target = make_batch(spec)
    output = model(inputs, present)
    sides = sorted(k for k in output.extras if k.startswith("side/"))
    assert sides == ["side/0", "side/1", "side/2"]
    total = model.task_loss(output, target)
    main = model.task.per_sample_loss(output.logits, target)
    assert total.shape == (4,) and bool((total > main).all())
    model.eval()
    assert not any(k.startswith("side/") for k in model(inputs, present).extras)
    assert not any(
        k.startswith("side/") for k in make_method(multiscale=False)(inputs, present).extras
    )


def test_auxiliary_decoder_trains_on_hard_samples_once_the_hcr_is_active():
    spec = make_spec()
    model = make_method(spec=spec)
    inputs, present, target = make_batch(spec)
    mask = torch.tensor([[True, False], [False, True], [True, True], [True, True]])
    model.start_epoch(0)
    assert "auxiliary" not in model.decode(model.encode(inputs, present), mask).extras
    loss = model.loss(model.decode(model.encode(inputs, present), mask), target, mask)
    assert "hcr" not in loss.terms
    model.end_epoch(0)  # warm-up over: rule "incomplete" picks rgb and depth
    model.start_epoch(1)
    output = model.decode(model.encode(inputs, present), mask)
    assert "auxiliary" in output.extras and "auxiliary/side/0" in output.extras
    loss = model.loss(output, target, mask)
    aux = model.hcr_task_loss(output, target, loss.per_sample)
    expected = 0.5 * aux[:2].sum() / 4  # only the two incomplete samples, over the batch
    assert loss.terms["hcr"].item() == pytest.approx(expected.item(), rel=1e-5)
    loss.total.backward()
    assert model.auxiliary.classify.weight.grad.abs().sum() > 0
    model.eval()
    assert "auxiliary" not in model(inputs, mask).extras  # evaluation uses the main decoder


def test_holes_become_zero_after_standardization():
    spec = make_spec()
    model = make_method(spec=spec)
    model.standardize["depth"].enabled = True
    model.standardize["depth"].mean.fill_(2.0)
    depth = torch.full((1, 1, 4, 4), 3.0)
    depth[0, 0, 0, 0] = 0.0
    prepared = model.prepare("depth", depth)
    assert prepared[0, 0, 0, 0] == 0.0 and prepared[0, 0, 1, 1] == pytest.approx(1.0)


def test_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match="segmentation|label maps"):
        make_method(spec=make_spec(task="classification"))
    with pytest.raises(ConfigError, match="model.encoders"):
        make_method(encoders={"depth": {"name": "resnet", "options": {"depth": 10, "width": 16}}})
    with pytest.raises(ConfigError, match="model.primary"):
        make_method(primary="thermal")
    with pytest.raises(ConfigError, match="model.auxiliary_decoder"):
        make_method(hcr={"rule": "none"})


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"encoder": {"name": "mlp"}}, r"model\.encoder\.name: .*'resnet'"),
        ({"encoder": {"options": {"depth": 11}}}, r"model\.encoder\.options\.depth"),
        ({"encoder": {"options": {"hidden": [8]}}}, r"model\.encoder\.options\.hidden: unknown"),
        ({"feature_dim": 8}, r"model\.feature_dim: unknown key"),
    ],
)
def test_the_schema_holds_only_resnet_branches(fields, key):
    raw = {"data": {"name": "maps"}, "model": {"method": "dmrnet-seg", **fields}}
    with pytest.raises(ConfigError, match=key):
        parse_config(raw)


def test_segmentation_loss_is_the_mean_over_valid_pixels_with_ignore_and_weights():
    task = SegmentationTask(3, ignore_index=255)
    logits = torch.randn(2, 3, 2, 2)
    target = torch.tensor([[[0, 1], [2, 255]], [[255, 255], [255, 1]]])
    loss = task.per_sample_loss(logits, target)
    log_p = logits.log_softmax(1)
    first = -(log_p[0, 0, 0, 0] + log_p[0, 1, 0, 1] + log_p[0, 2, 1, 0]) / 3
    second = -log_p[1, 1, 1, 1]
    assert torch.allclose(loss, torch.stack([first, second]), atol=1e-6)
    weighted = SegmentationTask(3, ignore_index=255, class_weights=[1.0, 2.0, 0.5])
    expected = -(log_p[0, 0, 0, 0] + 2 * log_p[0, 1, 0, 1] + 0.5 * log_p[0, 2, 1, 0]) / 3.5
    assert weighted.per_sample_loss(logits, target)[0].item() == pytest.approx(expected.item())


def test_miou_pixel_accuracy_and_per_class_iou_against_a_hand_computed_case():
    task = SegmentationTask(4, ignore_index=255)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])
    prediction = torch.tensor([[[0, 1, 1, 1], [0, 0, 0, 3]]])
    logits = torch.nn.functional.one_hot(prediction, 4).permute(0, 3, 1, 2).float()
    assert torch.equal(task.metric_input(logits), prediction)  # what the evaluator feeds them
    for scores in (logits, task.metric_input(logits)):
        metrics = task.make_metrics()
        for metric in metrics.values():
            metric.update(scores, target)
        # class 0: tp 3, fp 1, fn 1 -> 3/5; class 1: tp 2, fp 1, fn 1 -> 2/4; classes 2, 3 absent
        assert metrics["miou"].compute().item() == pytest.approx((3 / 5 + 2 / 4) / 2)
        assert metrics["pixel_accuracy"].compute().item() == pytest.approx(5 / 7)
        iou = metrics["iou"].compute().tolist()
        assert iou[:2] == pytest.approx([3 / 5, 2 / 4]) and all(math.isnan(v) for v in iou[2:])
    assert task.predict(logits).shape == (1, 2, 4)
    ties = torch.zeros(1, 4, 2, 2)  # every class ties: the first, as argmax
    assert torch.equal(task.predict(ties), ties.argmax(1))
