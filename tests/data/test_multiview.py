from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from dmrnet.data import DataSplits, build_data
from dmrnet.errors import ConfigError, DataError

NUM_SAMPLES = 40
LABELS = np.repeat([3, 5, 7, 9], 10)  # arbitrary ids, 10 samples each


def views(count: int = NUM_SAMPLES, labels: np.ndarray = LABELS) -> dict[str, np.ndarray]:
    """Two views; column 0 of view "a" holds the original label so tests can follow samples."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(count, 3))
    a[:, 0] = labels
    return {"a": a, "b": rng.normal(size=(count, 5))}


def build(path: Path, val_fraction: float = 0.25, seed: int = 0, **options) -> DataSplits:
    return build_data("multiview", {"path": str(path), **options}, None, val_fraction, seed)


def all_rows(splits: DataSplits) -> list:
    return [splits.train, splits.val, splits.test]


def assert_targets_follow_labels(splits: DataSplits, classes: list) -> None:
    """Every sample's class is the rank of its original label, whatever split it landed in."""
    for part in all_rows(splits):
        original = part.inputs["a"][:, 0].long().tolist()
        assert part.targets.tolist() == [classes.index(label) for label in original]


def test_mat_with_separate_view_keys(tmp_path: Path) -> None:
    path = tmp_path / "two_views.mat"
    scipy.io.savemat(path, {**views(), "y": LABELS})

    splits = build(path)

    spec = splits.spec
    assert spec.modalities.names == ("a", "b")
    assert dict(spec.input_shapes) == {"a": (3,), "b": (5,)}
    assert spec.num_classes == 4
    assert spec.class_names == ("3", "5", "7", "9")
    assert [len(p) for p in all_rows(splits)] == [24, 8, 8]
    assert torch.bincount(splits.test.targets).tolist() == [2, 2, 2, 2]
    assert_targets_follow_labels(splits, [3, 5, 7, 9])
    assert set(spec.input_stats) == {"a", "b"}


def test_label_key_is_auto_detected_or_given(tmp_path: Path) -> None:
    path = tmp_path / "gt.mat"
    scipy.io.savemat(path, {**views(), "gt": LABELS, "target": LABELS})
    assert build(path).spec.modalities.names == ("a", "b", "target")
    assert build(path, label_key="target").spec.modalities.names == ("a", "b", "gt")
    assert build(path, views=["b"]).spec.modalities.names == ("b",)


def test_mat_with_cell_array_of_views(tmp_path: Path) -> None:
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = views()["a"], views()["b"]
    path = tmp_path / "cells.mat"
    scipy.io.savemat(path, {"X": cells, "Y": LABELS})

    unnamed = build(path, cell_key="X")
    assert unnamed.spec.modalities.names == ("view0", "view1")
    assert dict(unnamed.spec.input_shapes) == {"view0": (3,), "view1": (5,)}
    named = build(path, cell_key="X", views=["a", "b"])
    assert_targets_follow_labels(named, [3, 5, 7, 9])
    with pytest.raises(DataError, match=r"holds 2 views but data\.options\.views names 3"):
        build(path, cell_key="X", views=["a", "b", "c"])


def test_cell_array_without_cell_key_gets_a_hint(tmp_path: Path) -> None:
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = views()["a"], views()["b"]
    path = tmp_path / "cells.mat"
    scipy.io.savemat(path, {"X": cells, "Y": LABELS})
    with pytest.raises(DataError, match=r"set data\.options\.cell_key: X"):
        build(path)


def test_views_stored_as_columns_are_transposed(tmp_path: Path) -> None:
    path = tmp_path / "columns.mat"
    scipy.io.savemat(path, {name: values.T for name, values in views().items()} | {"y": LABELS})
    splits = build(path)
    assert dict(splits.spec.input_shapes) == {"a": (3,), "b": (5,)}
    assert_targets_follow_labels(splits, [3, 5, 7, 9])


def test_square_view_is_read_as_rows_of_samples(tmp_path: Path) -> None:
    square = np.zeros((NUM_SAMPLES, NUM_SAMPLES))
    square[:, 0] = LABELS
    path = tmp_path / "square.mat"
    scipy.io.savemat(path, {"a": square, "y": LABELS})
    assert_targets_follow_labels(build(path), [3, 5, 7, 9])


