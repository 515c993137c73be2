"""Conformance over the registries: every method and every dataset, tested without writing a test.

Methods: every registered method x every task it declares is built for a tiny spec of that task
(the method's own defaults, with the size fields of its schema made tiny) and must give a finite
loss whose terms add up, lower the loss on a fixed batch in a few steps, decode every combination
in one pass exactly as one at a time, round-trip a checkpoint, and handle real missingness.

Datasets: every registered dataset builds from a small fixture (or from the data mirror at
$DMRNET_DATA; otherwise the test skips and says what is missing) and yields items that match its
DataSpec.
"""

from __future__ import annotations

import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dmrnet.config import EncoderConfig
from dmrnet.data import DATASETS, DataSpec, build_data
from dmrnet.methods import METHODS, Method, MethodOutput, build_method
from dmrnet.methods.stages import StagedMethod
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import build_task

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the dataset tests' fixture writers
from av_fixtures import TINY_AUDIO, TINY_VISUAL, cremad_tree, kinetics_sounds_tree
from test_casia_surf import TINY as FACE_SIZES
from test_casia_surf import write_cefa_tree, write_surf_tree
from test_nyuv2 import mat_options, write_mat_fixture

# Tiny tensors: one thread is faster than several (and much faster on a busy machine).
pytestmark = pytest.mark.usefixtures("one_thread")
BATCH, SIZE = 8, 8

# -- methods ------------------------------------------------------------------------------------
# Tiny specs, one per task: image-shaped inputs of one height and width (the SURF network
# concatenates maps; vector encoders flatten them), channels differing across modalities.
SHAPES = {"a": (3, SIZE, SIZE), "b": (1, SIZE, SIZE), "c": (2, SIZE, SIZE)}
SPECS = {
    "classification": DataSpec("tiny", ModalitySet(("a", "b", "c")), SHAPES, "classification", 4),
    "pad": DataSpec(
        "tiny-pad", ModalitySet(("a", "b", "c")), SHAPES, "pad", 2, extra={"bona_fide_class": 1}
    ),
    "segmentation": DataSpec(
        "tiny-maps",
        ModalitySet(("a", "b")),
        {"a": SHAPES["a"], "b": SHAPES["b"]},
        "segmentation",
        3,
        ignore_index=255,
    ),
}
# Size fields, applied where a method's schema has them; every other field keeps its default.
TINY_FIELDS: dict[str, Any] = {
    "feature_dim": 8,
    "embed_dim": 8,
    "adapter_dim": 8,
    "depth": 10,
    "width": 4,
    "decoder_channels": [8, 8, 8],
    "decoder_blocks": 1,
    "context_bins": [1],
}
TINY_VECTOR_ENCODER = {"name": "mlp", "options": {"hidden": [16], "dropout": 0.0}}
TINY_RESNET_BRANCH = {"options": {"depth": 10, "width": 4}}


# Variants of a method checked beside its defaults, where its schema has the section they set:
# the unimodal experts trained and predicting as a product of experts (dmrnet-plus's ingredient).
VARIANTS: dict[str, dict[str, Any]] = {
    "experts": {"experts": {"weight": 0.5, "ensemble": True, "mix": 0.7}},
}


def variants(method: str) -> list[str | None]:
    schema = METHODS.get(method).config_class.model_fields
    return [None, *(name for name, fields in VARIANTS.items() if set(fields) <= set(schema))]


def tiny_model_fields(method: str, variant: str | None = None) -> dict[str, Any]:
    schema = METHODS.get(method).config_class
    fields: dict[str, Any] = {"method": method, **VARIANTS.get(variant or "", {})}
    for name, info in schema.model_fields.items():
        if name in TINY_FIELDS:
            fields[name] = TINY_FIELDS[name]
        elif name == "encoder":
            vector = typing.get_origin(info.annotation) is None and issubclass(
                info.annotation, EncoderConfig
            )
            fields[name] = TINY_VECTOR_ENCODER if vector else TINY_RESNET_BRANCH
    return fields


