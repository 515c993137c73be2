"""Pictures of dense predictions: palette, colour masks, the prediction grid, predict's masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dmrnet.api import Prediction
from dmrnet.data.base import DataSpec
from dmrnet.data.segmentation import SegmentationArrays
from dmrnet.methods import METHODS
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import ClassificationTask, SegmentationTask
from dmrnet.visualize import IGNORE_COLOUR, colorize, modality_image, palette, write_masks

MODALITIES = ModalitySet(("rgb", "depth"))
SPEC = DataSpec(
    name="tiny",
    modalities=MODALITIES,
    input_shapes={"rgb": (3, 32, 32), "depth": (1, 32, 32)},
    task="segmentation",
    num_classes=4,
    class_names=("background", "a", "b", "c"),
    ignore_index=255,
)


def test_palette_colours_are_distinct_and_background_is_black():
    colours = palette(40)
    assert colours.shape == (40, 3) and colours.dtype == np.uint8
    assert tuple(colours[0]) == (0, 0, 0)
    assert len({tuple(c) for c in colours}) == 40


def test_colorize_paints_classes_and_greys_out_the_ignore_index():
    labels = np.array([[0, 1], [2, 255]])
    image = colorize(labels, 3)
    assert image.shape == (2, 2, 3)
    assert tuple(image[0, 1]) == tuple(palette(3)[1])
    assert tuple(image[1, 1]) == IGNORE_COLOUR


def test_palette_tells_apart_the_classes_of_small_datasets():
    # digits-rgbd (11 classes): the VOC map gave classes 1, 8 and 9 near-identical reds (its
    # closest pair of 11 colours: 64 apart; here above 70, and above 35 for NYUv2's 41).
    for count, apart in ((12, 70), (41, 35)):
        colours = palette(count).astype(float)
        distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
        assert distances[~np.eye(count, dtype=bool)].min() > apart


def test_modality_images_colour_is_scaled_and_one_channel_keeps_its_units():
    colour, cmap = modality_image(torch.rand(3, 5, 6) * 40 - 7)
    assert colour.shape == (5, 6, 3) and cmap is None
    assert colour.min() == 0.0 and colour.max() == 1.0
    depth, cmap = modality_image(torch.full((1, 5, 6), 2.0))
    assert depth.shape == (5, 6) and cmap == "viridis" and depth.max() == 2.0  # colour bar units


def test_prediction_grid_shows_modalities_truth_and_every_combination(tmp_path: Path):
    task = SegmentationTask.from_spec(SPEC)
    config = METHODS.get("moddrop-seg").config_class(
        encoder={"name": "resnet", "options": {"depth": 10, "width": 8}},
        embed_dim=8,
        decoder_channels=[8, 8, 8],
        decoder_blocks=0,
        context_bins=[1],
    )
    method = METHODS.get("moddrop-seg")(config, SPEC, task)
    rng = np.random.default_rng(0)
    present = np.ones((5, 2), dtype=bool)
    present[1, 1] = False  # one sample without depth: its depth cells read "absent"
    dataset = SegmentationArrays(
        MODALITIES,
        {
            "rgb": rng.random((5, 3, 32, 32)).astype(np.float32),
            "depth": rng.random((5, 1, 32, 32)).astype(np.float32),
        },
        rng.integers(0, 4, (5, 32, 32)),
        4,
        ignore_index=255,
        present=present,
    )
    path = task.visualize(method, dataset, MODALITIES.combinations(), tmp_path / "grid.png")
    assert path == tmp_path / "grid.png" and path.is_file()
    width, height = Image.open(path).size
    assert width > height  # 6 columns (2 modalities, truth, 3 combinations), 4 rows
    assert method.training  # the grid restores the training mode it found
    assert ClassificationTask(3).visualize(method, dataset, [], tmp_path / "x.png") is None


def test_write_masks_writes_a_png_per_sample_labels_and_legend(tmp_path: Path):
    labels = torch.tensor([[[0, 1], [2, 3]], [[3, 3], [1, 0]]])
    prediction = Prediction(
        labels=labels,
        probabilities=torch.rand(2, 4, 2, 2),
        embedding_variance=torch.tensor([0.5, 0.7]),
        present=torch.tensor([[True, True], [True, False]]),
        confidence=torch.rand(2, 2, 2),
        abstained=torch.zeros(2, 2, 2, dtype=torch.bool),
    )
    files = write_masks(prediction, tmp_path / "out", SPEC)
    assert [f.name for f in files] == [
        "mask_0000.png",
        "mask_0001.png",
        "labels.npz",
        "classes.csv",
    ]
    mask = np.asarray(Image.open(tmp_path / "out" / "mask_0001.png"))
    assert np.array_equal(mask, colorize(labels[1].numpy(), 4))
    with np.load(tmp_path / "out" / "labels.npz") as saved:
        assert np.array_equal(saved["labels"], labels.numpy())
        assert saved["embedding_variance"].tolist() == [0.5, 0.699999988079071]
    rows = (tmp_path / "out" / "classes.csv").read_text().splitlines()
    assert rows[0] == "index,name,red,green,blue" and rows[2].startswith("1,a,")


def test_results_plot_starts_at_zero_labels_values_and_counts_and_names_the_run(
    tmp_path: Path, monkeypatch
):
    import matplotlib.pyplot as plt

    from dmrnet.evaluate import CombinationResult, EvaluationReport, plot_report
    from dmrnet.visualize import size_colour

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    results = [
        CombinationResult((0,), "rgb", 71, {"accuracy": 0.64}),
        CombinationResult((1,), "depth", 112, {"accuracy": 0.9}),
        CombinationResult((0, 1), "rgb+depth", 71, {"accuracy": 0.9775}),
    ]
    report = EvaluationReport(
        "tiny", "dmrnet", "test", MODALITIES, "accuracy", {"accuracy": True}, results
    )
    (tmp_path / "my-run").mkdir()
    plot_report(report, tmp_path / "my-run" / "results.png")
    (ax,) = figures[0].axes
    assert ax.get_xlim()[0] == 0.0  # a 64% bar is drawn about 2/3 as long as a 97.75% one
    labels = [text.get_text() for text in ax.texts]
    assert labels == [" 64.0% (n=71)", " 90.0% (n=112)", " 97.8% (n=71)"]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["1 modality", "2 modalities", "mean 83.9%"]
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.bbox.x1  # beside the bars, not on them
    assert ax.patches[0].get_facecolor() == size_colour(1)
    assert ax.get_title().startswith("my-run: dmrnet on tiny")
