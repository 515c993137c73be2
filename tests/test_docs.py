"""The docs work as written: every shell command in README.md and docs/*.md runs (at tiny sizes:
one epoch is injected into training commands) or is skipped with a stated reason, and the Python
examples of docs/python-api.md and README.md run as they are.

Commands run in-process (`dmrnet.cli.main`), one working directory per document, in document
order, so a later command finds the run directory an earlier one wrote. A training command that
another document (or a document's setup) already ran, the same but for its run directory, is
trained once per session (per pytest-xdist worker) and copied (`Trainings`).
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmrnet.cli import main
from dmrnet.config import parse_config
from dmrnet.data import build_data
from dmrnet.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# What each command gets appended so that it finishes in seconds. Later --set values win.
TINY = {
    "train": ["--set", "train.epochs=1", "--set", "train.progress_bar=false"],
    "bench": [
        *("--datasets", "handwritten", "--methods", "dmrnet", "--seeds", "0", "--no-speed"),
        *("--set", "train.epochs=1"),
    ],
}

# Commands that are not run, matched by their start, and why.
SKIP = {
    "cd runs/hw/checkpoints": "checks a checksum by hand with sha256sum; tests/test_runs.py "
    "verifies every checkpoint's recorded sha256",
    "make demo": "builds its own .venv and trains 60 epochs; the same command runs below as "
    "`dmrnet train handwritten/dmrnet`",
    "make test": "runs this test suite; .ci/run calls it",
    "pip install": "installs packages; .ci/run installs the built wheel into a fresh venv",
    "python -m pip wheel": ".ci/run builds the wheel",
    "torchrun": "needs several machines; tests/test_distributed.py runs 2 processes on one",
    "srun": "needs a SLURM cluster; tests/test_distributed.py runs 2 processes on one machine",
    "dmrnet train handwritten/dmrnet --set train.accelerator=cuda": "needs 2 GPUs; "
    "tests/test_distributed.py trains with --devices 2 --strategy ddp on CPUs",
    "dmrnet bench throughput --device cuda": "needs a GPU; tests/bench/test_throughput.py times "
    "tiny models (and on a GPU where there is one)",
    "OMP_NUM_THREADS=1 dmrnet bench throughput-cpu": "times paper-size models for minutes; "
    "tests/bench/test_throughput.py runs the same code at tiny sizes",
}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]+$")  # CONFIG, RUN_DIR: words the reader replaces


def code_blocks(path: Path, languages: tuple[str, ...]) -> list[str]:
    """The fenced code blocks of a Markdown file whose info string is one of `languages`
    ("" for blocks without one), in document order, dedented as a list item indents them."""
    blocks, current, language, indent = [], [], None, 0
    for line in path.read_text().splitlines():
        stripped = line.lstrip()
        if language is None and stripped.startswith("```"):
            language, indent, current = stripped[3:].strip(), len(line) - len(stripped), []
        elif language is not None and stripped.startswith("```"):
            if language in languages:
                blocks.append("".join(f"{text[indent:]}\n" for text in current))
            language = None
        elif language is not None:
            current.append(line)
    return blocks


def shell_commands(path: Path) -> list[str]:
    """The commands of a document's bash blocks: continuations joined, comments dropped."""
    commands = []
    for block in code_blocks(path, ("bash", "sh")):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def skip_reason(command: str) -> str | None:
    for prefix, reason in SKIP.items():
        if command.startswith(prefix):
            return reason
    if any(PLACEHOLDER.match(word) for word in shlex.split(command)):
        return "a placeholder for the reader's own config or run"
    return None


def write_inputs(folder: Path) -> None:
    """`inputs.npz` of the predict examples: two Handwritten views of three samples."""
    rng = np.random.default_rng(0)
    np.savez(folder / "inputs.npz", pix=rng.random((3, 240)), mor=rng.random((3, 6)))


def write_my_views(folder: Path) -> None:
    """docs/datasets.md's my-views.yaml (its YAML block, verbatim) and a views.csv in the CSV
    format the document describes, with enough rows for the splits."""
    blocks = code_blocks(ROOT / "docs/datasets.md", ("yaml",))
    config = next(block for block in blocks if "name: my-views" in block)
    (folder / "my-views.yaml").write_text(config)
    rng = np.random.default_rng(0)
    lines = ["label,split,pix.0,pix.1,pix.2,fou.0,fou.1"]
    for row in range(60):
        label = ("three", "seven")[row % 2]
        pix = rng.normal(size=3) + (row % 2)
        fou = "," if row % 7 == 0 else ",".join(f"{v:.3f}" for v in rng.normal(size=2))
        split = "test" if row % 5 == 0 else "train"
        lines.append(f"{label},{split},{','.join(f'{v:.3f}' for v in pix)},{fou}")
    (folder / "views.csv").write_text("\n".join(lines) + "\n")


def link_examples(folder: Path) -> None:
    (folder / "examples").symlink_to(ROOT / "examples")


def write_inputs_csv(folder: Path) -> None:
    """`inputs.csv` of the predict examples, in the multiview CSV layout (`view.i` columns)."""
    rng = np.random.default_rng(0)
    header = [f"pix.{i}" for i in range(240)] + [f"mor.{i}" for i in range(6)]
    rows = [",".join(f"{v:.4f}" for v in rng.random(len(header))) for _ in range(3)]
    (folder / "inputs.csv").write_text("\n".join([",".join(header), *rows]) + "\n")