def build(
    method: str, task: str, stage: str | None = None, variant: str | None = None, seed: int = 0
) -> Method:
    spec = SPECS[task]
    config = METHODS.get(method).config_class(**tiny_model_fields(method, variant))
    torch.manual_seed(seed)
    model = build_method(config, spec, build_task(spec))
    if stage is not None:
        model.begin_stage(stage)
    return model


def stages(method: str, task: str) -> list[str | None]:
    """A staged method is checked in each of its stages (each trains and decodes differently)."""
    model = build(method, task)
    if not isinstance(model, StagedMethod):
        return [None]
    return [stage.name for stage in model.training_stages(1)]


CASES = [
    (method, task, stage, variant)
    for method in METHODS
    for task in METHODS.get(method).tasks
    for stage in stages(method, task)
    for variant in variants(method)
]
IDS = ["-".join(part for part in case if part) for case in CASES]


def make_batch(task: str, present: torch.Tensor | None = None) -> dict[str, Any]:
    spec = SPECS[task]
    generator = torch.Generator().manual_seed(1)
    inputs = {
        name: torch.randn(BATCH, *shape, generator=generator)
        for name, shape in spec.input_shapes.items()
    }
    if task == "segmentation":
        target = torch.randint(0, spec.num_classes, (BATCH, SIZE, SIZE), generator=generator)
        target[:, 0, 0] = spec.ignore_index  # unlabelled pixels
    else:
        target = torch.arange(BATCH) % spec.num_classes
    if present is None:
        present = torch.ones(BATCH, len(spec.modalities), dtype=torch.bool)
    for index, name in enumerate(spec.modalities.names):  # absent inputs are placeholder zeros
        inputs[name][~present[:, index]] = 0.0
    return {"inputs": inputs, "present": present, "target": target}


def training_loss(model: Method, batch: dict[str, Any], mask: torch.Tensor, seed: int = 2):
    torch.manual_seed(seed)  # the same noise for the Gaussian heads' sampling
    features = model.encode(batch["inputs"], batch["present"])
    return model.loss(model.decode(features, mask), batch["target"], mask, batch["present"])


def train_steps(model: Method, batch: dict[str, Any], steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        mask = model.training_mask(batch["present"])
        optimizer.zero_grad()
        training_loss(model, batch, mask, seed=step).total.backward()
        optimizer.step()


def decode_all(model: Method, batch: dict[str, Any]) -> list[MethodOutput]:
    masks = model.modalities.masks(model.modalities.combinations())
    with torch.no_grad():
        return model.decode_many(model.encode(batch["inputs"], batch["present"]), masks)


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, str, str | None, str | None]:
    return request.param


def logits_shape(task: str) -> tuple[int, ...]:
    spec = SPECS[task]
    return (
        (BATCH, spec.num_classes, SIZE, SIZE)
        if task == "segmentation"
        else (BATCH, spec.num_classes)
    )


def test_builds_and_gives_a_finite_loss_whose_terms_add_up_and_reach_the_parameters(case):
    model = build(*case)
    model.train()
    batch = make_batch(case[1])
    mask = model.training_mask(batch["present"])
    features = model.encode(batch["inputs"], batch["present"])
    assert model.batch_size(features) == BATCH
    assert model.decode(features, mask).logits.shape == logits_shape(case[1])
    loss = training_loss(model, batch, mask)
    assert torch.isfinite(loss.total)
    assert loss.per_sample.shape == (BATCH,)
    assert loss.total.item() == pytest.approx(
        sum(t.item() for t in loss.terms.values()), rel=1e-5, abs=1e-6
    )
    loss.total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(case):
    model = build(*case)
    batch = make_batch(case[1])
    full = batch["present"]
    model.train()
    before = training_loss(model, batch, full).total.item()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        training_loss(model, batch, full).total.backward()
        optimizer.step()
    after = training_loss(model, batch, full).total.item()
    assert after < before, (before, after)


