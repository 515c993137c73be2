"""Train and evaluate from Python, as the command line does (docs/python-api.md).

report = dmrnet.train("handwritten/dmrnet", "runs/hw", overrides=["train.epochs=20"])
report = dmrnet.evaluate("runs/hw", combinations=["mor", "pix+fou"])
report.summary()  # mean, worst, full, expected_p...
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dmrnet import runs
from dmrnet.config import Config, apply_overrides, load_config, parse_config
from dmrnet.errors import ConfigError
from dmrnet.evaluate import EvaluationReport
from dmrnet.plugins import import_plugins


def as_config(
    config: Config | Mapping[str, Any] | str | Path, overrides: Sequence[str] = ()
) -> Config:
    """A validated Config from a Config, a config dict, a YAML file or a packaged config name
    (`handwritten/dmrnet`), with `--set`-style overrides (`"train.epochs=5"`) applied."""
    if isinstance(config, (str, Path)):
        return load_config(config, list(overrides))
    if isinstance(config, Config):
        if not overrides:
            return config
        raw, source = config.to_dict(), "config"
    elif isinstance(config, Mapping):
        raw, source = copy.deepcopy(dict(config)), "config dict"
    else:
        raise ConfigError(
            "config: expected a Config, a dict, a file or a config name, got "
            f"{type(config).__name__}"
        )
    return parse_config(apply_overrides(raw, list(overrides)), source=source)


def train(
    config: Config | Mapping[str, Any] | str | Path,
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    imports: Sequence[str] = (),
    data_root: str | Path | None = None,
    resume: bool = False,
) -> EvaluationReport | None:
    """Train like `dmrnet train`: fit into `run_dir` (config.yaml, checkpoints, logs), then
    evaluate every combination on the test split and write results.{json,csv,md,png}.

    Returns the test report (None on the non-zero ranks of a distributed run).
    """
    import_plugins(imports)
    return runs.train(as_config(config, overrides), run_dir, data_root=data_root, resume=resume)


def evaluate(
    path: str | Path,
    split: str = "test",
    combinations: Sequence[str] | None = None,
    data_root: str | Path | None = None,
    out_dir: str | Path | None = None,
    imports: Sequence[str] = (),
) -> EvaluationReport:
    """Evaluate a run directory or checkpoint like `dmrnet evaluate`: every combination (or the
    given ones, e.g. `["mor", "pix+fou"]`) of `split`; writes the reports into `out_dir`
    (default: RUN/evaluations/<split>-<checkpoint>[-<combinations>], never over the run's own
    results). `report.summary()` gives mean / worst / full."""
    import_plugins(imports)
    report, _ = runs.evaluate_run(
        path,
        split=split,
        combinations=list(combinations) if combinations else None,
        data_root=data_root,
        out_dir=out_dir,
    )
    return report
