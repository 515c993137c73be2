"""NYU Depth v2 (Silberman et al., ECCV 2012) for RGB-D semantic segmentation, 40 classes.

For users who have the data; dmrnet does not download it (2.8 GB). Two layouts are read:

- `mat` (default): the official labelled file `nyu_depth_v2_labeled.mat` (MATLAB v7.3, i.e.
  HDF5, read with h5py: `images` uint8 RGB, `depths` metres (in-painted; `rawDepths` with holes
  as 0), `labels` 0..894 with 0 = unlabelled), the official 795/654 split `splits.mat`
  (`trainNdxs`, `testNdxs`, 1-based) and the 894-to-40 class mapping `classMapping40.mat`
  (`mapClass`, Gupta et al. 2013; the file ESANet and the nyuv2-python-toolkit ship).
- `prepared`: the folder ESANet's `prepare_dataset.py` writes: `train.txt` / `test.txt` (one
  image id per line) and `{train,test}/rgb/<id>.png`, `{train,test}/depth/<id>.png` (or
  `depth_raw/`, uint16 millimetres, 0 = hole) and `{train,test}/labels_40/<id>.png` (uint8,
  0 = void, 1..40).

Labels: void (0) becomes the ignore index 255, classes 1..40 become 0..39 (wall ... otherprop).
Depth is in metres; 0 (and NaN) are holes. The first use converts the chosen split into
memory-mapped arrays in the data store's cache folder (optionally resized to `size`), so training
reads samples without holding the data set in memory. Validation is `val_fraction` of the 795
training images (seeded by the run's seed); the 654 test images are never used for selection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import scipy.io
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from dmrnet.data.base import DataSpec, DataSplits, register_dataset
from dmrnet.data.segmentation import (
    RandomRescaleCropFlip,
    SegmentationArrays,
    median_frequency_weights,
)
from dmrnet.data.store import DataStore
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet

log = logging.getLogger("dmrnet")

CONVERSION_VERSION = 1
NUM_CLASSES = 40
IGNORE_INDEX = 255
HOLE = 0.0
CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip
MAT_KEYS = {"rgb": "images", "refined": "depths", "raw": "rawDepths", "labels": "labels"}


class NYUv2Options(BaseModel):
    """`data.options` for nyuv2. Relative paths are read from the working directory, else from
    the data root (`--data-root` / `DMRNET_DATA`)."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["mat", "prepared"] = "mat"
    path: Path = Field(
        Path("nyuv2/nyu_depth_v2_labeled.mat"),
        description="mat: the labelled .mat file; prepared: ESANet's prepared folder",
    )
    splits: Path = Field(Path("nyuv2/splits.mat"), description="mat layout: the official split")
    class_mapping: Path = Field(
        Path("nyuv2/classMapping40.mat"), description="mat layout: the 894-to-40 mapping"
    )
    depth: Literal["refined", "raw"] = Field("refined", description="in-painted or raw depth")
    size: tuple[int, int] | None = Field(None, description="(height, width); default 480 x 640")
    augment: bool = Field(True, description="training: rescale 1.0-1.4, crop, flip (ESANet)")
    class_weighting: Literal["median_frequency", "none"] = "median_frequency"


def _resolve(path: Path, store: DataStore, what: str, key: str) -> Path:
    candidates = [path.expanduser()]
    if not path.is_absolute() and store.mirror is not None:
        candidates.append(store.mirror / path)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"nyuv2: {what} {path} not found (looked at {looked}); set data.options.{key} (NYUv2 is "
        "not downloaded by dmrnet: see docs/datasets.md, section NYUv2)"
    )


def _resize(image: np.ndarray, size: tuple[int, int] | None, nearest: bool) -> np.ndarray:
    """(H, W) or (H, W, C) array resized to size=(height, width) with PIL."""
    if size is None or image.shape[:2] == size:
        return image
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if image.ndim == 3:
        return np.stack(
            [_resize(image[..., c], size, nearest) for c in range(image.shape[2])], axis=-1
        )
    mode_image = Image.fromarray(image.astype(np.float32) if image.dtype.kind == "f" else image)
    return np.asarray(mode_image.resize((size[1], size[0]), resample)).astype(image.dtype)


