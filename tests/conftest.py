"""Shared fixtures: a small synthetic multi-view file and a tiny config that trains in seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dmrnet.methods import METHODS

HANDWRITTEN = Path(os.environ.get("DMRNET_DATA", "/nonexistent")) / "handwritten"


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist worker (`-n N`) gets its share of the cores, and so do the processes it
    starts (OMP_NUM_THREADS): N workers with one thread per core each would oversubscribe the
    machine several times over. A thread count set by the user stays."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Derived files go to a per-session temporary cache, never the user's."""
    if "DMRNET_CACHE" not in os.environ:
        monkeypatch.setenv("DMRNET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def write_synthetic_views(path: Path, samples: int = 240, seed: int = 0) -> Path:
    """Three views of a 4-class problem: `a` is informative, `b` weak, `c` nearly noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), samples // 4)
    centers = rng.normal(size=(4, 8))
    a = centers[labels] * 2.0 + rng.normal(size=(samples, 8))
    b = centers[labels, :5] * 0.8 + rng.normal(size=(samples, 5))
    c = centers[labels, :3] * 0.2 + rng.normal(size=(samples, 3))
    np.savez(path, a=a, b=b, c=c, y=labels)
    return path


@pytest.fixture
def synthetic_file(tmp_path: Path) -> Path:
    return write_synthetic_views(tmp_path / "views.npz")


def tiny_config(path: Path, method: str = "dmrnet", **model: Any) -> dict[str, Any]:
    """A config dict that trains a tiny model for 2 epochs on the synthetic file."""
    model_section: dict[str, Any] = {
        "method": method,
        "encoder": {"name": "mlp", "options": {"hidden": [16], "dropout": 0.0}},
        "feature_dim": 8,
        "embed_dim": 8,
    }
    if method == "dmrnet":
        model_section["hcr"] = {"rule": "unimodal-max", "warmup_epochs": 1}
    # Sizes only for the fields the method's schema has (late-fusion has no embedding).
    fields = METHODS.get(method).config_class.model_fields if method in METHODS else {}
    model_section = {k: v for k, v in model_section.items() if k in fields or k == "method"}
    model_section.update(model)
    return {
        "name": f"tiny-{method}",
        "seed": 0,
        "data": {"name": "multiview", "options": {"path": str(path)}, "val_fraction": 0.2},
        "model": model_section,
        "train": {"epochs": 2, "batch_size": 32, "progress_bar": False},
        "eval": {"batch_size": 64},
    }


@pytest.fixture
def make_config(synthetic_file: Path):
    """`make_config(method="dmrnet", **model_fields)` -> a tiny config dict on synthetic data."""

    def make(method: str = "dmrnet", **model: Any) -> dict[str, Any]:
        return tiny_config(synthetic_file, method, **model)

    return make


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: bitwise-reproducible reductions, and faster for tiny
    tensors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def handwritten_available() -> None:
    if not (HANDWRITTEN / "handwritten_6views.mat").is_file():
        pytest.skip("set DMRNET_DATA to the data mirror (CI uses ../shared/data)")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(run directory, config dict) of one tiny dmrnet run trained once per session. Tests must
    not change it: copy it first (shutil.copytree) to damage or extend it."""
    from dmrnet.config import parse_config
    from dmrnet.runs import train

    base = tmp_path_factory.mktemp("trained")
    config = tiny_config(write_synthetic_views(base / "views.npz"), "dmrnet")
    train(parse_config(config), base / "run")
    return base / "run", config


@pytest.fixture(scope="session")
def tiny_files() -> tuple[Any, Any]:
    """(write_synthetic_views, tiny_config) for tests that build their own data files and
    configs (a module's `from conftest import` would be ambiguous beside tests/data/conftest.py)."""
    return write_synthetic_views, tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DMRNet run on the synthetic file (views.npz beside it), trained once per module."""
    from dmrnet.config import parse_config
    from dmrnet.runs import train

    folder = tmp_path_factory.mktemp("tiny-run")
    train(parse_config(tiny_config(write_synthetic_views(folder / "views.npz"))), folder / "run")
    return folder / "run"
