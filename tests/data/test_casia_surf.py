"""CASIA-SURF and CeFA layouts, read from tiny generated trees (the real data cannot be shipped),
their preprocessing, their bad-input errors, and one short training run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dmrnet.cli import main
from dmrnet.data import DATASETS, build_data
from dmrnet.data.casia_surf import CasiaSurfOptions, FacePreprocessing, rotate_like_paper
from dmrnet.errors import ConfigError, DataError

SIZE = 24  # generated images are SIZE x SIZE
TINY = {"train_resize": 20, "crop_size": 16, "max_rotation": 30}  # 0.8 * 20 = 16 fits
SURF_FOLDERS = {"rgb": "color", "depth": "depth", "ir": "ir"}


def face_image(label: int, index: int, gray: bool) -> Image.Image:
    """Bona fide (1): a bright blob; attack (0): a flat, darker patch; plus noise."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[:SIZE, :SIZE]
    blob = np.exp(-((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) / (SIZE**2 / 8))
    base = 200 * blob if label == 1 else np.full((SIZE, SIZE), 90.0)
    pixels = np.clip(base + rng.normal(0, 10, (SIZE, SIZE)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="L")
    return image if gray else image.convert("RGB")


def write_surf_tree(root: Path, counts: dict[str, int] | None = None) -> Path:
    """A tiny CASIA-SURF folder: images under <split>/<real|fake>_<i>/{color,depth,ir}/ and the
    three list files with `rgb depth ir label` lines, labels alternating 1 / 0."""
    counts = counts or {"train": 8, "val": 4, "test": 4}
    lists = {
        "train": "train_list.txt",
        "val": "val_private_list.txt",
        "test": "test_private_list.txt",
    }
    folder = root / "CASIA-SURF"
    for split, count in counts.items():
        lines = []
        for index in range(count):
            label = 1 - index % 2
            sample = f"{split}/{'real' if label else 'fake'}_{index:03d}"
            paths = []
            for modality, sub in SURF_FOLDERS.items():
                relative = f"{sample}/{sub}/{index}.jpg"
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                face_image(label, index, gray=modality != "rgb").save(folder / relative)
                paths.append(relative)
            lines.append(" ".join([*paths, str(label)]))
        (folder / lists[split]).write_text("\n".join(lines) + "\n")
    return folder


def write_cefa_tree(root: Path, frames: int = 3) -> Path:
    """A tiny CeFA folder: videos <split>/<race>_<id>_1_1_<pai>/{profile,depth,ir}/NNNN.jpg and
    the 4@1 protocol lists with `video label` lines."""
    folder = root / "CeFA"
    names = {"train": "4@1_train.txt", "val": "4@1_dev_res.txt", "test": "4@1_test_res.txt"}
    for split, list_name in names.items():
        lines = []
        for video_index in range(4):
            label = 1 - video_index % 2
            video = f"{split}/1_{video_index:03d}_1_1_{1 if label else 3}"
            for sub in ("profile", "depth", "ir"):
                for frame in range(frames):
                    path = folder / video / sub / f"{frame + 1:04d}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    face_image(label, frame, gray=sub != "profile").save(path)
            lines.append(f"{video} {label}")
        (folder / list_name).write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def surf_root(tmp_path: Path) -> Path:
    write_surf_tree(tmp_path)
    return tmp_path


def build_surf(root: Path, **options):
    return build_data("casia-surf", {**TINY, **options}, root, 0.25, 0)


def test_both_data_sets_are_registered_as_user_provided():
    assert DATASETS.get("casia-surf").files == ()
    assert DATASETS.get("cefa").files == ()


def test_surf_layout_gives_three_modalities_and_a_pad_spec(surf_root: Path):
    splits = build_surf(surf_root)
    spec = splits.spec
    assert spec.modalities.names == ("rgb", "depth", "ir")
    assert spec.task == "pad" and spec.num_classes == 2
    assert spec.extra == {"bona_fide_class": 1, "threshold": "argmax"}
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 4)
    for dataset in (splits.train, splits.test):
        item = dataset[0]
        assert set(item["inputs"]) == {"rgb", "depth", "ir"}
        for tensor in item["inputs"].values():
            assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
            assert tensor.min() >= -1.0 and tensor.max() <= 1.0
        assert item["present"].all() and int(item["target"]) == 1


def test_modalities_option_selects_a_subset_in_canonical_order(surf_root: Path):
    splits = build_surf(surf_root, modalities=["ir", "rgb"])
    assert splits.spec.modalities.names == ("rgb", "ir")
    assert set(splits.train[0]["inputs"]) == {"rgb", "ir"}


def test_without_a_validation_list_validation_is_a_stratified_part_of_training(surf_root: Path):
    splits = build_surf(surf_root, val_list=None)
    assert (len(splits.train), len(splits.val)) == (6, 2)
    assert sorted(splits.val.targets.tolist()) == [0, 1]


def test_paper_rotation_canvas_and_evaluation_resize():
    image = Image.new("RGB", (144, 144), (255, 255, 255))
    assert rotate_like_paper(image, 0).size == (115, 115)  # int(0.8 * 144)
    assert rotate_like_paper(image, 30).size == (157, 157)  # int(0.8 * 144 * (sin + cos))
    rotated = np.asarray(rotate_like_paper(image, 30))
    assert rotated[0, 0].sum() == 0 and rotated[78, 78].min() == 255  # black corner, white middle
    options = CasiaSurfOptions()
    assert options.train_resize == 144 and options.crop_size == 112
    assert options.max_rotation == 30 and options.flip
    tensors = FacePreprocessing(options, train=False)([image.resize((200, 180))])
    assert tensors[0].shape == (3, 112, 112)
    assert torch.allclose(tensors[0], torch.full_like(tensors[0], (255 - 127.5) / 128))


def test_training_augmentation_is_random_but_shared_by_the_modalities():
    options = CasiaSurfOptions(**TINY)
    gradient = Image.fromarray(np.tile(np.arange(SIZE, dtype=np.uint8) * 10, (SIZE, 1)))
    images = [gradient.convert("RGB")] * 3
    torch.manual_seed(0)
    draws = [FacePreprocessing(options, train=True)(images) for _ in range(6)]
    for tensors in draws:
        assert tensors[0].shape == (3, 16, 16)
        assert torch.equal(tensors[0], tensors[1]) and torch.equal(tensors[0], tensors[2])
    assert any(not torch.equal(draws[0][0], other[0]) for other in draws[1:])


def test_crop_larger_than_the_rotation_canvas_is_rejected(surf_root: Path):
    with pytest.raises(ConfigError, match="crop_size"):
        build_surf(surf_root, train_resize=20, crop_size=18)


# -- bad input ---------------------------------------------------------------------------------


def edit_train_list(root: Path, line: str) -> Path:
    path = root / "CASIA-SURF" / "train_list.txt"
    path.write_text(path.read_text() + line + "\n")
    return path


def test_list_line_with_the_wrong_number_of_fields(surf_root: Path):
    path = edit_train_list(surf_root, "train/a.jpg train/b.jpg 1")
    with pytest.raises(DataError, match=rf"{path}:9: 3 fields, expected 4"):
        build_surf(surf_root)


def test_label_other_than_0_or_1(surf_root: Path):
    first = (surf_root / "CASIA-SURF" / "train_list.txt").read_text().splitlines()[0]
    path = edit_train_list(surf_root, first.rsplit(" ", 1)[0] + " 2")
    with pytest.raises(DataError, match=rf"{path}:9: label '2' is not 0 \(attack\) or 1"):
        build_surf(surf_root)


@pytest.mark.parametrize(
    ("path", "message"),
    [("../outside.jpg", "leaves the data set folder"), ("/etc/hostname", "is absolute")],
)
def test_paths_escaping_the_data_set_folder_are_rejected(surf_root: Path, path, message):
    edit_train_list(surf_root, f"{path} train/x.jpg train/y.jpg 1")
    with pytest.raises(DataError, match=message):
        build_surf(surf_root)


def test_missing_image_is_named_before_training_and_no_run_is_left(surf_root, tmp_path, capsys):
    missing = surf_root / "CASIA-SURF" / "test" / "fake_001" / "ir" / "1.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=rf"test_private_list.txt:2: image file {missing} does"):
        build_surf(surf_root)
    config = tiny_train_config(tmp_path)
    run_dir = tmp_path / "run"
    assert (
        main(["train", str(config), "--run-dir", str(run_dir), "--data-root", str(surf_root)]) == 2
    )
    assert str(missing) in capsys.readouterr().err
    assert not run_dir.exists()


def test_image_that_cannot_be_decoded(surf_root: Path):
    broken = surf_root / "CASIA-SURF" / "val" / "real_000" / "depth" / "0.jpg"
    broken.write_bytes(b"this is not a JPEG file")
    with pytest.raises(DataError, match=rf"{broken} is not a readable image"):
        build_surf(surf_root)
    # Checking only that files exist defers the error to loading, which names the file too.
    splits = build_surf(surf_root, check_images="exists")
    with pytest.raises(DataError, match=rf"cannot decode image {broken}"):
        splits.val[0]


def test_relative_directory_without_a_data_root(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DMRNET_DATA", raising=False)
    with pytest.raises(DataError, match="no data root is set"):
        build_data("casia-surf", {}, None, 0.1, 0)


# -- CeFA --------------------------------------------------------------------------------------


def test_cefa_protocol_lists_expand_videos_into_frames(tmp_path: Path):
    write_cefa_tree(tmp_path)
    splits = build_data("cefa", {**TINY, "protocol": "4@1"}, tmp_path, 0.1, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 12, 12)
    assert splits.train.targets.tolist() == [1] * 3 + [0] * 3 + [1] * 3 + [0] * 3
    sample = splits.train.samples[0]
    assert [p.parent.name for p in sample.paths] == ["profile", "depth", "ir"]
    assert len({p.name for p in sample.paths}) == 1  # the same frame in every modality
    assert splits.test[5]["inputs"]["ir"].shape == (3, 16, 16)
    every_other = build_data("cefa", {**TINY, "frame_step": 2}, tmp_path, 0.1, 0)
    assert len(every_other.train) == 8


def test_cefa_frame_missing_in_one_modality_is_named(tmp_path: Path):
    folder = write_cefa_tree(tmp_path)
    missing = folder / "val" / "1_001_1_1_3" / "depth" / "0002.jpg"
    missing.unlink()
    with pytest.raises(
        DataError, match=rf"4@1_dev_res.txt:2 \(frame 0002.jpg\): image file {missing}"
    ):
        build_data("cefa", TINY, tmp_path, 0.1, 0)
    with pytest.raises(ConfigError, match="data.options.protocol: a protocol looks like 4@1"):
        build_data("cefa", {**TINY, "protocol": "four"}, tmp_path, 0.1, 0)


# -- end to end --------------------------------------------------------------------------------


def tiny_train_config(directory: Path, threshold: str = "eer") -> Path:
    config = {
        "name": "surf-fixture",
        "seed": 0,
        "data": {"name": "casia-surf", "options": {**TINY, "threshold": threshold}},
        "model": {
            "method": "surf-dmrnet",
            "depth": 10,
            "width": 8,
            "embed_dim": 16,
            "hcr": {
                "rule": "fixed",
                "combinations": ["rgb", "rgb+ir", "ir"],
                "weight": 0.7,
                "warmup_epochs": 1,
            },
        },
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "optimizer": {"name": "sgd", "lr": 0.001, "nesterov": True, "weight_decay": 5e-4},
            "scheduler": {"name": "multistep", "milestones": [1], "warmup_epochs": 0},
            "progress_bar": False,
        },
        "eval": {"batch_size": 4},
    }
    path = directory / "surf.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_one_short_epoch_end_to_end_through_the_cli(surf_root: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    config = tiny_train_config(tmp_path, threshold="eer")
    argv = ["train", str(config), "--run-dir", str(run_dir), "--data-root", str(surf_root)]
    assert main(argv) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "casia-surf" and results["metric"] == "acer"
    assert list(results["combinations"]) == [
        "rgb",
        "depth",
        "ir",
        "rgb+depth",
        "rgb+ir",
        "depth+ir",
        "rgb+depth+ir",
    ]
    assert set(results["metrics"]) == {"acer", "apcer", "bpcer", "hter", "accuracy"}
    assert results["metrics"]["acer"]["higher_is_better"] is False
    for name, acer in results["combinations"].items():
        apcer = results["metrics"]["apcer"]["combinations"][name]
        bpcer = results["metrics"]["bpcer"]["combinations"][name]
        assert acer == pytest.approx((apcer + bpcer) / 2)
    # threshold: eer -> one threshold per combination, calibrated on the validation list.
    assert results["calibration"]["split"] == "validation"
    assert set(results["calibration"]["decision_threshold"]) == set(results["combinations"])
    assert results["samples"]["rgb+depth+ir"] == 4
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