class Trainings:
    """`dmrnet train` commands run once per session: the same command (its run directory aside)
    again gets a copy of the finished run. Trainings are deterministic, so the copy is what the
    command would write. A command that names a file of the working directory (a document's own
    config) always runs: in another document's directory the same name is another file."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.runs = folder, {}

    @staticmethod
    def key(args: list[str]) -> tuple[str, ...] | None:
        """`args` without their `--run-dir`, for a new training; None for anything else."""
        if args[0] != "train" or "--resume" in args or "--run-dir" not in args:
            return None
        at = args.index("--run-dir")
        rest = args[:at] + args[at + 2 :]
        return None if any(Path(word).exists() for word in rest) else tuple(rest)

    def train(self, args: list[str]) -> None:
        key = self.key(args)
        assert key is not None, args
        run_dir = Path(args[args.index("--run-dir") + 1])
        if key not in self.runs:
            self.runs[key] = self.folder / str(len(self.runs))
            assert main([*key, "--run-dir", str(self.runs[key])]) == 0, f"failed: {args}"
        shutil.copytree(self.runs[key], run_dir)


@pytest.fixture(scope="session")
def trainings(tmp_path_factory: pytest.TempPathFactory) -> Trainings:
    return Trainings(tmp_path_factory.mktemp("doc-trainings"))


SETUP = {  # files a document's commands expect in the working directory
    "README.md": [write_inputs, write_inputs_csv],
    "calibration.md": [write_inputs],
    "deploy.md": [write_inputs],
    "datasets.md": [write_my_views],
    "plugins.md": [write_inputs, link_examples],
}
# `runs/hw`, the run these documents' commands continue, evaluate or predict with, is trained
# first (as README.md trains it, without its --set).
CONTINUES_HW = {"calibration.md", "runs.md"}
HANDWRITTEN_RUN = ["train", "handwritten/dmrnet", "--run-dir", "runs/hw", *TINY["train"]]


def run_command(
    command: str, folder: Path, monkeypatch: pytest.MonkeyPatch, trainings: Trainings
) -> None:
    words = shlex.split(command)
    if words[0] == "export":
        name, _, value = words[1].partition("=")
        assert name == "PYTHONPATH", f"unexpected export in the docs: {command}"
        # In-process, a PYTHONPATH entry is a sys.path entry (relative to the working directory).
        monkeypatch.syspath_prepend(str(folder / value))
        return
    assert words[0] == "dmrnet", f"a doc command that is neither run nor skipped: {command}"
    args = words[1:]
    if args[0] in TINY:
        args += TINY[args[0]]  # later --set values win: a documented resume extends to 1 epoch
    if Trainings.key(args) is not None:
        trainings.train(args)
    else:
        assert main(args) == 0, f"failed as written: {command}"


DOCUMENTED = [doc for doc in DOCS if shell_commands(doc)]


@pytest.mark.parametrize("doc", DOCUMENTED, ids=[doc.name for doc in DOCUMENTED])
def test_every_shell_command_runs_as_written(
    doc, tmp_path, monkeypatch, handwritten_available, capsys, trainings
):
    monkeypatch.chdir(tmp_path)
    for setup in SETUP.get(doc.name, []):
        setup(tmp_path)
    if doc.name in CONTINUES_HW:
        trainings.train(HANDWRITTEN_RUN)
    ran = 0
    for command in shell_commands(doc):
        if skip_reason(command) is None:
            run_command(command, tmp_path, monkeypatch, trainings)
            ran += 1
    if doc.name == "README.md":
        # The README's Python snippet uses the run its commands trained.
        for block in code_blocks(doc, ("python",)):
            exec(compile(block, f"{doc.name} (python block)", "exec"), {})
    assert ran, f"{doc.name}: every command is skipped"


def test_every_skip_matches_a_documented_command():
    commands = [c for doc in DOCS for c in shell_commands(doc)]
    stale = [p for p in SKIP if not any(c.startswith(p) for c in commands)]
    assert not stale, f"skip entries that match no command in the docs: {stale}"


def test_python_api_examples_run_as_written(tmp_path, monkeypatch, handwritten_available, capsys):
    monkeypatch.chdir(tmp_path)
    link_examples(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the plugin example inserts into it
    namespace: dict = {}
    blocks = code_blocks(ROOT / "docs/python-api.md", ("python",))
    assert len(blocks) >= 5
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/python-api.md (python block {index + 1})", "exec"), namespace)
    assert (tmp_path / "runs/byo/results.json").is_file()
    assert namespace["dmrnet"].load("runs/api-plugin").config.plugins == ["tiny_attention"]


def test_the_csv_example_is_read_and_too_small_for_the_splits_is_one_line(tmp_path):
    csv_block = next(
        b for b in code_blocks(ROOT / "docs/datasets.md", ("",)) if b.startswith("label,split")
    )
    (tmp_path / "views.csv").write_text(csv_block)
    options = {"path": str(tmp_path / "views.csv"), "nan_means_missing": True}
    with pytest.raises(DataError, match=r"too few samples for training \(1 train, 0 validation"):
        build_data("multiview", options, root=None, val_fraction=0.1, seed=0)


def test_the_documented_multiview_config_is_complete():
    block = next(b for b in code_blocks(ROOT / "docs/datasets.md", ("yaml",)) if "my-views" in b)
    assert parse_config(yaml.safe_load(block)).data.options["path"] == "views.csv"
