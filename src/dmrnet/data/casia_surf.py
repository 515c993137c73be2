"""Face anti-spoofing with RGB, depth and IR images: CASIA-SURF and CeFA in their published layouts.

Neither data set can be downloaded (both are released on request, under agreements), so both are
read from a folder the user provides (docs/datasets.md says how to lay it out):

- **CASIA-SURF** (Zhang et al., CVPR 2019): list files with one sample per line,
  ``<rgb path> <depth path> <ir path> <label>``, paths relative to the data set's folder, label 1
  for a bona fide (real) face and 0 for an attack, e.g. ``train_list.txt``,
  ``val_private_list.txt``, ``test_private_list.txt``.
- **CeFA** (CASIA-SURF CeFA, Liu et al., WACV 2021): protocol lists ``<protocol>_train.txt``,
  ``<protocol>_dev_res.txt``, ``<protocol>_test_res.txt`` with one *video* per line,
  ``<video folder> <label>``; each video folder holds ``profile/`` (RGB), ``depth/`` and ``ir/``
  frames with matching file names, and every frame is a sample.

Every path must stay inside the data set's folder: absolute paths and `..` are rejected. Every
image file is checked before training starts (missing files, and by default files that are not
images), and errors name the list file and line.

Preprocessing follows the paper's code (DMRNet, face-antispoofing/datasets/surf_txt.py), written
with Pillow and torch: training images are resized to 144 x 144, rotated by a random integer angle
in [-30, 30] degrees onto the code's 0.8-scaled canvas, randomly cropped to 112 x 112 and flipped
horizontally with probability 0.5; evaluation images are resized to 112 x 112. The same random
transform is applied to the modalities of one sample. Pixels are scaled as (x - 127.5) / 128. Every
image is read as 3 channels (the paper's `cv2.imread` does the same for depth and IR).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch.utils.data import Dataset

from dmrnet.data.base import DataSpec, DataSplits, Sample, register_dataset, stratified_split
from dmrnet.data.store import DataStore
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet

FACE_MODALITIES = ("rgb", "depth", "ir")
BONA_FIDE = 1  # label of a real face in the CASIA-SURF and CeFA lists; 0 is an attack
CLASS_NAMES = ("attack", "bona fide")
# The paper code's rotation draws the rotated image onto a canvas of 0.8 times its bounding box.
ROTATION_CANVAS = 0.8


class FaceOptions(BaseModel):
    """`data.options` shared by the face-anti-spoofing data sets."""

    model_config = ConfigDict(extra="forbid")

    directory: str = Field(description="the data set's folder: absolute, or under the data root")
    modalities: list[str] | None = Field(None, description="a subset of rgb, depth, ir")
    threshold: Literal["argmax", "eer"] = Field(
        "argmax",
        description="argmax (the paper's code) or the equal-error threshold of the validation "
        "split, applied to the test split",
    )
    train_resize: int = Field(144, ge=1, description="training images are resized to this first")
    crop_size: int = Field(112, ge=1, description="training crop and evaluation size")
    max_rotation: int = Field(30, ge=0, le=180, description="degrees; 0 switches rotation off")
    flip: bool = Field(True, description="random horizontal flip in training")
    check_images: Literal["exists", "open", "decode"] = Field(
        "open",
        description="before training: exists (files only), open (also read each header), "
        "decode (also decode every image; slow on the full data set)",
    )

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        unknown = [n for n in names if n not in FACE_MODALITIES]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"give distinct modalities of {', '.join(FACE_MODALITIES)}")
        return [n for n in FACE_MODALITIES if n in names]  # canonical order

    @model_validator(mode="after")
    def _crop_fits(self) -> FaceOptions:
        # The smallest training canvas is the unrotated one (ROTATION_CANVAS of the resized image).
        smallest = (
            int(self.train_resize * ROTATION_CANVAS) if self.max_rotation else self.train_resize
        )
        if self.crop_size > smallest:
            raise ValueError(
                f"crop_size {self.crop_size} does not fit the training images: at most "
                f"{smallest} for train_resize {self.train_resize}"
                + (
                    " with rotation (its canvas is 0.8 times the image)"
                    if self.max_rotation
                    else ""
                )
            )
        return self


@dataclass(frozen=True)
class FaceSample:
    paths: tuple[Path, ...]  # one image per modality, in the data set's modality order
    label: int
    source: str  # "list file:line", for error messages


# -- preprocessing ----------------------------------------------------------------------------


def rotate_like_paper(image: Image.Image, angle: float) -> Image.Image:
    """The paper code's rotation (`RondomRotion_multi`): `cv2.getRotationMatrix2D(centre, -angle)`
    drawn onto a canvas of 0.8 times the rotated bounding box, centred, black outside."""
    width, height = image.size
    radians = math.radians(-angle)
    cos, sin = math.cos(radians), math.sin(radians)
    canvas_cos, canvas_sin = abs(cos) * ROTATION_CANVAS, abs(sin) * ROTATION_CANVAS
    new_width = int(height * canvas_sin + width * canvas_cos)
    new_height = int(height * canvas_cos + width * canvas_sin)
    cx, cy = width / 2, height / 2
    # Pillow maps output pixels back to input pixels: the inverse of cv2's rotation matrix.
    inverse = (
        cos,
        -sin,
        cx - cos * new_width / 2 + sin * new_height / 2,
        sin,
        cos,
        cy - sin * new_width / 2 - cos * new_height / 2,
    )
    return image.transform(
        (new_width, new_height),
        Image.Transform.AFFINE,
        inverse,
        resample=Image.Resampling.BILINEAR,
    )


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in about [-1, 1]: (x - 127.5) / 128, as the paper's code."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (H, W, 3)
    return (pixels.permute(2, 0, 1) - 127.5) / 128.0


class FacePreprocessing:
    """One random transform per sample, applied alike to all of its modalities."""

    def __init__(self, options: FaceOptions, train: bool) -> None:
        self.options = options
        self.train = train

    def __call__(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        options = self.options
        if not self.train:
            size = (options.crop_size, options.crop_size)
            return [to_tensor(im.resize(size, Image.Resampling.BILINEAR)) for im in images]
        size = (options.train_resize, options.train_resize)
        images = [im.resize(size, Image.Resampling.BILINEAR) for im in images]
        if options.max_rotation:
            # Integer degrees, both ends included (the paper: random.randint(-30, 30)).
            limit = options.max_rotation
            angle = int(torch.randint(-limit, limit + 1, ()))
            images = [rotate_like_paper(im, angle) for im in images]
        width, height = images[0].size
        crop = options.crop_size
        left = int(torch.randint(0, width - crop + 1, ()))
        top = int(torch.randint(0, height - crop + 1, ()))
        images = [im.crop((left, top, left + crop, top + crop)) for im in images]
        if options.flip and bool(torch.rand(()) < 0.5):
            images = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
        return [to_tensor(im) for im in images]


def read_image(path: Path, source: str) -> Image.Image:
    """An image as 3-channel RGB; a file that cannot be read or decoded is a DataError."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{source}: image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{source}: cannot decode image {path}: {error}") from None


