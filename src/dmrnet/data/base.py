"""What every dataset hands to the rest of dmrnet.

A dataset builder returns `DataSplits`: three torch datasets (train, val, test) whose items are

    {"inputs": {name: Tensor}, "present": BoolTensor (M,), "target": Tensor}

plus a `DataSpec` describing the modalities, input shapes, task and (optionally) per-modality
standardization statistics. An absent modality still has a (zero) tensor of the right shape so
batches collate; `present` says it is absent, and models never look at absent inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import Dataset

from dmrnet.checks import (
    check_features,
    check_finite,
    check_labels,
    check_numeric,
    check_present,
    check_same_length,
)
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet
from dmrnet.registry import Registry

Sample = dict[str, Any]


@dataclass(frozen=True)
class DataSpec:
    """Static description of a dataset, enough to build a model for it."""

    name: str
    modalities: ModalitySet
    input_shapes: Mapping[str, tuple[int, ...]]
    task: str  # a name in dmrnet.tasks.TASKS
    num_classes: int
    class_names: tuple[str, ...] | None = None
    # Per-modality (mean, std) from the training split; models standardize their inputs with them,
    # so checkpoints carry the statistics and `predict` accepts raw inputs.
    input_stats: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    ignore_index: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class DataSplits:
    spec: DataSpec
    train: Dataset
    val: Dataset
    test: Dataset


class ArrayMultiModalDataset(Dataset):
    """In-memory multimodal dataset: one float tensor (N, ...) per modality, labels, availability.

    Validates at construction (the data boundary): equal sample counts, finite values in present
    entries, integer labels in range, and no sample without any modality.
    """

    def __init__(
        self,
        modalities: ModalitySet,
        arrays: Mapping[str, np.ndarray | torch.Tensor],
        targets: np.ndarray | torch.Tensor,
        num_classes: int,
        present: np.ndarray | torch.Tensor | None = None,
        source: str = "dataset",
    ) -> None:
        missing = [m for m in modalities.names if m not in arrays]
        if missing:
            raise DataError(f"{source}: no array for modality {missing[0]!r}")
        labels = np.asarray(targets).reshape(-1)
        n = labels.shape[0]
        check_same_length({name: len(arrays[name]) for name in modalities.names}, n, source)
        check_labels(labels, num_classes, None, source)
        targets_t = torch.as_tensor(labels).long()
        present_t = (
            torch.ones(n, len(modalities), dtype=torch.bool)
            if present is None
            else torch.as_tensor(np.asarray(present)).bool()
        )
        if present_t.shape != (n, len(modalities)):
            raise DataError(
                f"{source}: availability mask has shape {tuple(present_t.shape)}, "
                f"expected {(n, len(modalities))}"
            )
        check_present(present_t, source)
        self.inputs: dict[str, torch.Tensor] = {}
        for index, name in enumerate(modalities.names):
            check_numeric(arrays[name], name, source)
            values = torch.as_tensor(np.asarray(arrays[name], dtype=np.float32))
            check_features(values.shape, name, source)
            check_finite(values, present_t[:, index], name, source)
            # Absent entries are zeroed so nothing non-finite can leak through a masked path.
            values[~present_t[:, index]] = 0.0
            self.inputs[name] = values
        self.modalities = modalities
        self.targets = targets_t
        self.present = present_t

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> Sample:
        return {
            "inputs": {name: values[index] for name, values in self.inputs.items()},
            "present": self.present[index],
            "target": self.targets[index],
        }

    def subset(self, indices: np.ndarray | torch.Tensor) -> ArrayMultiModalDataset:
        """A new dataset of the given rows (no copy of the validation work)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        out = object.__new__(ArrayMultiModalDataset)
        out.modalities = self.modalities
        out.inputs = {name: values[idx] for name, values in self.inputs.items()}
        out.targets = self.targets[idx]
        out.present = self.present[idx]
        return out

    def standardization(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-feature mean/std of each modality over the samples that have it."""
        stats = {}
        for index, name in enumerate(self.modalities.names):
            rows = self.inputs[name][self.present[:, index]]
            mean = rows.mean(0)
            std = rows.std(0, unbiased=False)
            # Constant features (std 0) are left unscaled instead of divided by zero.
            std = torch.where(std > 1e-8, std, torch.ones_like(std))
            stats[name] = (mean, std)
        return stats


def stratified_split(
    targets: np.ndarray | torch.Tensor, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out) with `fraction` of each class held out, seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(targets).reshape(-1)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = round(len(members) * fraction)
        held.append(members[:count])
    held_out = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


class DatasetEntry:
    """A registered dataset: an options schema and a builder.

    `build(options, store, val_fraction, seed)` returns `DataSplits`; `files` lists the remote
    files the dataset needs (for `dmrnet datasets`).
    """

    def __init__(
        self,
        name: str,
        options: type[BaseModel],
        build: Callable[..., DataSplits],
        description: str,
        files: tuple[Any, ...] = (),
    ) -> None:
        self.name = name
        self.options = options
        self.build = build
        self.description = description
        self.files = files


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(
    name: str, options: type[BaseModel], description: str, files: tuple[Any, ...] = ()
) -> Callable[[Callable[..., DataSplits]], Callable[..., DataSplits]]:
    def decorator(build: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
        DATASETS.register(name)(DatasetEntry(name, options, build, description, files))
        return build

    return decorator


# Version of a checkpoint's "dmrnet" section (config + spec_to_dict): the engine writes it, loading
# checks it. It lives here, beside the spec's serializers, so loading never imports Lightning.
CHECKPOINT_FORMAT = 1


def spec_to_dict(spec: DataSpec) -> dict[str, Any]:
    """Plain types and tensors only, so checkpoints load with `torch.load(weights_only=True)`."""
    return {
        "name": spec.name,
        "modalities": list(spec.modalities.names),
        "input_shapes": {k: list(v) for k, v in spec.input_shapes.items()},
        "task": spec.task,
        "num_classes": spec.num_classes,
        "class_names": None if spec.class_names is None else list(spec.class_names),
        "input_stats": None
        if spec.input_stats is None
        else {k: [mean, std] for k, (mean, std) in spec.input_stats.items()},
        "ignore_index": spec.ignore_index,
        "extra": dict(spec.extra),
    }


def spec_from_dict(data: Mapping[str, Any]) -> DataSpec:
    stats = data.get("input_stats")
    return DataSpec(
        name=data["name"],
        modalities=ModalitySet(tuple(data["modalities"])),
        input_shapes={k: tuple(v) for k, v in data["input_shapes"].items()},
        task=data["task"],
        num_classes=int(data["num_classes"]),
        class_names=None if data.get("class_names") is None else tuple(data["class_names"]),
        input_stats=None if stats is None else {k: (v[0], v[1]) for k, v in stats.items()},
        ignore_index=data.get("ignore_index"),
        extra=data.get("extra") or {},
    )
