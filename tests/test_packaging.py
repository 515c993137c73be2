"""What a pip-installed dmrnet needs: metadata, package data, entry points of the command line.
(.ci/smoke-wheel builds the wheel and runs it from a fresh venv; these are the quick checks.)"""

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

import dmrnet
from dmrnet.cli import main
from dmrnet.config import PACKAGED_CONFIGS, packaged_configs

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "dmrnet"
tomllib = pytest.importorskip("tomllib")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_metadata_is_an_spdx_expression_with_its_file(pyproject):
    project = pyproject["project"]
    assert project["license"] == "MIT"
    assert all((ROOT / name).is_file() for name in project["license-files"])
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert not any("License ::" in c for c in project.get("classifiers", []))  # SPDX replaces


def test_the_version_is_written_once(pyproject):
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dmrnet.__version__"}
    assert f"## [{dmrnet.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_every_config_and_suite_file_is_package_data(pyproject):
    patterns = pyproject["tool"]["setuptools"]["package-data"]["dmrnet"]
    files = [p for p in PACKAGE.rglob("*.yaml")] + list((PACKAGE / "data").rglob("*.json"))
    assert len(files) > 30
    for path in files:
        relative = path.relative_to(PACKAGE).as_posix()
        # fnmatch's * also crosses "/", so compare depth as setuptools' glob would.
        assert any(
            fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns
        ), f"{relative} is not in [tool.setuptools.package-data]"


def test_version_flag_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dmrnet {dmrnet.__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "dmrnet", "--version"], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"dmrnet {dmrnet.__version__}")


def test_configs_lists_every_packaged_config_and_suite(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    names = packaged_configs()
    assert "handwritten/dmrnet" in names and len(names) == len(list(PACKAGED_CONFIGS.glob("*/*")))
    for name in names:
        assert name in out
    assert "quick" in out and "standard" in out


def test_ci_runs_the_readme_tests_and_the_wheel_smoke_test():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and ".ci/smoke-wheel" in ci
    smoke = (ROOT / ".ci" / "smoke-wheel").read_text()
    assert "torch==2.13.0" in smoke and "train handwritten/dmrnet" in smoke
