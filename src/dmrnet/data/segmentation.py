"""Datasets of label maps: image-like modalities (C, H, W) and a label per pixel.

`SegmentationArrays` is the dense counterpart of `ArrayMultiModalDataset`: it keeps each modality
in its stored dtype (uint8 images stay uint8; arrays may be memory-mapped files) and converts one
sample at a time; subsets index lazily, so nothing large is copied. It validates at construction,
the data boundary:

- every modality of a sample has the label map's height and width;
- labels are integers in 0..K-1, or the ignore index;
- values are finite. Modalities with a *hole value* (depth: 0 = no measurement, as in NYUv2 and
  Kinect-style sensors) may hold NaN and +-inf, which are read as holes and stored as the hole
  value; the model maps holes to 0 after standardization (the training mean), so they carry no
  signal. Any other modality with a non-finite value is an error naming the sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dmrnet.checks import check_labels, check_present
from dmrnet.checks import chunks as _chunks
from dmrnet.data.base import Sample
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet

log = logging.getLogger("dmrnet")


def fill_holes(values: np.ndarray, hole_value: float, name: str, source: str) -> np.ndarray:
    """NaN and +-inf read as holes: replaced by the hole value (in a copy, only if any)."""
    bad = 0
    for rows in _chunks(len(values)):
        bad += int((~np.isfinite(np.asarray(values[rows]))).sum())
    if not bad:
        return values
    log.info(
        "%s: modality %r has %d NaN/inf values; read as holes (%s)", source, name, bad, hole_value
    )
    values = np.array(values)
    values[~np.isfinite(values)] = hole_value
    return values


class SegmentationArrays(Dataset):
    """Dense dataset over arrays (N, C, H, W) or (N, H, W) per modality and labels (N, H, W).

    `scales[name]` multiplies a modality when a sample is read (e.g. 1/255 for uint8 images);
    `holes[name]` is its hole value (see the module docstring); `transform(sample)` (e.g. random
    rescaling and flips for training) is applied to each sample read.
    """

    def __init__(
        self,
        modalities: ModalitySet,
        arrays: Mapping[str, np.ndarray],
        labels: np.ndarray,
        num_classes: int,
        ignore_index: int | None = None,
        present: np.ndarray | None = None,
        scales: Mapping[str, float] | None = None,
        holes: Mapping[str, float] | None = None,
        source: str = "dataset",
        transform: Callable[[Sample], Sample] | None = None,
    ) -> None:
        if labels.ndim != 3:
            raise DataError(f"{source}: label maps must be (N, H, W), got shape {labels.shape}")
        check_labels(labels, num_classes, ignore_index, source)
        count, height, width = labels.shape
        holes = dict(holes or {})
        present_np = (
            np.ones((count, len(modalities)), dtype=bool)
            if present is None
            else np.asarray(present, dtype=bool)
        )
        if present_np.shape != (count, len(modalities)):
            raise DataError(
                f"{source}: availability mask has shape {present_np.shape}, expected "
                f"{(count, len(modalities))}"
            )
        check_present(torch.from_numpy(present_np), source)
        self.inputs: dict[str, np.ndarray] = {}
        for index, name in enumerate(modalities.names):
            if name not in arrays:
                raise DataError(f"{source}: no array for modality {name!r}")
            values = arrays[name]
            if values.ndim == 3:
                values = values[:, None]  # (N, H, W) -> (N, 1, H, W), a view
            if values.ndim != 4 or values.shape[0] != count:
                raise DataError(
                    f"{source}: modality {name!r} has shape {values.shape}; expected "
                    f"({count}, C, H, W), one map per label map"
                )
            if values.shape[2:] != (height, width):
                raise DataError(
                    f"{source}: modality {name!r} is {values.shape[2]}x{values.shape[3]} but the "
                    f"label maps are {height}x{width}; every modality of a sample must have the "
                    "label map's size"
                )
            if values.dtype.kind == "f":
                if name in holes:
                    values = fill_holes(values, holes[name], name, source)
                else:
                    for rows in _chunks(count):
                        chunk = np.asarray(values[rows]).reshape(rows.stop - rows.start, -1)
                        bad = present_np[rows, index] & ~np.isfinite(chunk).all(1)
                        if bool(bad.any()):
                            raise DataError(
                                f"{source}: modality {name!r} has NaN or inf values (first in "
                                f"sample {rows.start + int(np.argmax(bad))}); only modalities "
                                "with holes (depth) may"
                            )
            self.inputs[name] = values
        self.modalities = modalities
        self._labels = labels
        self._present = torch.from_numpy(present_np)
        self.rows = np.arange(count)
        self.scales = dict(scales or {})
        self.holes = holes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def present(self) -> torch.Tensor:
        return self._present[torch.from_numpy(self.rows)]

    def label_chunks(self) -> Iterator[np.ndarray]:
        """The label maps, a few at a time (for statistics over large splits)."""
        for rows in _chunks(len(self.rows)):
            yield np.asarray(self._labels[self.rows[rows]])

    def __getitem__(self, index: int) -> Sample:
        row = int(self.rows[index])
        inputs = {}
        for position, (name, values) in enumerate(self.inputs.items()):
            x = torch.from_numpy(np.array(values[row], dtype=np.float32))  # a writable copy
            if name in self.scales:
                x = x * self.scales[name]
            if not bool(self._present[row, position]):
                x = torch.zeros_like(x)
            inputs[name] = x
        sample = {
            "inputs": inputs,
            "present": self._present[row],
            "target": torch.from_numpy(np.array(self._labels[row], dtype=np.int64)),
        }
        return self.transform(sample) if self.transform is not None else sample

    def subset(
        self,
        indices: Sequence[int] | np.ndarray,
        transform: Callable[[Sample], Sample] | None = None,
    ) -> SegmentationArrays:
        """The given samples (indices into this dataset; nothing is copied or revalidated), with
        `transform` applied to each sample read."""
        out = object.__new__(SegmentationArrays)
        out.__dict__.update(self.__dict__)
        out.rows = self.rows[np.asarray(indices, dtype=np.int64)]
        out.transform = transform
        return out

    def standardization(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-channel mean/std (shaped (C, 1, 1)) of each modality over the samples that have
        it, holes excluded; computed in float64 chunks so large images never fill memory."""
        stats = {}
        for position, (name, values) in enumerate(self.inputs.items()):
            rows = self.rows[self._present[torch.from_numpy(self.rows), position].numpy()]
            channels = values.shape[1]
            total, squares, count = np.zeros(channels), np.zeros(channels), np.zeros(channels)
            for part in _chunks(len(rows)):
                raw = np.asarray(values[np.sort(rows[part])])
                chunk = raw.astype(np.float64) * self.scales.get(name, 1.0)
                valid = raw != self.holes[name] if name in self.holes else np.ones_like(raw, bool)
                total += np.where(valid, chunk, 0.0).sum(axis=(0, 2, 3))
                squares += np.where(valid, chunk**2, 0.0).sum(axis=(0, 2, 3))
                count += valid.sum(axis=(0, 2, 3))
            if not bool((count > 0).all()):
                raise DataError(f"modality {name!r}: no valid values to standardize with")
            mean = total / count
            std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
            std = np.where(std > 1e-8, std, 1.0)
            stats[name] = (
                torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
                torch.tensor(std, dtype=torch.float32).view(-1, 1, 1),
            )
        return stats