# -- readers: each yields (rgb (H, W, 3) uint8, depth (H, W) float32 metres, labels (H, W) uint8)
def _mat_split_indices(path: Path) -> dict[str, np.ndarray]:
    try:
        contents = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as error:
        raise DataError(f"{path}: cannot read the NYUv2 split file: {error}") from None
    indices = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in contents:
            raise DataError(f"{path}: key {key!r} is missing; is this NYUv2's splits.mat?")
        indices[split] = np.asarray(contents[key]).reshape(-1).astype(np.int64) - 1  # 1-based
    return indices


def _mat_mapping(path: Path) -> np.ndarray:
    """Lookup table raw label (0..894) -> dmrnet class (0..39, 255 = void)."""
    try:
        contents = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as error:
        raise DataError(f"{path}: cannot read the NYUv2 class mapping: {error}") from None
    if "mapClass" not in contents:
        raise DataError(f"{path}: key 'mapClass' is missing; is this classMapping40.mat?")
    mapping = np.asarray(contents["mapClass"]).reshape(-1).astype(np.int64)
    if mapping.size == 0 or mapping.min() < 0 or mapping.max() > NUM_CLASSES:
        raise DataError(f"{path}: 'mapClass' must map to classes 1..{NUM_CLASSES}")
    table = np.concatenate([[0], mapping]) - 1  # void (0) -> -1, class c -> c - 1
    return np.where(table < 0, IGNORE_INDEX, table).astype(np.uint8)


class _MatReader:
    def __init__(self, options: NYUv2Options, store: DataStore) -> None:
        self.path = _resolve(options.path, store, "labelled .mat file", "path")
        self.splits_path = _resolve(options.splits, store, "split file", "splits")
        self.mapping_path = _resolve(options.class_mapping, store, "class mapping", "class_mapping")
        self.depth_key = MAT_KEYS[options.depth]
        self.indices = _mat_split_indices(self.splits_path)
        self.mapping = _mat_mapping(self.mapping_path)
        self.sources = [self.path, self.splits_path, self.mapping_path]

    def count(self, split: str) -> int:
        return len(self.indices[split])

    def read(self, split: str) -> Any:
        try:
            handle = h5py.File(self.path, "r")
        except OSError as error:
            raise DataError(
                f"{self.path}: cannot read as a MATLAB v7.3 (HDF5) file: {error}"
            ) from None
        with handle:
            keys = {name: MAT_KEYS[name] for name in ("rgb", "labels")} | {"depth": self.depth_key}
            for key in keys.values():
                if key not in handle:
                    raise DataError(
                        f"{self.path}: key {key!r} is missing; is this nyu_depth_v2_labeled.mat?"
                    )
            images, depths, labels = (handle[keys[k]] for k in ("rgb", "depth", "labels"))
            count = images.shape[0]
            # HDF5 holds MATLAB's column-major arrays: images (N, 3, W, H), maps (N, W, H).
            if images.ndim != 4 or images.shape[1] != 3:
                raise DataError(
                    f"{self.path}: key 'images' has shape {images.shape}, expected (N, 3, W, H)"
                )
            for key, array in ((keys["depth"], depths), ("labels", labels)):
                if array.shape != (count, *images.shape[2:]):
                    raise DataError(
                        f"{self.path}: key {key!r} has shape {array.shape}, expected "
                        f"{(count, *images.shape[2:])} like 'images'"
                    )
            indices = self.indices[split]
            if indices.size and (indices.min() < 0 or indices.max() >= count):
                raise DataError(
                    f"{self.splits_path}: split {split!r} indexes images outside 1..{count} of "
                    f"{self.path}"
                )
            for index in indices:
                raw = np.asarray(labels[index]).T.astype(np.int64)
                if raw.max(initial=0) >= len(self.mapping):
                    raise DataError(
                        f"{self.path}: key 'labels' holds {raw.max()} in image {index + 1}, beyond "
                        f"the {len(self.mapping) - 1} classes of {self.mapping_path}"
                    )
                rgb = np.transpose(np.asarray(images[index]), (2, 1, 0))
                depth = np.asarray(depths[index], dtype=np.float32).T
                yield rgb, depth, self.mapping[raw], f"{self.path} image {index + 1}"


