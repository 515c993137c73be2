"""digits-rgbd: RGB-D segmentation scenes *composed* from MNIST test digits (not captured data).

It exists to exercise dense DMRNet on a CPU in minutes, with two modalities that need each other:

- `rgb` (3 x S x S): a cluttered, textured background (a smooth colour field times random
  stripes), *painted* digits on it (drawn like the real ones, but flat: part of the background),
  and the real digits, each in a random textured colour at a random contrast, then a global
  gain/offset and pixel noise. Appearance tells which digit a blob is, but not whether it is an
  object or a picture of one, and low-contrast digits nearly vanish.
- `depth` (1 x S x S, metres): a tilted background plane 3-5 m away and each real digit as a flat
  card 0.3-2 m in front of it, nearer digits occluding farther ones, seen by a coarse sensor
  (`depth_resolution` scene pixels per depth pixel, then bilinear back to S), with depth-dependent
  noise and holes (value 0: blobs, random dropouts and shadows beside digit edges, as with
  structured-light sensors). Depth tells where the objects are, but barely which digit.
- labels (S x S): 0 = background (including painted digits), 1..10 = digits 0..9 on the stroke
  pixels of the real digits (resized MNIST intensity > 0.5); a nearer digit wins.

Deterministic from `seed` (and the options): the MNIST test digits are split into disjoint pools,
test (20%), validation (`val_fraction` of the rest) and training, and each split's scenes draw
only from its own pool. Composed scenes are cached in the data store's cache folder.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmrnet.data.base import DataSpec, DataSplits, register_dataset
from dmrnet.data.mnist import MNIST_TEST_FILES, load_mnist_test
from dmrnet.data.segmentation import SegmentationArrays, median_frequency_weights
from dmrnet.data.store import DataStore
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet

log = logging.getLogger("dmrnet")

RECIPE_VERSION = 1  # bump when the composition changes, so old caches are not reused
NUM_CLASSES = 11  # background + digits 0..9
CLASS_NAMES = ("background", *(str(d) for d in range(10)))
HOLE = 0.0  # depth value of a pixel without a measurement
IGNORE_INDEX = 255  # declared for the task; every composed pixel has a label
TEST_SHARE = 0.2  # of the MNIST test digits, reserved for the test scenes


class DigitsRGBDOptions(BaseModel):
    """`data.options` for digits-rgbd."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(64, ge=32, le=512, description="scene height and width in pixels")
    scenes: int = Field(2000, ge=10, description="training + validation scenes")
    test_scenes: int = Field(500, ge=1)
    digits: tuple[int, int] = Field((1, 3), description="real digits per scene (min, max)")
    painted: tuple[int, int] = Field((1, 2), description="painted (unlabelled) digits per scene")
    digit_scale: tuple[float, float] = Field(
        (0.4, 0.65), description="digit box size as a fraction of the scene size (min, max)"
    )
    stroke_width: int = Field(1, ge=0, description="pixels added around the strokes (bold digits)")
    contrast: tuple[float, float] = Field((0.25, 1.0), description="digit opacity in rgb")
    hue_jitter: float = Field(
        0.04, ge=0.0, description="std of a digit's hue around its class hue (0.5: no cue)"
    )
    depth_resolution: int = Field(4, ge=1, description="scene pixels per depth-sensor pixel")
    depth_noise: float = Field(0.005, ge=0.0, description="noise std at 1 m; grows with d^2")
    hole_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="depth pixels lost in blobs")
    seed: int = Field(0, description="composition seed (the run's seed does not change scenes)")
    class_weighting: Literal["median_frequency", "none"] = Field(
        "median_frequency", description="loss weights per class from the training labels"
    )

    @model_validator(mode="after")
    def _ordered_ranges(self) -> DigitsRGBDOptions:
        for key in ("digits", "painted", "digit_scale", "contrast"):
            low, high = getattr(self, key)
            if low > high or low < 0:
                raise ValueError(f"{key}: expected 0 <= min <= max, got {[low, high]}")
        if self.digits[1] < 1:
            raise ValueError("digits: a scene needs at least one real digit")
        if not (self.digit_scale[0] > 0 and self.digit_scale[1] <= 1):
            raise ValueError("digit_scale: fractions must be in (0, 1]")
        if self.size % self.depth_resolution:
            raise ValueError(
                f"depth_resolution {self.depth_resolution} must divide the scene size {self.size}"
            )
        return self


# -- composition ----------------------------------------------------------------------------------
def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """A 28x28 uint8 digit as a size x size float map in [0, 1]."""
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """(channels, size, size) random values on a coarse grid, interpolated bilinearly."""
    coarse = rng.random((channels, cells, cells)).astype(np.float32)
    return np.stack(
        [
            np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR), dtype=np.float32)
            for c in coarse
        ]
    )


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) in [0, 1]: a sinusoidal texture of random orientation and frequency."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, frequency, phase = rng.uniform(0, np.pi), rng.uniform(0.2, 0.9), rng.uniform(0, 6.3)
    return 0.5 + 0.5 * np.sin(frequency * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)