class FaceImageDataset(Dataset):
    """Image samples of several modalities, loaded and preprocessed on access."""

    def __init__(
        self, samples: Sequence[FaceSample], modalities: ModalitySet, preprocess: FacePreprocessing
    ) -> None:
        self.samples = list(samples)
        self.modalities = modalities
        self.preprocess = preprocess
        self.targets = torch.tensor([s.label for s in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample = self.samples[index]
        images = [read_image(path, sample.source) for path in sample.paths]
        tensors = self.preprocess(images)
        return {
            "inputs": dict(zip(self.modalities.names, tensors, strict=True)),
            "present": torch.ones(len(self.modalities), dtype=torch.bool),
            "target": self.targets[index],
        }


# -- reading list files -----------------------------------------------------------------------


def dataset_folder(store: DataStore, directory: str, name: str) -> Path:
    """The data set's folder: `directory` if absolute, else `<data root>/<directory>`."""
    path = Path(directory).expanduser()
    if not path.is_absolute():
        if store.mirror is None:
            raise DataError(
                f"{name}: data.options.directory {directory!r} is relative to the data root, but "
                f"no data root is set; {name} cannot be downloaded: set DMRNET_DATA (or "
                "--data-root) to the folder that holds it, or give an absolute directory "
                "(docs/datasets.md shows the layout)"
            )
        path = store.mirror / path
    if not path.is_dir():
        raise DataError(
            f"{name}: {path} is not a folder; {name} cannot be downloaded: request it from its "
            "authors and lay it out as docs/datasets.md shows"
        )
    return path


def inside(folder: Path, text: str, source: str, what: str = "path") -> Path:
    """`folder / text`, refusing absolute paths, `..` and symlinks that lead out of `folder`
    (the path is resolved before the check), so that nothing escapes `folder`."""
    posix, windows = PurePosixPath(text), PureWindowsPath(text)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise DataError(
            f"{source}: {what} {text!r} is absolute; paths must be relative to {folder}"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise DataError(
            f"{source}: {what} {text!r} leaves the data set folder {folder} ('..' is not allowed)"
        )
    if not (folder / posix).resolve().is_relative_to(folder.resolve()):
        raise DataError(
            f"{source}: {what} {text!r} leads out of the data set folder {folder} (a symlink)"
        )
    return folder / posix


def read_list(folder: Path, name: str, fields: int, layout: str) -> list[tuple[str, list[str]]]:
    """(source, fields) of every non-blank line of list file `name` inside `folder`."""
    path = inside(folder, name, f"{folder}", "list file")
    if not path.is_file():
        raise DataError(f"list file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read list file {path}: {error}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        source = f"{path}:{number}"
        if len(parts) != fields:
            raise DataError(
                f"{source}: {len(parts)} fields, expected {fields} ({layout}); got {line.strip()!r}"
            )
        if parts[-1] not in ("0", "1"):
            raise DataError(f"{source}: label {parts[-1]!r} is not 0 (attack) or 1 (bona fide)")
        lines.append((source, parts))
    if not lines:
        raise DataError(f"list file {path} has no samples")
    return lines


def check_images(samples: Sequence[FaceSample], check: str) -> None:
    """Every image exists (and opens / decodes): before training, naming the first bad file."""
    for sample in samples:
        for path in sample.paths:
            if not path.is_file():
                raise DataError(f"{sample.source}: image file {path} does not exist")
            if check == "decode":
                read_image(path, sample.source)
            elif check == "open":
                try:
                    with Image.open(path):
                        pass
                except (UnidentifiedImageError, OSError, ValueError) as error:
                    raise DataError(
                        f"{sample.source}: {path} is not a readable image: {error}"
                    ) from None


def _check_labels(samples: Sequence[FaceSample], split: str, name: str) -> None:
    if not samples:
        raise DataError(f"{name}: the {split} split is empty")
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        present = "bona fide" if labels == {BONA_FIDE} else "attack"
        raise DataError(
            f"{name}: the {split} split has only {present} samples ({samples[0].source} ...); "
            "it needs both bona fide (1) and attack (0) samples"
        )


def build_face_splits(
    name: str,
    options: FaceOptions,
    train: list[FaceSample],
    val: list[FaceSample] | None,
    test: list[FaceSample],
    val_fraction: float,
    seed: int,
) -> DataSplits:
    """Check the samples, split validation off training when no list gives it, build the spec."""
    _check_labels(train, "training", name)
    if val is None:
        # No validation list: a stratified, seeded part of the training list. Frames of one
        # subject or video can then fall on both sides; prefer a separate validation list.
        keep, held_out = stratified_split([s.label for s in train], val_fraction, seed)
        train, val = [train[i] for i in keep], [train[i] for i in held_out]
    if options.threshold == "eer":
        _check_labels(val, "validation", name)
    for samples in (train, val, test):
        check_images(samples, options.check_images)
    modalities = ModalitySet(tuple(options.modalities or FACE_MODALITIES))
    crop = options.crop_size
    spec = DataSpec(
        name=name,
        modalities=modalities,
        input_shapes={m: (3, crop, crop) for m in modalities.names},
        task="pad",
        num_classes=2,
        class_names=CLASS_NAMES,
        extra={"bona_fide_class": BONA_FIDE, "threshold": options.threshold},
    )
    train_preprocess = FacePreprocessing(options, train=True)
    eval_preprocess = FacePreprocessing(options, train=False)
    return DataSplits(
        spec=spec,
        train=FaceImageDataset(train, modalities, train_preprocess),
        val=FaceImageDataset(val, modalities, eval_preprocess),
        test=FaceImageDataset(test, modalities, eval_preprocess),
    )


# -- CASIA-SURF -------------------------------------------------------------------------------


class CasiaSurfOptions(FaceOptions):
    """`data.options` for casia-surf (list files relative to `directory`)."""

    directory: str = "CASIA-SURF"
    train_list: str = "train_list.txt"
    val_list: str | None = Field(
        "val_private_list.txt", description="null: a stratified part of the training list"
    )
    test_list: str = "test_private_list.txt"


SURF_LAYOUT = "<rgb path> <depth path> <ir path> <label>"


def read_surf_list(folder: Path, name: str, modalities: Sequence[str]) -> list[FaceSample]:
    columns = [FACE_MODALITIES.index(m) for m in modalities]
    samples = []
    for source, fields in read_list(folder, name, 4, SURF_LAYOUT):
        paths = tuple(inside(folder, fields[c], source) for c in columns)
        samples.append(FaceSample(paths, int(fields[3]), source))
    return samples


@register_dataset(
    "casia-surf",
    options=CasiaSurfOptions,
    description="CASIA-SURF face anti-spoofing, RGB/depth/IR (user-provided, list files)",
)
def build_casia_surf(
    options: CasiaSurfOptions, store: DataStore, val_fraction: float, seed: int
) -> DataSplits:
    folder = dataset_folder(store, options.directory, "casia-surf")
    modalities = options.modalities or list(FACE_MODALITIES)
    train = read_surf_list(folder, options.train_list, modalities)
    val = None if options.val_list is None else read_surf_list(folder, options.val_list, modalities)
    test = read_surf_list(folder, options.test_list, modalities)
    return build_face_splits("casia-surf", options, train, val, test, val_fraction, seed)


# -- CeFA -------------------------------------------------------------------------------------

# Modality -> the folder of a CeFA video that holds its frames.
CEFA_FOLDERS = {"rgb": "profile", "depth": "depth", "ir": "ir"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class CefaOptions(FaceOptions):
    """`data.options` for cefa: a protocol's lists (relative to `directory`)."""

    directory: str = "CeFA"
    protocol: str = Field("4@1", description="e.g. 4@1, 4@2, 4@3 (cross-ethnicity and PAI)")
    train_list: str | None = Field(None, description="default <protocol>_train.txt")
    val_list: str | None = Field(None, description="default <protocol>_dev_res.txt")
    test_list: str | None = Field(None, description="default <protocol>_test_res.txt")
    frame_step: int = Field(1, ge=1, description="use every n-th frame of each video")

    @field_validator("protocol")
    @classmethod
    def _protocol_name(cls, protocol: str) -> str:
        if not re.fullmatch(r"\d+@\d+", protocol):
            raise ValueError(f"a protocol looks like 4@1, got {protocol!r}")
        return protocol


CEFA_LAYOUT = "<video folder> <label>"


def read_cefa_list(
    folder: Path, name: str, modalities: Sequence[str], frame_step: int
) -> list[FaceSample]:
    """One sample per frame of every listed video; frames are matched by file name."""
    samples = []
    for source, (video_text, label) in read_list(folder, name, 2, CEFA_LAYOUT):
        video = inside(folder, video_text, source)
        frame_folders = [video / CEFA_FOLDERS[m] for m in modalities]
        for frame_folder in frame_folders:
            if not frame_folder.is_dir():
                raise DataError(f"{source}: video folder {frame_folder} does not exist")
        first = frame_folders[0]
        frames = sorted(p.name for p in first.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise DataError(f"{source}: {first} holds no frames ({', '.join(IMAGE_SUFFIXES)})")
        for frame in frames[::frame_step]:
            paths = tuple(frame_folder / frame for frame_folder in frame_folders)
            samples.append(FaceSample(paths, int(label), f"{source} (frame {frame})"))
    return samples


@register_dataset(
    "cefa",
    options=CefaOptions,
    description="CASIA-SURF CeFA face anti-spoofing, RGB/depth/IR (user-provided, protocol lists)",
)
def build_cefa(
    options: CefaOptions, store: DataStore, val_fraction: float, seed: int
) -> DataSplits:
    folder = dataset_folder(store, options.directory, "cefa")
    modalities = options.modalities or list(FACE_MODALITIES)
    protocol = options.protocol

    def read(name: str) -> list[FaceSample]:
        return read_cefa_list(folder, name, modalities, options.frame_step)

    train = read(options.train_list or f"{protocol}_train.txt")
    val = read(options.val_list or f"{protocol}_dev_res.txt")
    test = read(options.test_list or f"{protocol}_test_res.txt")
    return build_face_splits("cefa", options, train, val, test, val_fraction, seed)
