"""Vector methods on the synthetic views of tests/conftest.py: build, batches, brief training.

The checks every method must pass are tests/test_conformance.py, run over the registry; these
helpers serve the method-specific behavioural tests.
"""

from __future__ import annotations

from typing import Any

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


def train_briefly(
    model: Method, data: DataSplits, epochs: int = 15, lr: float = 0.01, stage: str | None = None
) -> None:
    """The engine's training step in a plain loop (with the epoch hooks); a staged method trains
    `stage` (default: its last)."""
    torch.manual_seed(0)
    if isinstance(model, StagedMethod):
        model.begin_stage(stage or model.training_stages(epochs)[-1].name)
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