def _digit_colour(rng: np.random.Generator, digit: int, hue_jitter: float) -> np.ndarray:
    """(3, 1, 1) colour of a digit: the hue of its class (digit / 10 around the colour wheel)
    jittered by `hue_jitter`, random saturation and value. Appearance is a cue to the class, as
    for real object classes, but neighbouring hues overlap."""
    hue = (digit / 10.0 + rng.normal(0.0, hue_jitter)) % 1.0
    colour = colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    return np.asarray(colour, dtype=np.float32)[:, None, None]


def _paint(
    rgb: np.ndarray,
    coverage: np.ndarray,
    colour: np.ndarray,
    rng: np.random.Generator,
    contrast: tuple[float, float],
) -> None:
    """Paint a digit (coverage in [0, 1], scene-sized) in a colour with a stripe texture."""
    texture = 0.65 + 0.35 * _stripes(rng, rgb.shape[-1])
    alpha = rng.uniform(*contrast) * coverage
    rgb *= 1.0 - alpha
    rgb += alpha * colour * texture


def _place(rng: np.random.Generator, image: np.ndarray, options: DigitsRGBDOptions) -> np.ndarray:
    """The digit resized to a random box, made bolder by `stroke_width` pixels (a grey
    dilation) and placed at a random position in a blank scene."""
    size, scale = options.size, options.digit_scale
    box = int(rng.integers(round(scale[0] * size), round(scale[1] * size) + 1))
    box = max(4, min(box, size))
    top, left = rng.integers(0, size - box + 1, size=2)
    coverage = np.zeros((size, size), dtype=np.float32)
    coverage[top : top + box, left : left + box] = _resize(image, box)
    if options.stroke_width:
        import scipy.ndimage  # lazy: only generation needs it, and it is slow to import

        coverage = scipy.ndimage.grey_dilation(coverage, size=2 * options.stroke_width + 1)
    return coverage


