"""Checkpoints written before the head component still load, and the models are unchanged.

`legacy_checkpoints.pt.xz` was recorded with the code of commit d5c99d8 (before nn/heads.py), by
this file run as a script against that commit's package:

    mkdir /tmp/old && git archive d5c99d8 src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/methods/test_checkpoint_compat.py

For every method it holds the state_dict after two training steps from seed 0, the evaluation
logits of every combination and the resolved model config as a run saves it. The models are as
small as each family allows (a few hundred parameters) and each state_dict is stored as one flat
tensor per dtype (`pack`), and the torch.save file is xz-compressed (the many module names,
which are what changed, compress well): about 65 KB. Today's code must
(1) load that state_dict (module names changed; `Method.legacy_state_keys` maps them) and predict
the same logits, (2) reproduce the same training from seed 0: parameter creation order, hence the
random initialization, is unchanged (both to float rounding, `assert_same`), and (3) parse the
saved config (fields a family no longer has: `ModelConfig.retired_fields`).
Only APIs that both versions have are used here.
"""

from __future__ import annotations

import io
import lzma
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from dmrnet.config import parse_config
from dmrnet.data.base import DataSpec
from dmrnet.methods import METHODS, Method, build_method
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import build_task

# Recorded with one thread; a reduction split over several threads rounds differently.
pytestmark = pytest.mark.usefixtures("one_thread")
FIXTURE = Path(__file__).with_name("legacy_checkpoints.pt.xz")
BATCH = 4
VECTOR = {
    "encoder": {"name": "mlp", "options": {"hidden": [4], "dropout": 0.0}},
    "feature_dim": 4,
    "embed_dim": 4,
}
DENSE = {
    "encoder": {"name": "resnet", "options": {"depth": 10, "width": 1}},
    "embed_dim": 2,
    "decoder_channels": [2, 2, 2],
    "decoder_blocks": 1,
    "context_bins": [1],
}
SURF = {"depth": 10, "width": 1, "embed_dim": 2}
FIELDS: dict[str, dict[str, Any]] = {
    "dmrnet": VECTOR,
    "moddrop": VECTOR,
    "hemis": VECTOR,
    "late-fusion": {k: v for k, v in VECTOR.items() if k != "embed_dim"},
    "dedicated": VECTOR,
    "shaspec": {**VECTOR, "adapter_dim": 8},
    "mmanet": VECTOR,
    "dmrnet-seg": DENSE,
    "moddrop-seg": DENSE,
    "surf-dmrnet": SURF,
    "surf-moddrop": SURF,
}
SHAPES = {"a": (3, 4, 4), "b": (1, 4, 4)}


def spec_for(method: str) -> DataSpec:
    if method in ("dmrnet-seg", "moddrop-seg"):
        return DataSpec(
            "maps", ModalitySet(("a", "b")), SHAPES, "segmentation", 3, ignore_index=255
        )
    return DataSpec("images", ModalitySet(("a", "b")), SHAPES, "classification", 4)


def batch_for(spec: DataSpec) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    inputs = {n: torch.randn(BATCH, *s, generator=generator) for n, s in SHAPES.items()}
    shape = (BATCH, *SHAPES["a"][1:]) if spec.task == "segmentation" else (BATCH,)
    target = torch.randint(0, spec.num_classes, shape, generator=generator)
    return {"inputs": inputs, "present": torch.ones(BATCH, 2, dtype=torch.bool), "target": target}


def build(method: str, seed: int) -> Method:
    spec = spec_for(method)
    config = METHODS.get(method).config_class(**FIELDS[method])
    torch.manual_seed(seed)
    return build_method(config, spec, build_task(spec))