def test_decode_many_equals_decode_for_every_combination(case):
    model = build(*case)
    batch = make_batch(case[1])
    train_steps(model, batch)  # BatchNorm statistics away from their initial values
    model.double().eval()
    batch["inputs"] = {k: v.double() for k, v in batch["inputs"].items()}
    masks = model.modalities.masks(model.modalities.combinations())
    with torch.no_grad():
        features = model.encode(batch["inputs"], batch["present"])
        many = model.decode_many(features, masks)
        assert len(many) == len(masks)
        for mask, output in zip(masks, many, strict=True):
            assert output.logits.shape == logits_shape(case[1])
            single = model.decode(features, mask.expand(BATCH, -1))
            name = mask.tolist()
            assert torch.allclose(output.logits, single.logits, rtol=1e-9, atol=1e-9), name
            assert (output.variance is None) == (not model.provides_variance)
            if model.provides_variance:
                assert torch.allclose(output.variance, single.variance, rtol=1e-9, atol=1e-12)


def test_a_checkpoint_round_trips_with_equal_outputs(case):
    model = build(*case)
    batch = make_batch(case[1])
    train_steps(model, batch)
    model.eval()
    restored = build(
        case[0], case[1], variant=case[3], seed=1
    )  # a staged method's stage is in the checkpoint
    restored.load_state_dict(model.state_dict())
    restored.eval()
    for mine, theirs in zip(decode_all(model, batch), decode_all(restored, batch), strict=True):
        assert torch.equal(mine.logits, theirs.logits)


def test_real_missingness_trains_and_absent_inputs_do_not_reach_usable_predictions(case):
    model = build(*case)
    count = len(SPECS[case[1]].modalities)
    present = torch.ones(BATCH, count, dtype=torch.bool)
    for row in range(BATCH):  # absent rows in every modality; every sample keeps one
        present[row, (row + 1) % count] = row % 3 == 0
        present[row, row % count] = True
    batch = make_batch(case[1], present)
    model.train()
    mask = model.training_mask(present)
    assert not (mask & ~present).any()  # never trained with a modality the sample lacks
    loss = training_loss(model, batch, mask)
    assert torch.isfinite(loss.total)
    loss.total.backward()
    model.eval()
    clean = decode_all(model, batch)
    for index, name in enumerate(SPECS[case[1]].modalities.names):
        noise = torch.randn_like(batch["inputs"][name]) * 100
        batch["inputs"][name] = torch.where(
            present[:, index].view(-1, *[1] * (noise.dim() - 1)), batch["inputs"][name], noise
        )
    noisy = decode_all(model, batch)
    masks = model.modalities.masks(model.modalities.combinations())
    for mask, a, b in zip(masks, clean, noisy, strict=True):
        usable = (present | ~mask).all(-1)  # samples that have every modality of the combination
        assert torch.isfinite(a.logits[usable]).all()
        assert torch.allclose(a.logits[usable], b.logits[usable], atol=1e-5)


# -- datasets -----------------------------------------------------------------------------------
def user_provided_tree(write: Callable[[Path], Any], **options: Any):
    """A fixture for a dataset the user provides as a folder under the data root."""

    def make(request: pytest.FixtureRequest, tmp: Path) -> tuple[dict[str, Any], Path]:
        write(tmp)
        return options, tmp

    return make


def audio_visual_tree(write: Callable[[Path], Path]):
    def make(request: pytest.FixtureRequest, tmp: Path) -> tuple[dict[str, Any], None]:
        return {"path": str(write(tmp)), "audio": TINY_AUDIO, "visual": TINY_VISUAL}, None

    return make