def median_frequency_weights(
    label_chunks: Iterator[np.ndarray], num_classes: int, ignore_index: int | None = None
) -> list[float]:
    """Class weights median(f) / f_c, where f_c is the pixel share of class c in the images that
    contain it (Eigen and Fergus, ICCV 2015; ESANet's default for NYUv2). Rare classes weigh
    more; a class absent from every image gets weight 0."""
    pixels = np.zeros(num_classes)
    image_pixels = np.zeros(num_classes)
    for chunk in label_chunks:
        for label_map in chunk:
            values = label_map[label_map != ignore_index] if ignore_index is not None else label_map
            counts = np.bincount(values.ravel(), minlength=num_classes)[:num_classes]
            pixels += counts
            image_pixels += (counts > 0) * counts.sum()
    seen = pixels > 0
    if not bool(seen.any()):
        raise DataError("no labelled pixel to compute class weights from")
    frequency = np.where(seen, pixels / np.maximum(image_pixels, 1), 0.0)
    median = np.median(frequency[seen])
    return [float(median / f) if f > 0 else 0.0 for f in frequency]


class RandomRescaleCropFlip:
    """Training augmentation of ESANet: rescale by a random factor in `scale`, crop a random
    window of the original size, mirror left-right with probability 1/2. Modalities with holes
    and the labels are resized by nearest neighbour (no mixed depths, no invented classes), the
    others bilinearly. Random numbers come from torch, so Lightning's seeding covers them."""

    def __init__(
        self, scale: tuple[float, float] = (1.0, 1.4), nearest: Sequence[str] = ()
    ) -> None:
        self.scale = scale
        self.nearest = set(nearest)

    def __call__(self, sample: Sample) -> Sample:
        target = sample["target"]
        height, width = target.shape
        factor = float(torch.empty(1).uniform_(*self.scale))
        size = (max(height, round(height * factor)), max(width, round(width * factor)))
        top = int(torch.randint(0, size[0] - height + 1, (1,)))
        left = int(torch.randint(0, size[1] - width + 1, (1,)))
        flip = bool(torch.rand(1) < 0.5)

        def apply(x: torch.Tensor, nearest: bool) -> torch.Tensor:
            if size != (height, width):
                mode = (
                    {"mode": "nearest"} if nearest else {"mode": "bilinear", "align_corners": False}
                )
                x = F.interpolate(x[None].float(), size=size, **mode)[0]
            x = x[..., top : top + height, left : left + width]
            return x.flip(-1) if flip else x

        inputs = {k: apply(v, k in self.nearest) for k, v in sample["inputs"].items()}
        labels = apply(target[None], True)[0].to(target.dtype)
        return {"inputs": inputs, "present": sample["present"], "target": labels}


__all__: list[Any] = [
    "RandomRescaleCropFlip",
    "SegmentationArrays",
    "check_labels",
    "fill_holes",
    "median_frequency_weights",
]