def test_npz_with_train_and_test_keys_keeps_the_files_split(tmp_path: Path) -> None:
    train, test = views(), views(count=8, labels=np.repeat([3, 5, 7, 9], 2))
    path = tmp_path / "split.npz"
    np.savez(
        path,
        a_train=train["a"],
        a_test=test["a"],
        b_train=train["b"],
        b_test=test["b"],
        y_train=LABELS,
        y_test=np.repeat([3, 5, 7, 9], 2),
    )
    splits = build(path)
    assert splits.spec.modalities.names == ("a", "b")
    assert len(splits.train) + len(splits.val) == NUM_SAMPLES
    assert torch.equal(splits.test.inputs["a"], torch.as_tensor(test["a"], dtype=torch.float32))
    assert_targets_follow_labels(splits, [3, 5, 7, 9])


def test_npz_without_split_gets_a_seeded_test_split(tmp_path: Path) -> None:
    path = tmp_path / "whole.npz"
    np.savez(path, **views(), labels=LABELS)
    first = build(path, seed=0)
    other_run_seed = build(path, seed=1)
    other_split_seed = build(path, seed=0, split_seed=5)
    assert torch.equal(first.test.inputs["b"], other_run_seed.test.inputs["b"])
    assert not torch.equal(first.val.inputs["b"], other_run_seed.val.inputs["b"])
    assert not torch.equal(first.test.inputs["b"], other_split_seed.test.inputs["b"])
    assert len(build(path, test_fraction=0.5).test) == 20


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_groups_columns_by_view_prefix_and_maps_named_labels(tmp_path: Path) -> None:
    names = np.repeat(["dog", "cat"], 10)
    data = views(count=20, labels=np.zeros(20))
    split = ["test" if i % 5 == 0 else "train" for i in range(20)]
    rows = [[names[i], split[i], *data["a"][i], *data["b"][i, :2]] for i in range(20)]
    path = write_csv(
        tmp_path / "features.csv", ["label", "split", "a.0", "a.1", "a.2", "b.x", "b.y"], rows
    )
    splits = build(path)
    assert splits.spec.modalities.names == ("a", "b")
    assert dict(splits.spec.input_shapes) == {"a": (3,), "b": (2,)}
    assert splits.spec.class_names == ("cat", "dog")
    assert len(splits.test) == 4
    assert splits.test.targets.tolist() == [1, 1, 0, 0]


def test_csv_empty_cells_mark_a_missing_view_with_nan_means_missing(tmp_path: Path) -> None:
    rows = [[label, i, i + 0.5, "" if i == 3 else 1.0] for i, label in enumerate(LABELS)]
    path = write_csv(tmp_path / "gaps.csv", ["label", "a.0", "a.1", "b.0"], rows)
    with pytest.raises(DataError, match=r"gaps\.csv: modality 'b' has NaN"):
        build(path)
    splits = build(path, nan_means_missing=True)
    present = torch.cat([p.present for p in all_rows(splits)])
    assert present.sum(0).tolist() == [NUM_SAMPLES, NUM_SAMPLES - 1]


def test_csv_bad_cell_names_line_and_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", ["label", "a.0"], [[1, 0.5], [2, "oops"]])
    with pytest.raises(DataError, match=r"line 3: column 'a.0' holds 'oops'"):
        build(path)


def test_present_key_marks_missing_views(tmp_path: Path) -> None:
    present = np.ones((NUM_SAMPLES, 2))
    present[::4, 1] = 0
    data = views()
    data["b"][::4] = np.nan  # values of a missing view are never looked at
    path = tmp_path / "present.mat"
    scipy.io.savemat(path, {**data, "y": LABELS, "present": present})
    splits = build(path, present_key="present")
    assert splits.spec.modalities.names == ("a", "b")
    rows = torch.cat([p.present for p in all_rows(splits)])
    assert rows.sum(0).tolist() == [NUM_SAMPLES, NUM_SAMPLES - 10]
    for part in all_rows(splits):
        assert torch.all(part.inputs["b"][~part.present[:, 1]] == 0)


def test_present_row_with_no_view_is_rejected(tmp_path: Path) -> None:
    present = np.ones((NUM_SAMPLES, 2))
    present[6] = 0
    path = tmp_path / "empty_row.npz"
    np.savez(path, **views(), y=LABELS, present=present)
    with pytest.raises(DataError, match=r"empty_row\.npz: sample 6 has no modality present"):
        build(path, present_key="present")