class _PreparedReader:
    def __init__(self, options: NYUv2Options, store: DataStore) -> None:
        self.root = _resolve(options.path, store, "prepared folder", "path")
        self.depth_dir = "depth" if options.depth == "refined" else "depth_raw"
        self.sources = [self.root]

    def ids(self, split: str) -> list[str]:
        listing = self.root / f"{split}.txt"
        if not listing.is_file():
            raise DataError(
                f"{self.root}: {listing.name} is missing; is this ESANet's NYUv2 folder?"
            )
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]

    def count(self, split: str) -> int:
        return len(self.ids(split))

    def read(self, split: str) -> Any:
        for image_id in self.ids(split):
            paths = {
                "rgb": self.root / split / "rgb" / f"{image_id}.png",
                "depth": self.root / split / self.depth_dir / f"{image_id}.png",
                "labels": self.root / split / "labels_40" / f"{image_id}.png",
            }
            arrays = {}
            for name, path in paths.items():
                try:
                    with Image.open(path) as image:
                        arrays[name] = np.asarray(image)
                except OSError as error:
                    raise DataError(f"{path}: cannot read image ({error})") from None
            shapes = {name: array.shape[:2] for name, array in arrays.items()}
            if len(set(shapes.values())) != 1:
                described = ", ".join(f"{paths[n]} {h}x{w}" for n, (h, w) in shapes.items())
                raise DataError(f"nyuv2 sample {image_id!r}: sizes differ: {described}")
            if arrays["rgb"].ndim != 3 or arrays["rgb"].shape[2] < 3:
                raise DataError(f"{paths['rgb']}: expected an RGB image")
            raw = arrays["labels"].astype(np.int64)
            if raw.max(initial=0) > NUM_CLASSES:
                raise DataError(
                    f"{paths['labels']}: label value {raw.max()} is beyond the 40 classes "
                    "(0 = void, 1..40)"
                )
            labels = np.where(raw == 0, IGNORE_INDEX, raw - 1).astype(np.uint8)
            depth = arrays["depth"].astype(np.float32) / 1000.0  # millimetres -> metres
            yield arrays["rgb"][..., :3], depth, labels, str(paths["rgb"].parent.parent / image_id)


