"""Datasets: the registry, the data store, and one module per dataset.

Importing this package registers every built-in dataset, so `DATASETS` lists them and
`build_data` can build any of them by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dmrnet.data import (
    audiovisual,
    avdigits,
    casia_surf,
    cremad,
    digits_rgbd,
    handwritten,
    handwritten_pad,
    kinetics_sounds,
    mnist,
    multiview,
    nyuv2,
)
from dmrnet.data.base import DATASETS, DataSpec, DataSplits
from dmrnet.data.store import DataStore, RemoteFile
from dmrnet.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "DataSpec",
    "DataSplits",
    "DataStore",
    "RemoteFile",
    "audiovisual",
    "avdigits",
    "build_data",
    "casia_surf",
    "cremad",
    "digits_rgbd",
    "handwritten",
    "handwritten_pad",
    "kinetics_sounds",
    "mnist",
    "multiview",
    "nyuv2",
]


def build_data(
    name: str,
    options: dict[str, Any],
    root: str | Path | None,
    val_fraction: float,
    seed: int,
) -> DataSplits:
    """Build dataset `name` with its `data.options`, reading files from mirror `root` (or
    $DMRNET_DATA) and downloading into the cache what is missing.

    Options are validated here, at the config boundary, so a typo fails before any file is read
    and the error names the key as it is written in the config (`data.options.<key>`).
    """
    entry = DATASETS.get(name)
    try:
        parsed = entry.options.model_validate(options)
    except ValidationError as error:
        raise ConfigError(_describe(error, entry.options.model_fields)) from None
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be between 0 and 1, got {val_fraction}")
    splits = entry.build(parsed, DataStore(root), val_fraction, seed)
    # Training needs two samples (BatchNorm), selection and testing one: say so, not a traceback.
    sizes = {"train": len(splits.train), "validation": len(splits.val), "test": len(splits.test)}
    if sizes["train"] < 2 or min(sizes.values()) < 1:
        found = ", ".join(f"{count} {split}" for split, count in sizes.items())
        raise DataError(
            f"dataset {name!r}: too few samples for training ({found}); it needs at least 2 "
            "training samples and 1 each for validation (data.val_fraction) and test"
        )
    return splits


def _describe(error: ValidationError, fields: dict[str, Any]) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(["data.options", *(str(part) for part in item["loc"])])
        if item["type"] == "extra_forbidden":
            known = ", ".join(fields) or "none"
            problems.append(f"{key}: unknown option; options are {known}")
        elif item["type"] == "missing":
            problems.append(f"{key}: required option is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {message} (got {item.get('input')!r})")
    return "; ".join(problems)
