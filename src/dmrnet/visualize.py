"""Pictures of dense predictions a person can look at.

- `prediction_grid`: for a few samples of a split, one row each: every modality, the ground truth
  and the prediction under every evaluated combination (what `dmrnet evaluate` writes as
  predictions.png for segmentation runs);
- `write_masks`: colour masks of `dmrnet predict` (one PNG per sample), the label maps and the
  colour legend.

Colours come from a fixed palette (class 0 black, then 19 colours chosen to be told apart, then
evenly spread hues), so the same class has the same colour in every picture; ignored pixels are
light grey. `size_colour` gives combination sizes the same colours in every chart.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dmrnet.files import save_figure

IGNORE_COLOUR = (200, 200, 200)


# Sasha Trubetskoy's "20 simple, distinct colours" without grey (too close to the ignore grey).
# The PASCAL VOC map used before gave digits-rgbd's classes 1, 8 and 9 three near-identical reds.
DISTINCT = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
    "#808000", "#ffd8b1", "#000075",
)  # fmt: skip


@functools.cache
def _palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    colours = [(0, 0, 0)] + [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in DISTINCT]
    # Beyond those: farthest-point picks from a 7-level RGB grid, each as far as possible from
    # every colour so far and from the ignore grey (deterministic, so stable across pictures).
    grid = np.stack(np.meshgrid(*[np.linspace(0, 255, 7)] * 3, indexing="ij"), -1).reshape(-1, 3)
    taken = np.array([*colours, IGNORE_COLOUR], dtype=float)
    nearest = np.linalg.norm(grid[:, None] - taken[None], axis=-1).min(1)
    while len(colours) < num_classes:
        pick = grid[int(nearest.argmax())]
        colours.append(tuple(int(c) for c in np.rint(pick)))
        nearest = np.minimum(nearest, np.linalg.norm(grid - pick, axis=-1))
    return tuple(colours[:num_classes])  # type: ignore[arg-type]


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: black, the DISTINCT colours, then far-apart grid colours."""
    return np.array(_palette(num_classes), dtype=np.uint8).reshape(num_classes, 3)


def size_colour(size: int) -> str:
    """The colour of combinations of `size` modalities, the same in every chart (tab10)."""
    import matplotlib

    return matplotlib.colormaps["tab10"](size - 1 if size <= 10 else 9)


