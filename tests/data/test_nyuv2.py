"""NYUv2 from tiny fixtures in both layouts (labelled .mat via h5py, ESANet's prepared folder),
and one short training epoch end to end: train, evaluate (with the prediction grid), predict."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from dmrnet.cli import main
from dmrnet.config import parse_config
from dmrnet.data import build_data
from dmrnet.data.nyuv2 import IGNORE_INDEX
from dmrnet.errors import DataError
from dmrnet.runs import train

HEIGHT, WIDTH, COUNT = 12, 16, 6


def write_mat_fixture(folder: Path, drop_key: str | None = None) -> dict[str, Path]:
    """nyu_depth_v2_labeled.mat (HDF5, MATLAB's column-major layout), splits.mat and
    classMapping40.mat with the keys of the real files."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (COUNT, HEIGHT, WIDTH, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 5.0, (COUNT, HEIGHT, WIDTH)).astype(np.float32)
    raw = depths.copy()
    raw[:, 0, :] = 0.0  # holes
    raw[0, 1, 1] = np.nan
    labels = rng.integers(0, 895, (COUNT, HEIGHT, WIDTH)).astype(np.uint16)
    labels[:, :, 0] = 0  # unlabelled
    datasets = {
        "images": images.transpose(0, 3, 2, 1),  # (N, 3, W, H) as h5py sees MATLAB's arrays
        "depths": depths.transpose(0, 2, 1),
        "rawDepths": raw.transpose(0, 2, 1),
        "labels": labels.transpose(0, 2, 1),
    }
    path = folder / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w") as handle:
        for key, values in datasets.items():
            if key != drop_key:
                handle.create_dataset(key, data=values)
    mapping = (np.arange(894) % 40 + 1).reshape(1, -1)
    scipy.io.savemat(folder / "classMapping40.mat", {"mapClass": mapping})
    scipy.io.savemat(
        folder / "splits.mat",
        {"trainNdxs": np.array([[1], [2], [3], [4]]), "testNdxs": np.array([[5], [6]])},
    )
    return {
        "path": path,
        "splits": folder / "splits.mat",
        "class_mapping": folder / "classMapping40.mat",
        "images": images,
        "depths": depths,
        "labels": labels,
        "mapping": mapping,
    }


def mat_options(files: dict, **extra) -> dict:
    options = {k: str(files[k]) for k in ("path", "splits", "class_mapping")}
    return {**options, "augment": False, **extra}


def test_mat_layout_reads_the_official_split_and_maps_to_40_classes(tmp_path):
    files = write_mat_fixture(tmp_path)
    data = build_data("nyuv2", mat_options(files), None, 0.25, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 2)
    spec = data.spec
    assert spec.num_classes == 40 and spec.class_names[0] == "wall"
    assert spec.input_shapes == {"rgb": (3, HEIGHT, WIDTH), "depth": (1, HEIGHT, WIDTH)}
    sample = data.test[1]  # image 6 of the file
    rgb = (sample["inputs"]["rgb"].numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(rgb.transpose(1, 2, 0), files["images"][5])  # orientation kept
    assert np.allclose(sample["inputs"]["depth"][0].numpy(), files["depths"][5])
    raw = files["labels"][5].astype(np.int64)
    expected = np.where(raw == 0, IGNORE_INDEX, np.concatenate([[0], files["mapping"][0]])[raw] - 1)
    assert np.array_equal(sample["target"].numpy(), expected)
    assert len(spec.extra["class_weights"]) == 40


def test_raw_depth_nan_and_zeros_are_holes(tmp_path):
    files = write_mat_fixture(tmp_path)
    data = build_data("nyuv2", mat_options(files, depth="raw"), None, 0.25, seed=0)
    samples = [data.train[i] for i in range(len(data.train))] + [data.val[0]]
    depth = np.stack([s["inputs"]["depth"].numpy() for s in samples])
    assert np.isfinite(depth).all() and (depth[:, 0, 0, :] == 0).all()


@pytest.mark.parametrize("key", ["labels", "depths"])
def test_a_mat_file_without_an_expected_key_names_file_and_key(tmp_path, key):
    files = write_mat_fixture(tmp_path, drop_key=key)
    with pytest.raises(DataError, match=rf"nyu_depth_v2_labeled\.mat: key '{key}' is missing"):
        build_data("nyuv2", mat_options(files), None, 0.25, seed=0)


def test_split_and_mapping_files_without_their_keys_are_named(tmp_path):
    files = write_mat_fixture(tmp_path)
    scipy.io.savemat(files["splits"], {"train": np.array([[1]])})
    with pytest.raises(DataError, match=r"splits\.mat: key 'trainNdxs' is missing"):
        build_data("nyuv2", mat_options(files), None, 0.25, seed=0)
    files = write_mat_fixture(tmp_path)
    scipy.io.savemat(files["class_mapping"], {"names": np.array([[1]])})
    with pytest.raises(DataError, match=r"classMapping40\.mat: key 'mapClass' is missing"):
        build_data("nyuv2", mat_options(files), None, 0.25, seed=0)
    with pytest.raises(DataError, match="not found .*data.options.path"):
        build_data("nyuv2", {"path": str(tmp_path / "missing.mat")}, None, 0.25, seed=0)


def write_prepared_fixture(root: Path, bad_depth_size: bool = False) -> None:
    rng = np.random.default_rng(1)
    for split, ids in (("train", ["0001", "0002", "0003"]), ("test", ["0004"])):
        (root / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for folder in ("rgb", "depth", "labels_40"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            size = (HEIGHT, WIDTH + 2) if bad_depth_size and image_id == "0002" else (HEIGHT, WIDTH)
            depth = rng.integers(0, 5000, size, dtype=np.uint16)
            labels = rng.integers(0, 41, (HEIGHT, WIDTH), dtype=np.uint8)
            Image.fromarray(rgb).save(root / split / "rgb" / f"{image_id}.png")
            Image.fromarray(depth).save(root / split / "depth" / f"{image_id}.png")
            Image.fromarray(labels).save(root / split / "labels_40" / f"{image_id}.png")


def test_prepared_layout_and_per_sample_size_mismatch(tmp_path):
    write_prepared_fixture(tmp_path / "nyuv2")
    options = {"layout": "prepared", "path": str(tmp_path / "nyuv2"), "augment": True}
    data = build_data("nyuv2", options, None, 0.34, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (2, 1, 1)
    label_file = np.asarray(Image.open(tmp_path / "nyuv2" / "test" / "labels_40" / "0004.png"))
    expected = np.where(label_file == 0, IGNORE_INDEX, label_file.astype(np.int64) - 1)
    assert np.array_equal(data.test[0]["target"].numpy(), expected)
    depth_file = np.asarray(Image.open(tmp_path / "nyuv2" / "test" / "depth" / "0004.png"))
    assert np.allclose(data.test[0]["inputs"]["depth"][0].numpy(), depth_file / 1000.0)
    assert data.train[0]["inputs"]["rgb"].shape == (3, HEIGHT, WIDTH)  # augmented, same size
    write_prepared_fixture(tmp_path / "bad", bad_depth_size=True)
    with pytest.raises(DataError, match=r"'0002'.*depth.*0002\.png 12x18"):
        build_data("nyuv2", {"layout": "prepared", "path": str(tmp_path / "bad")}, None, 0.3, 0)


def test_one_short_epoch_end_to_end_with_pictures_and_colour_masks(tmp_path, capsys):
    files = write_mat_fixture(tmp_path)
    config = parse_config(
        {
            "name": "tiny-nyuv2",
            "data": {"name": "nyuv2", "val_fraction": 0.25, "options": mat_options(files)},
            "model": {
                "method": "dmrnet-seg",
                "encoder": {"name": "resnet", "options": {"depth": 10, "width": 8}},
                "embed_dim": 16,
                "decoder_channels": [16, 8, 8],
                "decoder_blocks": 1,
                "hcr": {"rule": "incomplete", "weight": 0.5, "warmup_epochs": 1},
            },
            "train": {"epochs": 1, "batch_size": 2, "progress_bar": False},
            "eval": {"batch_size": 2},
        }
    )
    run_dir = tmp_path / "run"
    report = train(config, run_dir)
    assert report is not None and report.metric == "miou"
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["combinations"]) == {"rgb", "depth", "rgb+depth"}
    assert len(results["per_class"]["iou"]["classes"]) == 40
    assert (run_dir / "predictions.png").is_file()
    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "eval")]) == 0
    grid = Image.open(tmp_path / "eval" / "predictions.png")
    assert grid.size[0] > grid.size[1] / 2
    rgb = files["images"][:2].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    np.savez(tmp_path / "input.npz", rgb=rgb)  # depth missing: predict from rgb alone
    out = tmp_path / "masks"
    assert main(["predict", str(run_dir), str(tmp_path / "input.npz"), "--out", str(out)]) == 0
    assert "2 predictions written" in capsys.readouterr().out
    mask = np.asarray(Image.open(out / "mask_0001.png"))
    assert mask.shape == (HEIGHT, WIDTH, 3)
    with np.load(out / "labels.npz") as saved:
        assert saved["labels"].shape == (2, HEIGHT, WIDTH)
        assert saved["present"].tolist() == [[True, False], [True, False]]
    assert (out / "classes.csv").read_text().splitlines()[1].startswith("0,wall,")
