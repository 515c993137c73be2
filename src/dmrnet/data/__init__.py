"""Datasets: the registry, the data store, and one module per dataset.

Importing this package registers every built-in dataset, so `DATASETS` lists them and
`build_data` can build any of them by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dmrnet.checks import check_split_sizes, format_errors
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
from dmrnet.errors import ConfigError

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
        raise ConfigError(
            format_errors(
                error, "data", "data.options", noun="option", known=list(entry.options.model_fields)
            )
        ) from None
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be between 0 and 1, got {val_fraction}")
    splits = entry.build(parsed, DataStore(root), val_fraction, seed)
    sizes = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}  # type: ignore[arg-type]
    check_split_sizes(sizes, f"dataset {name!r}")
    return splits