def colorize(labels: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; values outside the classes (the ignore
    index) are light grey."""
    labels = np.asarray(labels).astype(np.int64)
    inside = (labels >= 0) & (labels < num_classes)
    image = np.empty((*labels.shape, 3), dtype=np.uint8)
    image[...] = IGNORE_COLOUR
    image[inside] = palette(num_classes)[labels[inside]]
    return image


def modality_image(values: torch.Tensor | np.ndarray) -> tuple[np.ndarray, str | None]:
    """A modality sample (C, H, W) or (H, W) for display: three channels as colour, scaled to
    [0, 1] per image; else the first channel in its own units, with a colour map (returned as
    its name) whose colour bar then reads in those units (e.g. depth)."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.shape[0] < 3:
        return array[0], "viridis"
    image = np.transpose(array[:3], (1, 2, 0))
    low, high = float(np.min(image)), float(np.max(image))
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image, None


def _spread(count: int, available: int) -> list[int]:
    """`count` indices spread evenly over a dataset (deterministic)."""
    count = min(count, available)
    return sorted({round(i * (available - 1) / max(1, count - 1)) for i in range(count)})


@torch.no_grad()
def prediction_grid(
    method: Any,
    dataset: Any,
    combinations: Sequence[tuple[int, ...]],
    path: str | Path,
    count: int = 4,
    run_name: str | None = None,
) -> Path:
    """Rows: `count` samples of `dataset`; columns: each modality, the ground truth, and the
    prediction under each combination (blank where a sample lacks a modality it uses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = Path(path)
    spec, modalities = method.spec, method.modalities
    samples = [dataset[i] for i in _spread(count, len(dataset))]
    device = next(method.parameters()).device
    inputs = {
        name: torch.stack([s["inputs"][name] for s in samples]).to(device)
        for name in modalities.names
    }
    present = torch.stack([s["present"] for s in samples]).to(device)
    masks = modalities.masks(list(combinations)).to(device)
    was_training = method.training
    method.eval()
    try:
        outputs = method.decode_many(method.encode(inputs, present), masks)
    finally:
        method.train(was_training)
    predictions = [method.task.predict(o.logits).cpu().numpy() for o in outputs]

    classes, ignore = spec.num_classes, spec.ignore_index
    titles = [
        *(f"input: {name}" for name in modalities.names),
        "truth",
        *(f"predicted from\n{modalities.format(c)}" for c in combinations),
    ]
    fig, axes = plt.subplots(
        len(samples), len(titles), figsize=(1.9 * len(titles), 1.9 * len(samples) + 0.9)
    )
    axes = np.asarray(axes).reshape(len(samples), len(titles))
    for row, sample in enumerate(samples):
        cells: list[tuple[np.ndarray | None, str | None]] = []
        for index, name in enumerate(modalities.names):
            has = bool(sample["present"][index])
            cells.append(modality_image(sample["inputs"][name]) if has else (None, None))
        cells.append((colorize(sample["target"].numpy(), classes, ignore), None))
        for mask, prediction in zip(masks, predictions, strict=True):
            usable = bool((present[row] | ~mask).all())
            cells.append((colorize(prediction[row], classes) if usable else None, None))
        for column, (image, cmap) in enumerate(cells):
            ax = axes[row, column]
            ax.set_xticks([])
            ax.set_yticks([])
            if image is None:
                ax.text(0.5, 0.5, "absent", ha="center", va="center", transform=ax.transAxes)
            else:
                shown = ax.imshow(image, cmap=cmap, interpolation="nearest")
                if cmap is not None:  # a single-channel input (depth): its values' colour bar
                    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
                    bar.ax.tick_params(labelsize=6)
                    bar.set_label(f"{titles[column].removeprefix('input: ')} value", fontsize=6)
            if row == 0:
                ax.set_title(titles[column], fontsize=8)
    if classes <= 40:
        names = spec.class_names or tuple(str(i) for i in range(classes))
        colours = palette(classes) / 255.0
        handles = [Patch(color=colours[i], label=names[i]) for i in range(classes)]
        fig.legend(handles=handles, loc="lower center", ncol=min(classes, 11), fontsize=7)
    fig.suptitle(
        f"{run_name or method.config.method} ({method.config.method} on {spec.name}): "
        "inputs, truth and the prediction from each combination",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.08 if classes <= 40 else 0, 1, 0.96))
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def write_masks(prediction: Any, out_dir: str | Path, spec: Any) -> list[Path]:
    """Colour masks of predicted label maps: mask_0000.png ..., labels.npz (labels, confidence,
    abstained, embedding_variance, present) and classes.csv (index, name, colour)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = prediction.labels.cpu().numpy()
    written = []
    for index, label_map in enumerate(labels):
        path = out_dir / f"mask_{index:04d}.png"
        Image.fromarray(colorize(label_map, spec.num_classes)).save(path)
        written.append(path)
    arrays = {
        "labels": labels.astype(np.uint8 if spec.num_classes <= 256 else np.int32),
        "present": prediction.present.cpu().numpy(),
    }
    arrays["confidence"] = prediction.confidence.cpu().numpy()
    arrays["abstained"] = prediction.abstained.cpu().numpy()
    if prediction.embedding_variance is not None:
        arrays["embedding_variance"] = prediction.embedding_variance.cpu().numpy()
    np.savez_compressed(out_dir / "labels.npz", **arrays)
    names = spec.class_names or tuple(str(i) for i in range(spec.num_classes))
    with (out_dir / "classes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "name", "red", "green", "blue"])
        for index, (name, colour) in enumerate(zip(names, palette(spec.num_classes), strict=True)):
            writer.writerow([index, name, *(int(c) for c in colour)])
    return [*written, out_dir / "labels.npz", out_dir / "classes.csv"]


__all__: list[Any] = [
    "colorize",
    "modality_image",
    "palette",
    "prediction_grid",
    "size_colour",
    "write_masks",
]