def test_all_nan_rows_are_missing_with_nan_means_missing(tmp_path: Path) -> None:
    data = views()
    data["a"][[1, 2]] = np.nan
    data["b"][5, 0] = np.nan  # a partly NaN row is still an error
    path = tmp_path / "nan.npz"
    np.savez(path, **data, y=LABELS)
    with pytest.raises(DataError, match=r"nan\.npz: modality 'b' has NaN or inf values .*5"):
        build(path, nan_means_missing=True)
    data["b"][5, 0] = 0.0
    np.savez(path, **data, y=LABELS)
    splits = build(path, nan_means_missing=True)
    rows = torch.cat([p.present for p in all_rows(splits)])
    assert rows.sum(0).tolist() == [NUM_SAMPLES - 2, NUM_SAMPLES]


def test_nan_in_a_view_is_an_error_naming_file_and_view(tmp_path: Path) -> None:
    data = views()
    data["a"][7, 1] = np.nan
    path = tmp_path / "nan.mat"
    scipy.io.savemat(path, {**data, "y": LABELS})
    with pytest.raises(DataError, match=r"nan\.mat: modality 'a' has NaN or inf values .*7"):
        build(path)


def test_view_with_another_sample_count_names_file_and_view(tmp_path: Path) -> None:
    path = tmp_path / "short.npz"
    np.savez(path, a=views()["a"], b=views()["b"][:-3], y=LABELS)
    with pytest.raises(
        DataError, match=r"short\.npz: view 'b' has shape \(37, 5\) but there are 40"
    ):
        build(path)


def test_unknown_option_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.options\.lable_key: unknown option"):
        build(tmp_path / "x.mat", lable_key="y")


def test_unknown_view_name_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "two_views.npz"
    np.savez(path, **views(), y=LABELS)
    with pytest.raises(DataError, match=r"no key 'c' \(view 'c'\)"):
        build(path, views=["a", "c"])


def test_fractional_labels_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "float_labels.npz"
    np.savez(path, **views(), y=LABELS + 0.5)
    with pytest.raises(DataError, match="is not a whole number"):
        build(path)


def test_mat_cell_array_of_label_names(tmp_path: Path) -> None:
    names = np.array(["zebra"] * 20 + ["ant"] * 20, dtype=object)
    path = tmp_path / "names.mat"
    scipy.io.savemat(path, {**views(), "labels": names})
    splits = build(path)
    assert splits.spec.class_names == ("ant", "zebra")


def add_mat_v73_header(path: Path) -> None:
    """MATLAB's 128-byte header in the HDF5 user block: what makes scipy say "v7.3"."""
    with open(path, "r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM")


def test_mat_v73_file_is_read_through_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:
        # MATLAB writes column-major arrays: an (N, D) matrix is stored as (D, N).
        handle["a"] = views()["a"].T
        handle["y"] = LABELS[None, :].astype(np.float64)
    add_mat_v73_header(path)
    splits = build(path)
    assert dict(splits.spec.input_shapes) == {"a": (3,)}
    assert_targets_follow_labels(splits, [3, 5, 7, 9])


def test_mat_v73_cell_array_of_views(tmp_path: Path) -> None:
    path = tmp_path / "v73_cells.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        refs["a"], refs["b"] = views()["a"].T, views()["b"].T
        cells = handle.create_dataset("X", (2, 1), dtype=h5py.ref_dtype)  # MATLAB (1, 2)
        cells[0, 0], cells[1, 0] = refs["a"].ref, refs["b"].ref
        handle["Y"] = LABELS[None, :].astype(np.float64)
    add_mat_v73_header(path)
    splits = build(path, cell_key="X", views=["a", "b"])
    assert dict(splits.spec.input_shapes) == {"a": (3,), "b": (5,)}
    assert_targets_follow_labels(splits, [3, 5, 7, 9])


def test_missing_and_unsupported_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        build(tmp_path / "absent.mat")
    other = tmp_path / "features.parquet"
    other.write_bytes(b"")
    with pytest.raises(DataError, match=r"unsupported file type '\.parquet'"):
        build(other)
