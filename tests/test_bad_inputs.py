"""The bad-input matrix: every way a careful user got a traceback, a silent nonsense run or a
half-written file (issue 11), and the ones already handled, through `dmrnet.cli.main`.

Each case asserts the exit code, one `error:` line naming the file, key or value, no traceback,
and that nothing in the case's folder changed (no run directory, lock, temporary or report left
behind). `predict`'s inputs have their own matrix beside the predict command; signals are in
tests/test_runs.py and tests/test_kill_resume.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dmrnet.cli import main


@dataclass
class Context:
    folder: Path  # the case's folder: everything in it must be unchanged by the failure
    trained: Path  # the session's trained run (read-only: `run()` copies it)
    files: tuple[Callable, Callable]  # conftest's (write_synthetic_views, tiny_config)

    @property
    def out(self) -> Path:
        return self.folder / "run"  # where a train case would write

    def views(self, name: str = "views.npz", **arrays: np.ndarray) -> Path:
        path = self.folder / name
        if arrays:
            np.savez(path, **arrays)
        else:
            self.files[0](path)
        return path

    def config(self, data: Path | None = None, name: str = "tiny.yaml", **top: object) -> Path:
        raw = self.files[1](data or self.views(), "dmrnet")
        raw.update(top)
        path = self.folder / name
        path.write_text(yaml.safe_dump(raw))
        return path

    def train(self, *overrides: str, data: Path | None = None) -> list[str]:
        argv = ["train", str(self.config(data)), "--run-dir", str(self.out)]
        for override in overrides:
            argv += ["--set", override]
        return argv

    def run(self) -> Path:
        path = self.folder / "trained"
        if not path.exists():
            shutil.copytree(self.trained, path)
        return path

    def checkpoint(self, name: str = "best.ckpt") -> Path:
        return self.run() / "checkpoints" / name


Build = Callable[[Context], tuple[list[str], str]]
CASES: dict[str, Build] = {}


def case(name: str, build: Build) -> None:
    assert name not in CASES, name
    CASES[name] = build


# --- configs: one --set each (errors name the dotted key) ---------------------------------------

SET_CASES = {
    "unknown model key": ("model.kl_weight_typo=1", "model.kl_weight_typo: unknown key"),
    "negative kl weight": ("model.kl_weight=-1", "model.kl_weight"),
    "kl weight not a number": ("model.kl_weight=abc", "model.kl_weight"),
    "unknown method": ("model.method=nosuch", "nosuch"),
    "zero feature dim": ("model.feature_dim=0", "model.feature_dim"),
    "negative embed dim": ("model.embed_dim=-4", "model.embed_dim"),
    "unknown encoder": ("model.encoder.name=nosuch", "nosuch"),
    "negative hidden width": ("model.encoder.options.hidden=[-3]", "model.encoder"),
    "dropout above 1": ("model.encoder.options.dropout=1.5", "model.encoder"),
    "unknown encoder option": ("model.encoder.options.widht=3", "model.encoder"),
    "unknown sampler": ("model.sampler.kind=sometimes", "model.sampler.kind"),
    "sampler p of 1.5": ("model.sampler.p=1.5", "model.sampler.p"),
    "unknown hcr rule": ("model.hcr.rule=hardest", "model.hcr.rule"),
    "negative hcr weight": ("model.hcr.weight=-1", "model.hcr.weight"),
    "zero hcr warm-up": ("model.hcr.warmup_epochs=0", "model.hcr.warmup_epochs"),
    "zero hcr k": ("model.hcr.k=0", "model.hcr.k"),
    "zero epochs": ("train.epochs=0", "train.epochs"),
    "epochs as a word": ("train.epochs=two", "train.epochs"),
    "zero batch size": ("train.batch_size=0", "train.batch_size"),
    "unknown optimizer": ("train.optimizer.name=adam", "train.optimizer.name"),
    "zero learning rate": ("train.optimizer.lr=0", "train.optimizer.lr"),
    "negative learning rate": ("train.optimizer.lr=-1", "train.optimizer.lr"),
    "momentum of 1": ("train.optimizer.momentum=1", "train.optimizer.momentum"),
    "unknown scheduler": ("train.scheduler.name=linear", "train.scheduler.name"),
    "zero gamma": ("train.scheduler.gamma=0", "train.scheduler.gamma"),
    "negative warm-up": ("train.scheduler.warmup_epochs=-1", "train.scheduler.warmup_epochs"),
    "invalid precision": ("train.precision=bad", "train.precision"),
    "8-bit precision": ("train.precision=8", "train.precision"),
    "unknown accelerator": ("train.accelerator=gpux", "train.accelerator"),
    "absent gpu": ("train.accelerator=gpu", "train.accelerator: 'gpu' is not available"),
    "absent cuda": ("train.accelerator=cuda", "train.accelerator: 'cuda' is not available"),
    "zero devices": ("train.devices=0", "train.devices"),
    "devices -2": ("train.devices=-2", "train.devices"),
    "devices as a word": ("train.devices=many", "train.devices"),
    "devices list with a word": ("train.devices=0,x", "train.devices"),
    "unknown strategy": ("train.strategy=fancy", "train.strategy: unknown strategy 'fancy'"),
    "empty strategy": ("train.strategy=''", "train.strategy"),
    "zero nodes": ("train.num_nodes=0", "train.num_nodes"),
    "zero gradient clip": ("train.gradient_clip=0", "train.gradient_clip"),
    "zero log interval": ("train.log_every_n_steps=0", "train.log_every_n_steps"),
    "deterministic maybe": ("train.deterministic=maybe", "train.deterministic"),
    "zero eval batch": ("eval.batch_size=0", "eval.batch_size"),
    "unknown combination": ("eval.combinations=[x+y]", "eval.combinations[0]"),
    "empty combinations": ("eval.combinations=[]", "eval.combinations"),
    "third combination bad": ("eval.combinations=[a, a+b, q]", "eval.combinations[2]"),
    "availability p of 1": ("eval.availability_p=1", "eval.availability_p"),
    "zero val fraction": ("data.val_fraction=0", "data.val_fraction"),
    "val fraction above 1": ("data.val_fraction=1.5", "data.val_fraction"),
    "negative workers": ("data.num_workers=-1", "data.num_workers"),
    "unknown dataset": ("data.name=nosuch", "nosuch"),
    "unknown data option": ("data.options.lable_key=y", "data.options.lable_key: unknown option"),
    "missing data file": ("data.options.path=/nonexistent/views.npz", "/nonexistent/views.npz"),
    "zero test fraction": ("data.options.test_fraction=0", "data.options.test_fraction"),
    "no views": ("data.options.views=[]", "data.options.views"),
    "a view twice": ("data.options.views=[a, a]", "data.options.views"),
    "unknown view": ("data.options.views=[zz]", "'zz'"),
    "unknown label key": ("data.options.label_key=nope", "looked for nope"),
    "seed as a word": ("seed=abc", "seed"),
    "unknown top-level key": ("bogus=1", "bogus: unknown key"),
    "override without =": ("novalue", "expected KEY=VALUE"),
    "override not yaml": ("model.kl_weight=[unclosed", "not valid YAML"),
    "override below a value": ("train.epochs.deep=1", "train.epochs is a value"),
}
for _name, (_override, _needle) in SET_CASES.items():
    case(f"config: {_name}", lambda c, o=_override, n=_needle: (c.train(o), n))


# --- config files ------------------------------------------------------------------------------


def _config_text(c: Context, text: str, name: str = "bad.yaml") -> list[str]:
    path = c.folder / name
    path.write_text(text)
    return ["train", str(path), "--run-dir", str(c.out)]


case("config file: missing", lambda c: (["train", str(c.folder / "no.yaml")], "no.yaml"))
case("config file: not yaml", lambda c: (_config_text(c, "model: [unclosed"), "not valid YAML"))
case("config file: a list", lambda c: (_config_text(c, "- 1\n- 2\n"), "expected a mapping"))
case(
    "config file: no method",
    lambda c: (_config_text(c, "data: {name: multiview}\n"), "model.method: required key"),
)
case(
    "config file: a folder",
    lambda c: (["train", str(c.folder), "--run-dir", str(c.out)], "cannot read config"),
)
case(
    "config file: unknown packaged name",
    lambda c: (["train", "handwritten/nosuch", "--run-dir", str(c.out)], "handwritten/nosuch"),
)


# --- data files: refused by name, before any run directory exists ------------------------------

LABELS = np.arange(80) % 4
RNG = np.random.default_rng(0)


def _data(c: Context, name: str = "views.npz", labels: np.ndarray = LABELS, **views) -> list[str]:
    present = ["data.options.present_key=present"] if "present" in views else []
    return c.train(*present, data=c.views(name, y=labels, **views))


def _a(rows: int = 80, columns: int = 4) -> np.ndarray:
    return RNG.normal(size=(rows, columns))


def _nan_view() -> np.ndarray:
    values = _a()
    values[5, 1] = np.nan
    return values


def _present(rows: list[int], column: int = 0) -> np.ndarray:
    present = np.ones((80, 2))
    present[rows, column] = 0
    return present


case("data: NaN in a present sample", lambda c: (_data(c, a=_nan_view(), b=_a()), "NaN or inf"))
case(
    "data: complex view",
    lambda c: (_data(c, a=_a() + 1j * _a(), b=_a()), "'a' holds complex128 values"),
)
case(
    "data: string view",
    lambda c: (_data(c, a=np.array([["x"] * 4] * 80), b=_a()), "'a' holds <U1 values"),
)
case("data: zero-column view", lambda c: (_data(c, a=np.zeros((80, 0)), b=_a()), "'a' has samples"))
case(
    "data: a single class",
    lambda c: (_data(c, labels=np.zeros(80, int), a=_a(), b=_a()), "a single class"),
)
case(
    "data: a class only in the test rows",
    lambda c: (
        c.train(
            data=c.views(
                a_train=_a(60),
                a_test=_a(20),
                y_train=np.arange(60) % 3,
                y_test=np.arange(20) % 4,
            )
        ),
        "class 3 appears in the test split but never in training",
    ),
)
case(
    "data: empty validation split",
    lambda c: (c.train("data.val_fraction=0.001"), "the val split has no samples"),
)
case(
    "data: views of different lengths",
    lambda c: (_data(c, a=_a(), b=_a(79)), "'b' has shape (79, 4) but there are 80 labels"),
)
case(
    "data: a sample without any view",
    lambda c: (
        _data(
            c, a=_a(), b=_a(), present=np.where(np.arange(80)[:, None] == 7, 0, np.ones((80, 2)))
        ),
        "sample 7 has no modality present",
    ),
)
case(
    "data: present_key marks a view missing everywhere",
    lambda c: (
        _data(c, a=_a(), b=_a(), present=_present(list(range(80)), 1)),
        "view 'b' is missing in every training sample",
    ),
)
case(
    "data: present_key not 0/1",
    lambda c: (_data(c, a=_a(), b=_a(), present=np.full((80, 2), 2.0)), "present_key"),
)
case(
    "data: label matrix",
    lambda c: (_data(c, labels=np.zeros((80, 3)), a=_a()), "labels have shape"),
)
case("data: no labels", lambda c: (c.train(data=c.views(a=_a(), b=_a())), "no labels found"))
case("data: empty labels", lambda c: (_data(c, labels=np.zeros(0, int), a=_a(0)), "no samples"))


def _csv(c: Context, text: str | bytes, name: str = "views.csv") -> list[str]:
    path = c.folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return c.train(data=path)


_HEADER = "label,a.1,a.2,b.1\n"
_ROWS = "".join(f"{i % 2},{i},{i + 1},{i * 2}\n" for i in range(40))
case(
    "csv: duplicated column",
    lambda c: (_csv(c, "label,a.1,a.1,b.1\n" + _ROWS), "column 'a.1' appears twice"),
)
case("csv: binary data", lambda c: (_csv(c, bytes(range(256)) * 8), "not a text CSV file"))
case("csv: empty", lambda c: (_csv(c, ""), "the CSV file is empty"))
case("csv: header only", lambda c: (_csv(c, _HEADER), "has a header but no samples"))
case(
    "csv: a word in a feature",
    lambda c: (_csv(c, _HEADER + "0,1,x,2\n" + _ROWS), "line 2: column 'a.2' holds 'x'"),
)
case("csv: a ragged line", lambda c: (_csv(c, _HEADER + "0,1\n" + _ROWS), "line 2 has 2 cells"))
case("csv: no label column", lambda c: (_csv(c, "a.1,b.1\n1,2\n"), "no label column 'label'"))
case(
    "csv: a column without a view",
    lambda c: (_csv(c, "label,a1\n0,1\n"), "column 'a1' is neither"),
)
case(
    "csv: bad split value",
    lambda c: (_csv(c, "label,a.1,split\n0,1,train\n1,2,maybe\n"), "split value 'maybe'"),
)
case(
    "data: unsupported suffix",
    lambda c: (_csv(c, "x", name="views.txt"), "unsupported file type '.txt'"),
)
case("data: corrupt npz", lambda c: (_csv(c, b"PK\x03\x04junk", name="v.npz"), "cannot read"))
case(
    "data: object array in npz",
    lambda c: (
        _data(c, a=np.array([object()] * 80, dtype=object), b=_a()),
        "no objects",
    ),
)


# --- run directories -------------------------------------------------------------------------


def _file_run_dir(c: Context) -> tuple[list[str], str]:
    c.out.write_text("not a folder")
    return ["train", str(c.config()), "--run-dir", str(c.out)], "is a file, not a directory"


def _locked(c: Context) -> tuple[list[str], str]:
    c.out.mkdir()
    (c.out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname()[1]}))
    return c.train(), "is in use by another dmrnet process"


def _config_only(c: Context) -> tuple[list[str], str]:
    c.out.mkdir()
    shutil.copy(c.run() / "config.yaml", c.out / "config.yaml")
    return ["train", "--resume", str(c.out)], "nothing to resume"


def _damaged_last(c: Context, damage: Callable[[Path], None], needle: str):
    last = c.checkpoint("last.ckpt")
    damage(last)
    return ["train", "--resume", str(c.run()), "--set", "train.epochs=3"], needle


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    path.with_name(path.name + ".sha256").unlink()


def _payload(path: Path) -> None:
    torch.save({"dmrnet": Payload()}, path)
    path.with_name(path.name + ".sha256").unlink()


def _foreign_method(c: Context) -> Callable[[Path], None]:
    def replace(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["dmrnet"]["config"]["model"] = {"method": "moddrop"}
        torch.save(checkpoint, path)
        path.with_name(path.name + ".sha256").unlink()

    return replace


class Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


case("run dir: a file", _file_run_dir)
case("run dir: locked by a live process", _locked)
case(
    "run dir: already holds a run",
    lambda c: (
        ["train", str(c.config()), "--run-dir", str(c.run())],
        "already holds a run; continue it with --resume",
    ),
)
case("run dir: train without a config", lambda c: (["train"], "give a CONFIG file"))
case(
    "resume: not a run",
    lambda c: (["train", "--resume", str(c.folder / "none")], "no config.yaml"),
)
case("resume: no checkpoint", _config_only)
case(
    "resume: with a config",
    lambda c: (["train", str(c.config()), "--resume", str(c.run())], "give RUN_DIR only"),
)
case(
    "resume: a key that changes training",
    lambda c: (
        ["train", "--resume", str(c.run()), "--set", "model.kl_weight=1"],
        "--set model.kl_weight: cannot change when resuming",
    ),
)
case(
    "resume: --devices is not resumable",
    lambda c: (["train", "--resume", str(c.run()), "--devices", "2"], "--set train.devices"),
)
case(
    "resume: fewer epochs than trained",
    lambda c: (
        ["train", "--resume", str(c.run()), "--set", "train.epochs=1"],
        "extended, not shortened",
    ),
)
case("resume: truncated last.ckpt", lambda c: _damaged_last(c, _truncate, "not a loadable"))
case("resume: last.ckpt runs code", lambda c: _damaged_last(c, _payload, "weights_only=True"))
case(
    "resume: last.ckpt of another method",
    lambda c: _damaged_last(c, _foreign_method(c), "does not belong to this run"),
)
case(
    "resume: last.ckpt changed after writing",
    lambda c: _damaged_last(c, lambda p: _flip(p), "does not match the one recorded"),
)


# --- checkpoints (evaluate) ------------------------------------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _evaluate(c: Context, damage: Callable[[Path], None] | None, needle: str):
    checkpoint = c.checkpoint()
    if damage is not None:
        damage(checkpoint)
    return ["evaluate", str(checkpoint)], needle


def _write(content: bytes) -> Callable[[Path], None]:
    return lambda path: (path.write_bytes(content), path.with_name(path.name + ".sha256").unlink())


def _edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=True)
        change(checkpoint)
        torch.save(checkpoint, path)
        path.with_name(path.name + ".sha256").unlink()

    return apply


def _nan_weight(checkpoint: dict) -> None:
    name = next(k for k in checkpoint["state_dict"] if k.endswith(".weight"))
    checkpoint["state_dict"][name].view(-1)[0] = float("nan")


def _drop_weight(checkpoint: dict) -> None:
    checkpoint["state_dict"].pop(next(iter(checkpoint["state_dict"])))


case(
    "evaluate: no such path",
    lambda c: (["evaluate", str(c.folder / "none")], "no such run directory or checkpoint"),
)
case(
    "evaluate: a folder without checkpoints",
    lambda c: (["evaluate", str(c.folder)], "no checkpoints/best.ckpt"),
)
case("evaluate: bytes flipped", lambda c: _evaluate(c, _flip, "does not match the one recorded"))
case("evaluate: not a checkpoint", lambda c: _evaluate(c, _write(b"junk"), "not a loadable"))
case("evaluate: empty file", lambda c: _evaluate(c, _write(b""), "not a loadable"))
case("evaluate: truncated", lambda c: _evaluate(c, _truncate, "not a loadable"))
case("evaluate: code payload", lambda c: _evaluate(c, _payload, "weights_only=True"))
case(
    "evaluate: no dmrnet section",
    lambda c: _evaluate(c, _edit(lambda k: k.pop("dmrnet")), "no 'dmrnet' section"),
)
case(
    "evaluate: another checkpoint format",
    lambda c: _evaluate(c, _edit(lambda k: k["dmrnet"].update(format=99)), "format 99"),
)
case("evaluate: NaN weights", lambda c: _evaluate(c, _edit(_nan_weight), "holds NaN"))
case(
    "evaluate: weights of another model",
    lambda c: _evaluate(c, _edit(_drop_weight), "weights do not match the stored config"),
)
case(
    "evaluate: another method in the run",
    lambda c: _evaluate(c, _foreign_method(c), "a 'moddrop' checkpoint, but the run's config"),
)
case(
    "evaluate: unknown combination",
    lambda c: (["evaluate", str(c.run()), "--combinations", "a+z"], "unknown modality 'z'"),
)


def _out_is_a_file(c: Context) -> tuple[list[str], str]:
    taken = c.folder / "taken"
    taken.write_text("x")
    return ["evaluate", str(c.run()), "--out", str(taken)], "taken: is a file"


case("evaluate: --out is a file", _out_is_a_file)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_one_line_and_leaves_nothing(
    name, trained_run, tiny_files, tmp_path, capsys
):
    context = Context(tmp_path, trained_run[0], tiny_files)
    argv, needle = CASES[name](context)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    existed = context.out.exists()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in out + err and "pwned" not in out
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert err.count("error: ") == 1 and last.startswith("error: "), err
    assert needle in last, last
    assert _snapshot(tmp_path) == before, "a failed command changed files"
    assert existed or not context.out.exists()


def test_the_matrix_covers_at_least_80_cases():
    assert len(CASES) >= 80


def test_a_symlink_out_of_a_face_data_folder_is_refused(tmp_path):
    from dmrnet.data.casia_surf import inside
    from dmrnet.errors import DataError

    folder, outside = tmp_path / "casia", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    (folder / "faces").symlink_to(outside)  # textually inside, really outside
    with pytest.raises(DataError, match=r"'faces/1.png' leads out of the data set folder"):
        inside(folder, "faces/1.png", "train_list.txt")
    assert inside(folder, "real/1.png", "train_list.txt") == folder / "real" / "1.png"