def train_and_predict(method: str) -> tuple[Method, list[torch.Tensor]]:
    """Two training steps from seed 0, then the evaluation logits of every combination."""
    model = build(method, seed=0)
    batch = batch_for(model.spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    torch.manual_seed(2)
    for _ in range(2):
        mask = model.training_mask(batch["present"])
        output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
        optimizer.zero_grad()
        model.loss(output, batch["target"], mask).total.backward()
        optimizer.step()
    return model, predict(model, batch)


def predict(model: Method, batch: dict[str, Any]) -> list[torch.Tensor]:
    model.eval()
    masks = model.modalities.masks(model.modalities.combinations())
    with torch.no_grad():
        features = model.encode(batch["inputs"], batch["present"])
        return [model.decode(features, mask.expand(BATCH, -1)).logits for mask in masks]


def renamed(model: Method, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The legacy keys as today's code names them (the rules of every module that has some)."""
    state = dict(state)
    for prefix, module in model.named_modules():
        rules = getattr(module, "legacy_state_keys", ())
        start = f"{prefix}." if prefix else ""
        for key in [k for k in state if k.startswith(start)]:
            for pattern, replacement in rules:
                local = key[len(start) :]
                new = re.sub(pattern, replacement, local, count=1)
                if new != local:
                    state[start + new] = state.pop(key)
                    break
    return state


def pack(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A state_dict as its keys and shapes plus one flat tensor per dtype: a torch.save of ~100
    separate small tensors would be mostly per-tensor file overhead."""
    flat: dict[str, list[torch.Tensor]] = {}
    for tensor in state.values():
        flat.setdefault(str(tensor.dtype), []).append(tensor.reshape(-1))
    return {
        "keys": [(key, str(t.dtype), list(t.shape)) for key, t in state.items()],
        "values": {dtype: torch.cat(parts) for dtype, parts in flat.items()},
    }


def unpack(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`pack` undone, keys in their saved order."""
    offsets = dict.fromkeys(packed["values"], 0)
    state = {}
    for key, dtype, shape in packed["keys"]:
        size, start = math.prod(shape), offsets[dtype]
        state[key] = packed["values"][dtype][start : start + size].reshape(shape).clone()
        offsets[dtype] = start + size
    return state


def assert_same(new: torch.Tensor, old: torch.Tensor, name: str = "") -> None:
    """Equal up to float rounding: the CPU's convolution kernels are chosen per instruction set
    (oneDNN), so the dense and SURF networks reproduce the recorded values to about 1e-7 on
    another machine, not bit for bit. A changed initialization, layer or update differs by far
    more than the tolerance (order 1e-2 and up). Integer tensors differ by at least 1, so they
    must be equal."""
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def legacy() -> dict[str, Any]:
    records = torch.load(io.BytesIO(lzma.decompress(FIXTURE.read_bytes())), weights_only=True)
    return {
        name: {**record, "state": unpack(record["state"]), "logits": list(record["logits"])}
        for name, record in records.items()
    }


@pytest.mark.parametrize("method", sorted(FIELDS))
def test_a_checkpoint_of_the_previous_version_loads_and_predicts_the_same(legacy, method):
    model = build(method, seed=1)
    model.load_state_dict(legacy[method]["state"])
    batch = batch_for(model.spec)
    for new, old in zip(predict(model, batch), legacy[method]["logits"], strict=True):
        assert_same(new, old)


@pytest.mark.parametrize("method", sorted(FIELDS))
def test_the_same_seed_gives_the_same_model_and_training_as_the_previous_version(legacy, method):
    model, logits = train_and_predict(method)
    old = renamed(model, legacy[method]["state"])
    state = model.state_dict()
    # Every old entry is still there (buffers added since, e.g. the HCR's selection statistics,
    # are filled in when an old checkpoint loads).
    assert set(old) <= set(state), sorted(set(old) - set(state))
    for key in old:
        assert_same(state[key], old[key], key)
    for new, previous in zip(logits, legacy[method]["logits"], strict=True):
        assert_same(new, previous)


@pytest.mark.parametrize("method", sorted(FIELDS))
def test_a_config_saved_by_the_previous_version_parses(legacy, method):
    saved = legacy[method]["config"]
    config = parse_config({"data": {"name": "images"}, "model": saved}, source="saved")
    model = build_method(config.model, spec_for(method), build_task(spec_for(method)))
    model.load_state_dict(legacy[method]["state"])


def test_every_registered_method_is_covered():
    assert sorted(METHODS) == sorted(FIELDS)


if __name__ == "__main__":
    torch.set_num_threads(1)
    records = {}
    for name in FIELDS:
        trained, predicted = train_and_predict(name)
        config = trained.config.model_dump(mode="json")
        state, logits = pack(trained.state_dict()), torch.stack(predicted)
        records[name] = {"state": state, "logits": logits, "config": config}
    buffer = io.BytesIO()
    torch.save(records, buffer)
    FIXTURE.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