# -- conversion into memory-mapped arrays ---------------------------------------------------------
def _fingerprint(sources: list[Path], options: NYUv2Options) -> str:
    described: dict[str, Any] = {
        "version": CONVERSION_VERSION,
        "layout": options.layout,
        "depth": options.depth,
        "size": options.size,
        "sources": [],
    }
    for source in sources:
        stat = source.stat()
        described["sources"].append([str(source.resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def _convert(reader: Any, split: str, folder: Path, size: tuple[int, int] | None) -> None:
    """Write {split}_rgb.npy (N, 3, H, W) uint8, {split}_depth.npy (N, 1, H, W) float32 and
    {split}_labels.npy (N, H, W) uint8 into `folder`, one image at a time."""
    count = reader.count(split)
    if not count:
        raise DataError(f"nyuv2: the {split} split is empty")
    outputs: dict[str, np.ndarray] = {}
    for index, (rgb, depth, labels, where) in enumerate(reader.read(split)):
        if not (rgb.shape[:2] == depth.shape == labels.shape):
            raise DataError(
                f"{where}: rgb {rgb.shape[:2]}, depth {depth.shape} and labels {labels.shape} "
                "must have the same size"
            )
        depth = np.where(np.isfinite(depth), depth, HOLE).astype(np.float32)  # NaN/inf: holes
        labels = _resize(labels, size, nearest=True)
        if not outputs:
            height, width = labels.shape
            shapes = {
                "rgb": (3, height, width),
                "depth": (1, height, width),
                "labels": (height, width),
            }
            types = {"rgb": np.uint8, "depth": np.float32, "labels": np.uint8}
            for part, shape in shapes.items():
                outputs[part] = np.lib.format.open_memmap(
                    folder / f"{split}_{part}.npy",
                    mode="w+",
                    dtype=types[part],
                    shape=(count, *shape),
                )
        if labels.shape != outputs["labels"].shape[1:]:
            raise DataError(
                f"{where}: {labels.shape[0]}x{labels.shape[1]}, unlike the first {split} image "
                f"({outputs['labels'].shape[1]}x{outputs['labels'].shape[2]}); set "
                "data.options.size"
            )
        outputs["rgb"][index] = np.transpose(_resize(rgb, size, nearest=False), (2, 0, 1))
        outputs["depth"][index, 0] = _resize(depth, size, nearest=True)  # never blend holes
        outputs["labels"][index] = labels
    for array in outputs.values():
        array.flush()


def _converted(options: NYUv2Options, store: DataStore) -> dict[str, np.ndarray]:
    reader = (
        _MatReader(options, store) if options.layout == "mat" else _PreparedReader(options, store)
    )
    cache = store.cache_dir("nyuv2")
    folder = cache / _fingerprint(reader.sources, options)
    if not (folder / "complete").is_file():
        log.info("nyuv2: converting %s into %s (once)", reader.sources[0], folder)
        partial = Path(tempfile.mkdtemp(dir=cache, prefix=".converting-"))
        try:
            for split in ("train", "test"):
                _convert(reader, split, partial, options.size)
            (partial / "complete").write_text("ok\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return {
        f"{split}_{part}": np.load(folder / f"{split}_{part}.npy", mmap_mode="r")
        for split in ("train", "test")
        for part in ("rgb", "depth", "labels")
    }


@register_dataset(
    "nyuv2",
    options=NYUv2Options,
    description="NYU Depth v2 RGB-D segmentation, 40 classes, official 795/654 split (user data)",
)
def build(options: NYUv2Options, store: DataStore, val_fraction: float, seed: int) -> DataSplits:
    arrays = _converted(options, store)
    modalities = ModalitySet(("rgb", "depth"))
    parts = {}
    for split in ("train", "test"):
        parts[split] = SegmentationArrays(
            modalities,
            {"rgb": arrays[f"{split}_rgb"], "depth": arrays[f"{split}_depth"]},
            arrays[f"{split}_labels"],
            NUM_CLASSES,
            ignore_index=IGNORE_INDEX,
            scales={"rgb": 1.0 / 255.0},
            holes={"depth": HOLE},
            source=f"nyuv2 ({split})",
        )
    order = np.random.default_rng(seed).permutation(len(parts["train"]))
    held = max(1, round(len(order) * val_fraction))
    augment = RandomRescaleCropFlip((1.0, 1.4), nearest=("depth",)) if options.augment else None
    train = parts["train"].subset(np.sort(order[held:]), transform=augment)
    val = parts["train"].subset(np.sort(order[:held]))
    height, width = arrays["train_labels"].shape[1:]
    extra: dict[str, Any] = {"holes": {"depth": HOLE}}
    if options.class_weighting == "median_frequency":
        extra["class_weights"] = median_frequency_weights(
            train.label_chunks(), NUM_CLASSES, IGNORE_INDEX
        )
    spec = DataSpec(
        name="nyuv2",
        modalities=modalities,
        input_shapes={"rgb": (3, height, width), "depth": (1, height, width)},
        task="segmentation",
        num_classes=NUM_CLASSES,
        class_names=CLASS_NAMES,
        input_stats=train.standardization(),
        ignore_index=IGNORE_INDEX,
        extra=extra,
    )
    return DataSplits(spec=spec, train=train, val=val, test=parts["test"])