# A small fixture per dataset, (request, tmp_path) -> (data.options, data root), written by the
# dataset tests' writers. A dataset without one is built from the data mirror ($DMRNET_DATA) when
# the mirror has every file it lists, with the options of MIRROR_OPTIONS (default: its defaults).
FIXTURES: dict[str, Callable[[pytest.FixtureRequest, Path], tuple[dict[str, Any], Path | None]]] = {
    "multiview": lambda request, tmp: (
        {"path": str(request.getfixturevalue("synthetic_file"))},
        None,
    ),
    "cremad": audio_visual_tree(cremad_tree),
    "kinetics-sounds": audio_visual_tree(kinetics_sounds_tree),
    "casia-surf": user_provided_tree(write_surf_tree, **FACE_SIZES),
    "cefa": user_provided_tree(write_cefa_tree, **FACE_SIZES, protocol="4@1"),
    "nyuv2": lambda request, tmp: (mat_options(write_mat_fixture(tmp)), None),
}
MIRROR_OPTIONS: dict[str, dict[str, Any]] = {
    "digits-rgbd": {"size": 32, "scenes": 20, "test_scenes": 6},
}


def mirror_files_missing(name: str) -> str | None:
    """Why dataset `name` cannot be built from the mirror, or None when it can."""
    root = os.environ.get("DMRNET_DATA")
    files = [f.path for f in DATASETS.get(name).files]
    if not files:
        return "no small fixture in tests/test_conformance.py and no files to read from a mirror"
    if not root:
        return "no small fixture, and $DMRNET_DATA (the data mirror) is not set"
    missing = [path for path in files if not (Path(root) / path).is_file()]
    return f"no small fixture, and the data mirror lacks {missing[0]}" if missing else None


def check_item(spec: DataSpec, item: dict[str, Any]) -> None:
    assert set(item["inputs"]) == set(spec.modalities.names)
    present = item["present"]
    assert present.dtype == torch.bool and present.shape == (len(spec.modalities),)
    assert bool(present.any())
    for index, name in enumerate(spec.modalities.names):
        x = item["inputs"][name]
        assert tuple(x.shape) == tuple(spec.input_shapes[name]), name
        assert x.dtype == torch.float32, name
        if present[index]:
            assert torch.isfinite(x).all(), name
    target = torch.as_tensor(item["target"])
    valid = target if spec.ignore_index is None else target[target != spec.ignore_index]
    assert bool((valid >= 0).all()) and bool((valid < spec.num_classes).all())
    if spec.task == "segmentation":
        first = spec.input_shapes[spec.modalities.names[0]]
        assert tuple(target.shape) == tuple(first[-2:])
    else:
        assert target.dim() == 0


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_builds_and_yields_items_matching_its_spec(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
):
    if name in FIXTURES:
        options, root = FIXTURES[name](request, tmp_path)
    else:
        reason = mirror_files_missing(name)
        if reason is not None:
            pytest.skip(f"{name}: {reason}")
        options, root = MIRROR_OPTIONS.get(name, {}), Path(os.environ["DMRNET_DATA"])
    data = build_data(name, options, root, 0.25, seed=0)
    spec = data.spec
    assert spec.task in {"classification", "pad", "segmentation"}
    build_task(spec)
    for split in (data.train, data.val, data.test):
        assert len(split) > 0
        for index in (0, len(split) - 1):
            check_item(spec, split[index])


EXPERT_CASES = [case for case in CASES if case[3] == "experts"]


@pytest.mark.parametrize(
    "case", EXPERT_CASES, ids=["-".join(p for p in c if p) for c in EXPERT_CASES]
)
def test_the_experts_variant_trains_its_experts_and_predicts_their_product(case):
    model = build(*case)
    assert model.experts is not None
    batch = make_batch(case[1])
    model.train()
    mask = model.training_mask(batch["present"])
    loss = training_loss(model, batch, mask)
    assert loss.terms["unimodal"] > 0  # lambda_uni * the experts' task loss
    model.eval()
    with torch.no_grad():
        features = model.encode(batch["inputs"], batch["present"])
        product = model.decode(features, batch["present"]).logits
        model.experts.set_mix(dict.fromkeys(model.modalities.combinations(), 0.0))
        fused = model.decode(features, batch["present"]).logits
    # w = 0 leaves the fused prediction's log-probabilities; w = 0.7 adds the experts'.
    assert torch.allclose(fused.exp().sum(1), torch.ones_like(fused[:, 0]), atol=1e-4)
    assert not torch.allclose(product, fused)
