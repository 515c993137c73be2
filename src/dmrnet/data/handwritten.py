"""UCI Multiple Features ("handwritten"): 2000 digits, 10 classes, six feature views.

The file is the one the multi-view literature uses (TMC, Han et al., ICLR 2021), with its fixed
1600/400 train/test split; validation is a stratified, seeded part of the 1600 training rows, so
the test rows are never used for model selection.
"""

from __future__ import annotations

import numpy as np
import scipy.io
from pydantic import BaseModel, ConfigDict, field_validator

from dmrnet.data.base import (
    ArrayMultiModalDataset,
    DataSpec,
    DataSplits,
    register_dataset,
    stratified_split,
)
from dmrnet.data.store import DataStore, RemoteFile
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet

# View name -> feature dimension, in the file's order (keys x1..x6).
HANDWRITTEN_VIEWS: dict[str, int] = {
    "pix": 240,  # pixel averages in 2x3 windows
    "fou": 76,  # Fourier coefficients of the character shapes
    "fac": 216,  # profile correlations
    "zer": 47,  # Zernike moments
    "kar": 64,  # Karhunen-Loeve coefficients
    "mor": 6,  # morphological features
}

HANDWRITTEN_FILE = RemoteFile(
    path="handwritten/handwritten_6views.mat",
    url=(
        "https://raw.githubusercontent.com/hanmenghan/TMC/"
        "08d0ca4c4461b6de1cf73514d8c621598bc2b504/TMC%20ICLR/datasets/handwritten_6views.mat"
    ),
    sha256="d731ec02aaa97cf9a5826df68b0dd1e73ba61a82ba3c8f64606ba402926c885b",
    size=3500922,
    description="UCI Multiple Features, six views, TMC's 1600/400 split (CC BY 4.0)",
)

NUM_CLASSES = 10


class HandwrittenOptions(BaseModel):
    """`data.options` for handwritten."""

    model_config = ConfigDict(extra="forbid")

    # A subset of the six views; kept in the canonical order whatever order is given.
    views: list[str] | None = None

    @field_validator("views")
    @classmethod
    def _known_views(cls, views: list[str] | None) -> list[str] | None:
        if views is None:
            return None
        known = list(HANDWRITTEN_VIEWS)
        for view in views:
            if view not in HANDWRITTEN_VIEWS:
                raise ValueError(f"unknown view {view!r}; handwritten views are {', '.join(known)}")
        if not views:
            raise ValueError(f"give at least one view of {', '.join(known)}")
        if len(set(views)) != len(views):
            raise ValueError(f"a view is listed twice in {views}")
        return [view for view in known if view in views]


def _part(contents: dict, views: list[str], part: str, source: str) -> ArrayMultiModalDataset:
    """The train or test rows of the file as a dataset of raw float32 features."""
    keys = {view: f"x{list(HANDWRITTEN_VIEWS).index(view) + 1}_{part}" for view in views}
    for key in [*keys.values(), f"gt_{part}"]:
        if key not in contents:
            raise DataError(f"{source}: key {key!r} is missing; is this the TMC handwritten file?")
    arrays = {view: np.asarray(contents[key], dtype=np.float32) for view, key in keys.items()}
    for view, values in arrays.items():
        if values.ndim != 2 or values.shape[1] != HANDWRITTEN_VIEWS[view]:
            raise DataError(
                f"{source}: view {view!r} ({keys[view]}) has shape {values.shape}, expected "
                f"(N, {HANDWRITTEN_VIEWS[view]})"
            )
    # The file labels digits 1..10 (MATLAB style); dmrnet's classes are 0..9.
    labels = np.asarray(contents[f"gt_{part}"]).reshape(-1).astype(np.int64) - 1
    return ArrayMultiModalDataset(
        ModalitySet(tuple(views)), arrays, labels, NUM_CLASSES, source=f"{source} ({part})"
    )


@register_dataset(
    "handwritten",
    options=HandwrittenOptions,
    description="UCI handwritten digits, 6 feature views, fixed 1600/400 split (TMC file)",
    files=(HANDWRITTEN_FILE,),
)
def build(
    options: HandwrittenOptions, store: DataStore, val_fraction: float, seed: int
) -> DataSplits:
    """Train (1600 minus validation), validation (stratified, seeded) and test (400) splits."""
    path = store.fetch(HANDWRITTEN_FILE)
    views = options.views or list(HANDWRITTEN_VIEWS)
    try:
        contents = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as exc:
        raise DataError(f"cannot read {path} as a .mat file: {exc}") from exc
    train_all = _part(contents, views, "train", str(path))
    test = _part(contents, views, "test", str(path))
    train_rows, val_rows = stratified_split(train_all.targets, val_fraction, seed)
    train = train_all.subset(train_rows)
    spec = DataSpec(
        name="handwritten",
        modalities=ModalitySet(tuple(views)),
        input_shapes={view: (HANDWRITTEN_VIEWS[view],) for view in views},
        task="classification",
        num_classes=NUM_CLASSES,
        class_names=tuple(str(digit) for digit in range(NUM_CLASSES)),
        input_stats=train.standardization(),
    )
    return DataSplits(spec=spec, train=train, val=train_all.subset(val_rows), test=test)