def compose_scene(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    options: DigitsRGBDOptions,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene from a pool of digits: rgb uint8 (3, S, S), depth float32 (1, S, S) in metres
    (0 = hole), labels uint8 (S, S)."""
    size = options.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # Background: a smooth colour field modulated by stripes, and its plane in depth.
    rgb = _smooth_field(rng, size, 4, 3) * (0.55 + 0.45 * _stripes(rng, size))
    plane = rng.uniform(3.0, 5.0)
    slope = rng.uniform(-0.012, 0.012, size=2)
    depth = plane + slope[0] * (xx - size / 2) + slope[1] * (yy - size / 2)
    target = np.zeros((size, size), dtype=np.uint8)

    # Painted digits: appearance only, part of the background.
    for _ in range(int(rng.integers(options.painted[0], options.painted[1] + 1))):
        pick = int(rng.integers(len(images)))
        colour = _digit_colour(rng, int(labels[pick]), options.hue_jitter)
        _paint(rgb, _place(rng, images[pick], options), colour, rng, options.contrast)

    # Real digits, far to near, so nearer ones occlude.
    count = int(rng.integers(options.digits[0], options.digits[1] + 1))
    distances = np.sort(rng.uniform(0.3, 2.0, size=count))  # in front of the plane
    objects = np.zeros((size, size), dtype=bool)
    for distance in distances:
        pick = int(rng.integers(len(images)))
        coverage = _place(rng, images[pick], options)
        colour = _digit_colour(rng, int(labels[pick]), options.hue_jitter)
        _paint(rgb, coverage, colour, rng, options.contrast)
        stroke = coverage > 0.5
        target[stroke] = labels[pick] + 1
        depth[stroke] = plane - distance
        objects |= stroke

    # Appearance sensor: gain, offset and noise.
    rgb = rgb * rng.uniform(0.6, 1.2) + rng.uniform(-0.1, 0.1)
    rgb += rng.normal(0.0, 0.03, size=rgb.shape)
    rgb_u8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)

    # Depth sensor: coarse pixels (block mean), bilinear back to the scene size, noise, holes.
    factor = options.depth_resolution
    if factor > 1:
        coarse = depth.reshape(size // factor, factor, size // factor, factor).mean(axis=(1, 3))
        depth = np.asarray(
            Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BILINEAR)
        )
    depth = depth + rng.normal(0.0, 1.0, size=depth.shape) * options.depth_noise * depth**2
    blobs = _smooth_field(rng, size, 8, 1)[0]
    share = options.hole_fraction * rng.uniform(0.0, 2.0)  # varies from scene to scene
    holes = blobs > np.quantile(blobs, 1.0 - share)
    holes |= rng.random((size, size)) < options.hole_fraction / 5  # single-pixel dropouts
    # Shadows: sensor pixels just right of an object's edge (as seen at the sensor resolution).
    seen = objects.reshape(size // factor, factor, size // factor, factor).mean(axis=(1, 3)) > 0.25
    seen = seen.repeat(factor, axis=0).repeat(factor, axis=1)
    shadow = np.zeros_like(seen)
    shadow[:, factor:] = seen[:, :-factor]
    holes |= shadow & ~seen & (rng.random((size, size)) < 0.7)
    depth = np.where(holes, HOLE, depth).astype(np.float32)
    return rgb_u8, depth[None], target


def compose_split(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    options: DigitsRGBDOptions,
    split: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` scenes of one split, drawn from that split's digit pool."""
    stream = ["train", "val", "test"].index(split)
    rng = np.random.default_rng([options.seed, RECIPE_VERSION, stream])
    scenes = [compose_scene(rng, images, labels, options) for _ in range(count)]
    return (
        np.stack([s[0] for s in scenes]),
        np.stack([s[1] for s in scenes]),
        np.stack([s[2] for s in scenes]),
    )


def digit_pools(count: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Disjoint indices into the MNIST test digits for the train, val and test scenes."""
    order = np.random.default_rng([seed, RECIPE_VERSION]).permutation(count)
    test = round(count * TEST_SHARE)
    val = round((count - test) * val_fraction)
    return {
        "test": np.sort(order[:test]),
        "val": np.sort(order[test : test + val]),
        "train": np.sort(order[test + val :]),
    }


# -- cache ----------------------------------------------------------------------------------------
def _cache_key(options: DigitsRGBDOptions, val_fraction: float) -> str:
    described = {"recipe": RECIPE_VERSION, "val_fraction": val_fraction, **options.model_dump()}
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_or_compose(
    store: DataStore, options: DigitsRGBDOptions, val_fraction: float
) -> dict[str, np.ndarray]:
    path = store.cache_dir("digits-rgbd") / f"scenes-{_cache_key(options, val_fraction)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as error:
            log.warning("%s: unreadable cache (%s); composing the scenes again", path, error)
    images, labels = load_mnist_test(store)
    pools = digit_pools(len(images), val_fraction, options.seed)
    val_count = round(options.scenes * val_fraction)
    counts = {"train": options.scenes - val_count, "val": val_count, "test": options.test_scenes}
    if counts["train"] < 1 or counts["val"] < 1:
        raise DataError(
            f"digits-rgbd: {options.scenes} scenes with val_fraction {val_fraction} leave "
            f"{counts['train']} training and {counts['val']} validation scenes; raise "
            "data.options.scenes"
        )
    arrays: dict[str, np.ndarray] = {}
    for split, count in counts.items():
        pool = pools[split]
        rgb, depth, target = compose_split(images[pool], labels[pool], count, options, split)
        arrays.update({f"{split}_rgb": rgb, f"{split}_depth": depth, f"{split}_labels": target})
    _write_atomically(path, arrays)
    return arrays


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(partial, path)
    except OSError as error:
        Path(partial).unlink(missing_ok=True)
        log.warning("could not cache composed scenes at %s: %s", path, error)


@register_dataset(
    "digits-rgbd",
    options=DigitsRGBDOptions,
    description="RGB-D segmentation scenes composed from MNIST test digits (11 classes, composed)",
    files=MNIST_TEST_FILES,
)
def build(
    options: DigitsRGBDOptions, store: DataStore, val_fraction: float, seed: int
) -> DataSplits:
    """Train, validation and test scenes; `seed` (the run's) does not change them, so runs with
    different seeds are evaluated on the same scenes (the composition seed is `options.seed`)."""
    arrays = _load_or_compose(store, options, val_fraction)
    modalities = ModalitySet(("rgb", "depth"))
    splits = {}
    for split in ("train", "val", "test"):
        splits[split] = SegmentationArrays(
            modalities,
            {"rgb": arrays[f"{split}_rgb"], "depth": arrays[f"{split}_depth"]},
            arrays[f"{split}_labels"],
            NUM_CLASSES,
            ignore_index=IGNORE_INDEX,
            scales={"rgb": 1.0 / 255.0},
            holes={"depth": HOLE},
            source=f"digits-rgbd ({split})",
        )
    size = options.size
    extra: dict[str, object] = {"holes": {"depth": HOLE}, "composed": True}
    if options.class_weighting == "median_frequency":
        extra["class_weights"] = median_frequency_weights(
            splits["train"].label_chunks(), NUM_CLASSES, IGNORE_INDEX
        )
    spec = DataSpec(
        name="digits-rgbd",
        modalities=modalities,
        input_shapes={"rgb": (3, size, size), "depth": (1, size, size)},
        task="segmentation",
        num_classes=NUM_CLASSES,
        class_names=CLASS_NAMES,
        input_stats=splits["train"].standardization(),
        ignore_index=IGNORE_INDEX,
        extra=extra,
    )
    return DataSplits(spec=spec, train=splits["train"], val=splits["val"], test=splits["test"])
