"""dmrnet predict and dmrnet.load: file formats, single samples, batches, devices, bad inputs."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import dmrnet
from dmrnet.cli import main
from dmrnet.errors import DataError
from dmrnet.inputs import read_inputs


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def views(run: Path) -> dict[str, np.ndarray]:
    with np.load(run.parent / "views.npz") as data:
        return {k: data[k][:12].astype(np.float32) for k in ("a", "b", "c")}


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def write_csv(path: Path, views: dict[str, np.ndarray], missing: dict[str, list[int]]) -> Path:
    """The multiview CSV layout: label, <view>.<feature>...; a missing view's cells are empty."""
    header = ["label"] + [f"{v}.f{j}" for v, x in views.items() for j in range(x.shape[1])]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in range(next(iter(views.values())).shape[0]):
            cells = ["7"]
            for view, values in views.items():
                gone = row in missing.get(view, [])
                cells += ["" if gone else repr(float(v)) for v in values[row]]
            writer.writerow(cells)
    return path


def test_csv_input_predicts_like_the_api_with_empty_cells_as_missing(run, views, tmp_path, capsys):
    path = write_csv(tmp_path / "in.csv", {"a": views["a"], "c": views["c"]}, {"c": [3]})
    assert main(["predict", str(run), str(path), "--batch-size", "5"]) == 0
    rows = rows_of(capsys.readouterr().out)
    c = views["c"].copy()
    c[3] = np.nan
    expected = dmrnet.load(run).predict({"a": views["a"], "c": c})
    assert [r["prediction"] for r in rows] == expected.names()
    assert rows[0]["modalities"] == "a+c" and rows[3]["modalities"] == "a"
    chosen = expected.probabilities.max(1).values
    assert [float(r["confidence"]) for r in rows] == pytest.approx(chosen.tolist(), abs=1e-4)


def test_probabilities_give_every_class_by_name(run, views, tmp_path, capsys):
    path = tmp_path / "in.npz"
    np.savez(path, a=views["a"], b=views["b"])
    assert main(["predict", str(run), str(path), "--probabilities"]) == 0
    rows = rows_of(capsys.readouterr().out)
    classes = dmrnet.load(run).class_names
    assert classes is not None and list(rows[0])[-4:] == [f"p({k})" for k in classes]
    for row in rows:
        probabilities = [float(row[f"p({k})"]) for k in classes]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
        assert row["prediction"] == classes[int(np.argmax(probabilities))]


def test_a_one_dimensional_sample_is_one_sample(run, views, tmp_path, capsys):
    model = dmrnet.load(run)
    single = model.predict({"a": views["a"][0], "c": views["c"][0]})
    batch = model.predict({"a": views["a"][:1], "c": views["c"][:1]})
    assert single.labels.shape == (1,) and torch.allclose(single.probabilities, batch.probabilities)
    path = tmp_path / "one.npz"
    np.savez(path, a=views["a"][0])
    assert main(["predict", str(run), str(path)]) == 0
    assert len(rows_of(capsys.readouterr().out)) == 1


def test_batch_size_does_not_change_predictions(run, views):
    model = dmrnet.load(run)
    reference = model.predict(views)
    for size in (1, 5, 100):
        assert torch.allclose(model.predict(views, batch_size=size).probabilities,
                              reference.probabilities, atol=1e-6)  # fmt: skip


def test_files_are_read_and_predicted_one_batch_at_a_time(run, views, tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, a=views["a"], b=views["b"], extra=np.zeros(3))
    shapes = dmrnet.load(run).spec.input_shapes
    source = read_inputs(path, shapes, batch_size=5)
    assert source.ignored == ["extra"]
    sizes = [batch["a"].shape[0] for batch in source.batches]
    assert sizes == [5, 5, 2]  # never the whole file at once
    csv_source = read_inputs(write_csv(tmp_path / "in.csv", views, {}), shapes, batch_size=5)
    assert [batch["b"].shape for batch in csv_source.batches] == [(5, 5), (5, 5), (2, 5)]
    predictions = list(dmrnet.load(run).predict_batches(read_inputs(path, shapes, 5).batches))
    assert [p.labels.shape[0] for p in predictions] == [5, 5, 2]


def test_load_takes_a_device(run):
    model = dmrnet.load(run, device="cpu")
    assert next(model.method.parameters()).device.type == "cpu"
    with pytest.raises(DataError, match="device 'nonsense'"):
        dmrnet.load(run, device="nonsense")


def test_predict_writes_to_out_and_says_where(run, views, tmp_path, capsys):
    path = tmp_path / "in.npz"
    np.savez(path, **views)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(path), "--out", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == f"12 predictions written to {out}\n"
    assert len(rows_of(out.read_text())) == 12


