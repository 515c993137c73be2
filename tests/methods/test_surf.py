"""The face-anti-spoofing network `surf-resnet18se` (surf-dmrnet, surf-moddrop)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dmrnet.config import parse_config
from dmrnet.data.base import DataSpec
from dmrnet.errors import ConfigError
from dmrnet.evaluate import CombinationEvaluator
from dmrnet.methods import METHODS, build_method
from dmrnet.methods.surf import SurfDMRNet, SurfModDrop
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import build_task

FACES = ("rgb", "depth", "ir")
TINY = {"depth": 10, "width": 8, "embed_dim": 16}


def face_spec(names=FACES, size: int = 32, channels: int = 3) -> DataSpec:
    return DataSpec(
        name="faces",
        modalities=ModalitySet(tuple(names)),
        input_shapes={n: (channels, size, size) for n in names},
        task="pad",
        num_classes=2,
        extra={"bona_fide_class": 1},
    )


def build(method: str = "surf-dmrnet", spec: DataSpec | None = None, **model: Any):
    spec = spec or face_spec()
    fields = {"method": method, **TINY, "hcr": {"rule": "none"}, **model}
    config = parse_config({"data": {"name": "faces"}, "model": fields})
    torch.manual_seed(0)
    return build_method(config.model, spec, build_task(spec))


def batch(spec: DataSpec, size: int = 4, present: torch.Tensor | None = None) -> dict:
    generator = torch.Generator().manual_seed(1)
    shapes = spec.input_shapes
    return {
        "inputs": {n: torch.randn(size, *shapes[n], generator=generator) for n in shapes},
        "present": torch.ones(size, len(shapes), dtype=torch.bool) if present is None else present,
        "target": torch.arange(size) % 2,
    }


def test_both_variants_are_registered():
    assert METHODS.get("surf-dmrnet") is SurfDMRNet
    assert METHODS.get("surf-moddrop") is SurfModDrop


def test_paper_sizes_branch_maps_are_128x14x14_and_trunk_512x4x4_at_112():
    spec = face_spec(size=112)
    method = build(spec=spec, depth=18, width=64, embed_dim=512).eval()
    x = batch(spec, size=1)
    with torch.no_grad():
        features = method.encode(x["inputs"], x["present"])
        assert features.shape == (1, 3, 128, 14, 14)
        assert method.trunk(features, x["present"]).shape == (1, 512, 4, 4)
        # The paper's layer3_new takes the three concatenated maps.
        assert method.layer3[0].body[0].in_channels == 3 * 128


@pytest.mark.parametrize("names", [("rgb", "ir"), ("a", "b", "c", "d")])
def test_any_number_of_modalities(names):
    spec = face_spec(names)
    method = build(spec=spec).eval()
    x = batch(spec)
    with torch.no_grad():
        features = method.encode(x["inputs"], x["present"])
        assert features.shape[:2] == (4, len(names))
        outputs = method.decode_many(
            features, spec.modalities.masks(spec.modalities.combinations())
        )
    assert len(outputs) == 2 ** len(names) - 1
    assert all(o.logits.shape == (4, 2) and o.variance.shape == (4,) for o in outputs)


def test_absent_modality_has_no_influence_on_the_output():
    method = build().eval()
    spec = face_spec()
    x = batch(spec)
    mask = torch.tensor([[True, False, True]]).expand(4, -1)
    with torch.no_grad():
        before = method.decode(method.encode(x["inputs"], x["present"]), mask).logits
        x["inputs"]["depth"] = torch.randn_like(x["inputs"]["depth"]) * 100
        after = method.decode(method.encode(x["inputs"], x["present"]), mask).logits
    assert torch.allclose(before, after)


def test_real_missingness_runs_each_branch_on_its_samples_only():
    method = build().train()
    spec = face_spec()
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 1], [1, 1, 0]]).bool()
    x = batch(spec, present=present)
    seen: dict[str, int] = {}
    for name, branch in method.branches.items():
        branch.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, len(i[0])))
    features = method.encode(x["inputs"], present)
    assert seen == {"rgb": 4, "depth": 2, "ir": 3}
    assert features.shape[0] == 4 and torch.all(features[1, 1] == 0)


def test_evaluating_all_combinations_runs_the_branches_once_per_batch():
    spec = face_spec()
    method = build().eval()
    calls = {"branch": 0, "trunk": 0}
    method.branches["rgb"].register_forward_hook(
        lambda *a: calls.__setitem__("branch", 1 + calls["branch"])
    )
    method.layer4.register_forward_hook(lambda *a: calls.__setitem__("trunk", 1 + calls["trunk"]))
    evaluator = CombinationEvaluator(method)
    evaluator.update(method, batch(spec))
    assert calls == {"branch": 1, "trunk": 7}
    results = evaluator.compute()
    assert [r.name for r in results][-1] == "rgb+depth+ir"
    assert all(0.0 <= r.metrics["acer"] <= 1.0 for r in results)


def test_kl_is_summed_over_the_whole_map_as_the_paper_code():
    method = build(kl_weight=1.0).train()
    spec = face_spec()
    x = batch(spec)
    output = method.decode(method.encode(x["inputs"], x["present"]), x["present"])
    mu, logvar = output.extras["mu"], output.extras["logvar"]
    per_element = 0.5 * (logvar.exp() + mu.pow(2) - logvar - 1)
    expected = per_element.flatten(1).sum(1).mean()
    assert torch.allclose(method.extra_losses(output)["kl"], expected)
    mean_pixels = build(kl_weight=1.0, kl_reduction="mean-pixels")
    assert torch.allclose(mean_pixels.extra_losses(output)["kl"], per_element.sum(1).mean())
    # The variance that ranks combinations is the mean std^2 over channels and locations.
    assert torch.allclose(output.variance, logvar.exp().flatten(1).mean(1))


def test_training_step_with_fixed_hcr_backpropagates_to_every_branch():
    method = build(hcr={"rule": "fixed", "combinations": ["rgb", "rgb+ir", "ir"], "weight": 0.7})
    method.train()
    assert method.hcr.hard_names() == []  # selected at the end of the warm-up
    method.hcr.hard.copy_(method.hcr.select(*method.hcr.statistics()))
    assert method.hcr.hard_names() == ["rgb", "ir", "rgb+ir"]
    method.hcr.epoch.fill_(10)  # after the warm-up
    spec = face_spec()
    x = batch(spec, size=6)
    mask = torch.tensor([[1, 0, 0]] * 3 + [[1, 1, 1]] * 3).bool()  # 3 hard (rgb), 3 full
    output = method.decode(method.encode(x["inputs"], x["present"]), mask)
    loss = method.loss(output, x["target"], mask)
    assert set(loss.terms) == {"task", "kl", "hcr"}
    loss.total.backward()
    for name in FACES:
        first_conv = method.branches[name][0][0]
        assert first_conv.weight.grad is not None


def test_moddrop_variant_is_deterministic_and_can_drop_the_projection():
    spec = face_spec()
    x = batch(spec)
    method = build("surf-moddrop").eval()
    with torch.no_grad():
        output = method(x["inputs"], x["present"])
    assert output.variance is None and output.logits.shape == (4, 2)
    assert method.extra_losses(output) == {}
    paper_baseline = build("surf-moddrop", projection=False)
    assert isinstance(paper_baseline.head.proj, torch.nn.Identity)
    assert paper_baseline.head.readout.in_features == 64  # layer4 channels at width 8
    assert not SurfModDrop.provides_variance


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"encoder": {"name": "resnet"}}, "model.encoder"),
        ({"encoders": {"rgb": {"name": "mlp"}}}, "model.encoders"),
        ({"feature_dim": 32}, "model.feature_dim"),
    ],
)
def test_vector_encoder_fields_are_not_in_the_schema(fields, key):
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        build(**fields)


def test_vector_inputs_and_images_of_different_sizes_are_rejected():
    spec = DataSpec("v", ModalitySet(("a",)), {"a": (8,)}, "pad", 2)
    with pytest.raises(ConfigError, match="images"):
        build(spec=spec)
    shapes = {"rgb": (3, 32, 32), "depth": (1, 16, 16)}
    spec = DataSpec("v", ModalitySet(("rgb", "depth")), shapes, "pad", 2)
    with pytest.raises(ConfigError, match="one height and width"):
        build(spec=spec)
    shapes["depth"] = (1, 32, 32)  # channels may differ
    build(spec=DataSpec("v", ModalitySet(("rgb", "depth")), shapes, "pad", 2))
