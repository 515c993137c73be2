"""DataLoaders over dmrnet datasets, one construction for training, evaluation and benchmarks.

Training loaders shuffle with their own seeded generator, so the order of every epoch follows
from the seed alone, and a resumed run restores the generator's state (engine.RunState) to
replay the interrupted epoch in the same order.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    # BatchNorm cannot train on a final batch of one sample: drop the ragged end in training.
    drop_last = shuffle and len(dataset) > batch_size  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator if shuffle else None,
        persistent_workers=num_workers > 0,
    )