def test_a_closed_pipe_ends_predict_quietly(run, views, tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, **{k: np.repeat(v, 400, axis=0) for k, v in views.items()})  # 4800 rows
    env = {**os.environ, "PYTHONPATH": str(Path(dmrnet.__file__).parent.parent)}
    command = [sys.executable, "-m", "dmrnet.cli", "predict", str(run), str(path),
               "--batch-size", "64"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # what `| head -1` does
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert first.startswith(b"index,prediction") and stderr == ""


# -- bad inputs: the Python API ------------------------------------------------------------------
A, B = np.zeros((2, 8)), np.zeros((2, 5))
API_CASES: list[tuple[str, Any, str]] = [
    ("zero rows", {"a": np.zeros((0, 8))}, "no samples: a hold 0 rows"),
    ("strings", {"a": np.array([["x"] * 8] * 2)}, "modality 'a': holds strings"),
    ("bytes", {"a": np.array([[b"x"] * 8] * 2)}, "modality 'a': holds bytes"),
    ("None", {"a": None}, "modality 'a': got None"),
    ("complex", {"a": A + 1j}, "modality 'a': holds complex values"),
    ("complex tensor", {"a": torch.zeros(2, 8, dtype=torch.complex64)}, "holds complex"),
    ("objects", {"a": np.array([[object()] * 8] * 2)}, "modality 'a': holds Python objects"),
    ("ragged lists", {"a": [[1.0] * 8, [1.0] * 3]}, "not a rectangular array"),
    ("wrong width", {"a": np.zeros((2, 7))}, r"expected samples of shape \(8,\)"),
    ("wrong rank", {"a": np.zeros((2, 8, 1))}, r"got shape \(2, 8, 1\)"),
    ("scalar", {"a": 3.0}, "got a scalar"),
    ("dates", {"a": np.zeros((2, 8), dtype="datetime64[s]")}, "datetime64"),
    ("unknown modality", {"z": A}, "unknown modality 'z'"),
    ("no modality", {}, "no modality given"),
    ("not a mapping", [A], "inputs must be a mapping"),
    ("different counts", {"a": A, "b": np.zeros((3, 5))}, "different numbers of samples"),
    ("inf in a present sample", {"a": np.full((2, 8), np.inf)}, "NaN or inf values in present"),
    ("partly NaN sample", {"a": np.array([[np.nan] + [0.0] * 7] * 2)}, "present sample 0"),
    ("no modality present", {"a": np.full((1, 8), np.nan)}, "sample 0 has no modality present"),
]


@pytest.mark.parametrize(("inputs", "message"), [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])  # fmt: skip
def test_bad_api_inputs_raise_one_line(run, inputs, message):
    with pytest.raises(DataError, match=message) as error:
        dmrnet.load(run).predict(inputs)
    assert "\n" not in str(error.value)


def test_a_bad_batch_size_is_refused(run):
    with pytest.raises(DataError, match="batch size must be a positive integer"):
        dmrnet.load(run).predict({"a": A}, batch_size=0)


# -- bad inputs: files through the CLI -----------------------------------------------------------
def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


FILE_CASES: list[tuple[str, Any, str]] = [
    ("npz zero rows", lambda d: _npz(d / "x.npz", a=np.zeros((0, 8))), "no samples"),
    ("npz strings", lambda d: _npz(d / "x.npz", a=np.array([["x"] * 8])), "holds strings"),
    (
        "npz objects",
        lambda d: _npz(d / "x.npz", a=np.array([None, 1], dtype=object)),
        "key 'a' holds Python objects",
    ),
    ("npz complex", lambda d: _npz(d / "x.npz", a=np.zeros((2, 8)) + 1j), "complex"),
    ("npz wrong shape", lambda d: _npz(d / "x.npz", a=np.zeros((2, 9))), "shape (8,)"),
    ("npz counts", lambda d: _npz(d / "x.npz", a=A, b=np.zeros((3, 5))), "numbers of samples"),
    ("npz no modality", lambda d: _npz(d / "x.npz", rgb=A), "none of its keys ['rgb']"),
    ("npz corrupt", lambda d: _text(d / "x.npz", "not a zip"), "cannot read input file"),
    (
        "csv text cell",
        lambda d: _text(d / "x.csv", "c.f0,c.f1,c.f2,label\n1,hello,3,1\n"),
        "line 2: column 'c.f1' holds 'hello'",
    ),
    ("csv view width", lambda d: _text(d / "x.csv", "b.f0,b.f1\n1,2\n"), "view 'b' has 2 columns"),
    (
        "csv header only",
        lambda d: _text(d / "x.csv", ",".join(f"c.f{j}" for j in range(3)) + "\n"),
        "header but no samples",
    ),
    ("csv empty", lambda d: _text(d / "x.csv", ""), "the CSV file is empty"),
    ("csv bad column", lambda d: _text(d / "x.csv", "weird\n1\n"), "column 'weird'"),
    ("csv short line", lambda d: _text(d / "x.csv", "c.f0,c.f1,c.f2\n1,2\n"), "line 2 has 2 cells"),
    ("csv binary", lambda d: _text(d / "x.csv", "\x00\x01\x02"), "column"),
    ("mat garbage", lambda d: _text(d / "x.mat", "garbage"), "cannot read input file"),
    ("unsupported suffix", lambda d: _text(d / "x.txt", "1 2 3"), "unsupported input format"),
    ("missing file", lambda d: d / "absent.npz", "no such input file"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])  # fmt: skip
def test_bad_input_files_exit_2_with_one_line_and_write_nothing(
    run, tmp_path, capsys, make, message
):
    out = tmp_path / "pred.csv"
    code = main(["predict", str(run), str(make(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("size", ["0", "x", "-3"])
def test_a_bad_batch_size_option_exits_2_naming_it(run, tmp_path, capsys, size):
    path = _npz(tmp_path / "in.npz", a=A)
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(run), str(path), "--batch-size", size])
    assert exit_.value.code == 2
    assert f"expected a positive integer, got '{size}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--device", "nonsense"], "device 'nonsense'"),
        (["--out", "/nonexistent-folder/pred.csv"], "folder /nonexistent-folder does not exist"),
    ],
)
def test_bad_predict_options_exit_2_naming_them(run, tmp_path, capsys, options, message):
    path = _npz(tmp_path / "in.npz", a=A)
    assert main(["predict", str(run), str(path), *options]) == 2
    assert message in capsys.readouterr().err
