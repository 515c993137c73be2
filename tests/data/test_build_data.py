from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmrnet.data import DATASETS, build_data
from dmrnet.errors import ConfigError, UnknownNameError


def test_importing_dmrnet_data_registers_the_builtin_datasets() -> None:
    assert {"handwritten", "multiview"} <= set(DATASETS.names())


def test_unknown_dataset_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'mnist'.*handwritten"):
        build_data("mnist", {}, None, 0.1, 0)


def test_missing_required_option_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.options\.path: required option is missing"):
        build_data("multiview", {}, None, 0.1, 0)


def test_wrongly_typed_option_names_the_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.options\.test_fraction: .*\(got 2\)"):
        build_data("multiview", {"path": str(tmp_path / "x.npz"), "test_fraction": 2}, None, 0.1, 0)


@pytest.mark.parametrize("val_fraction", [0.0, 1.0])
def test_validation_fraction_must_leave_train_and_validation_rows(
    tmp_path: Path, val_fraction: float
) -> None:
    path = tmp_path / "tiny.npz"
    np.savez(path, a=np.zeros((4, 2)), y=np.array([0, 0, 1, 1]))
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        build_data("multiview", {"path": str(path)}, None, val_fraction, 0)
