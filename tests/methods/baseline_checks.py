"""Checks every baseline must pass, shared by tests/methods/test_<baseline>.py.

Plain functions (not tests): each baseline's test module calls them with its method name, so a
failure names the baseline and the behaviour.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dmrnet.config import parse_config
from dmrnet.data import DataSplits, build_data
from dmrnet.methods import Method, build_method
from dmrnet.methods.stages import StagedMethod
from dmrnet.tasks import build_task


def build(make_config: Any, method: str, **model: Any) -> tuple[Method, DataSplits]:
    config = parse_config(make_config(method, **model))
    data = build_data(
        config.data.name, config.data.options, None, config.data.val_fraction, config.seed
    )
    return build_method(config.model, data.spec, build_task(data.spec)), data


def batch_of(dataset: Any, size: int | None = None) -> dict[str, Any]:
    items = [dataset[i] for i in range(size or len(dataset))]
    return torch.utils.data.default_collate(items)


def check_any_subset_gives_logits_of_the_right_shape(model: Method, data: DataSplits) -> None:
    batch = batch_of(data.train, 16)
    for mode in (True, False):
        model.train(mode)
        features = model.encode(batch["inputs"], batch["present"])
        for combination in model.modalities.combinations():
            mask = model.modalities.mask(combination).expand(16, -1)
            output = model.decode(features, mask)
            assert output.logits.shape == (16, data.spec.num_classes), combination
            assert torch.isfinite(output.logits).all(), combination
    # Mixed masks: every sample its own combination.
    model.eval()
    mixed = torch.rand(16, len(model.modalities)) > 0.5
    mixed[~mixed.any(-1), 0] = True
    output = model.decode(model.encode(batch["inputs"], batch["present"]), mixed)
    assert output.logits.shape == (16, data.spec.num_classes)


def check_loss_is_finite_and_reaches_the_parameters(model: Method, data: DataSplits) -> None:
    model.train()
    batch = batch_of(data.train, 32)
    mask = model.training_mask(batch["present"])
    output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
    loss = model.loss(output, batch["target"], mask)
    assert torch.isfinite(loss.total)
    assert loss.per_sample.shape == (32,)
    terms = sum(t.item() for t in loss.terms.values())
    assert loss.total.item() == pytest.approx(terms, rel=1e-5, abs=1e-6)
    loss.total.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def check_decode_many_equals_decoding_each_combination(model: Method, data: DataSplits) -> None:
    model.eval()
    batch = batch_of(data.test, 32)
    with torch.no_grad():
        features = model.encode(batch["inputs"], batch["present"])
        masks = model.modalities.masks(model.modalities.combinations())
        many = model.decode_many(features, masks)
        assert len(many) == len(masks)
        for mask, output in zip(masks, many, strict=True):
            single = model.decode(features, mask.expand(32, -1))
            assert torch.allclose(output.logits, single.logits, atol=1e-5), mask.tolist()


def train_briefly(model: Method, data: DataSplits, epochs: int = 15, lr: float = 0.01) -> None:
    """The engine's training step in a plain loop (with the epoch hooks)."""
    torch.manual_seed(0)
    if isinstance(model, StagedMethod):
        model.begin_stage(model.training_stages(epochs)[-1].name)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loader = torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=True, drop_last=True)
    for epoch in range(epochs):
        model.start_epoch(epoch)
        for batch in loader:
            mask = model.training_mask(batch["present"])
            output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
            optimizer.zero_grad()
            model.loss(output, batch["target"], mask).total.backward()
            optimizer.step()
        model.end_epoch(epoch)


def accuracy_per_combination(model: Method, data: DataSplits) -> dict[str, float]:
    model.eval()
    batch = batch_of(data.test)
    with torch.no_grad():
        masks = model.modalities.masks(model.modalities.combinations())
        outputs = model.decode_many(model.encode(batch["inputs"], batch["present"]), masks)
    return {
        model.modalities.format(c): (o.logits.argmax(-1) == batch["target"]).float().mean().item()
        for c, o in zip(model.modalities.combinations(), outputs, strict=True)
    }


def check_a_short_training_run_learns(model: Method, data: DataSplits) -> None:
    """Synthetic views (tests/conftest.py): `a` informative, `b` weak, `c` nearly noise."""
    train_briefly(model, data)
    accuracy = accuracy_per_combination(model, data)
    assert accuracy["a"] > 0.8, accuracy
    assert accuracy["a+b+c"] > 0.8, accuracy
    assert accuracy["b"] > 0.4, accuracy  # 4 classes: chance is 0.25
