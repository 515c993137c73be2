"""Benchmark suites: which methods run on which datasets with which seeds.

A suite is a YAML file (the packaged ones: dmrnet/bench/suites/*.yaml):

    name: standard
    description: one paragraph for the report
    base: .                     # config file paths are relative to this folder (relative to the
                                # file); a packaged config name (handwritten/dmrnet) works too
    reference: dmrnet           # the method label every other method is compared with
    seeds: [0, 1, 2]
    overrides: [train.epochs=20]        # applied to every run (dotted `--set` syntax)
    speed: {train_steps: 20, repeats: 5}
    datasets:
      handwritten:              # a label; one section per dataset
        overrides: []           # applied to this dataset's runs
        methods:
          dmrnet: {config: handwritten/dmrnet}
          hemis: {config: handwritten/hemis, overrides: [model.head_norm=false]}

Every (dataset, method, seed) is one *job*, trained into OUT/runs/<dataset>/<method>/seed<seed>/.
All configs are parsed (and checked to share their data section within a dataset) before anything
trains, so a bad suite fails at once with the key that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dmrnet.config import (
    Config,
    _format_errors,
    apply_overrides,
    parse_config,
    read_yaml,
    resolve_config,
)
from dmrnet.errors import ConfigError, DmrnetError

SUITES_DIR = Path(__file__).parent / "suites"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodEntry(_Strict):
    config: str
    overrides: list[str] = Field(default_factory=list)


class DatasetEntry(_Strict):
    overrides: list[str] = Field(default_factory=list)
    methods: dict[str, MethodEntry]


class SpeedSettings(_Strict):
    enabled: bool = True
    train_steps: int = Field(10, ge=1, description="timed training steps per repeat")
    warmup_steps: int = Field(3, ge=0, description="untimed steps first")
    repeats: int = Field(5, ge=1, description="timings of each kind; the median is reported")
    isolate: bool = Field(True, description="measure in a fresh process (clean memory peaks)")


class Suite(_Strict):
    name: str
    description: str = ""
    base: str = "."
    reference: str = "dmrnet"
    seeds: list[int] = Field(min_length=1)
    overrides: list[str] = Field(default_factory=list)
    speed: SpeedSettings = Field(default_factory=SpeedSettings)
    datasets: dict[str, DatasetEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Job:
    dataset: str
    method: str  # the label in the suite
    seed: int
    config: Config
    config_path: Path

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.method}/seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.dataset / self.method / f"seed{self.seed}"


@dataclass
class LoadedSuite:
    suite: Suite
    path: Path
    jobs: list[Job]
    overrides: list[str]  # from the command line, on top of the suite's

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(job.dataset for job in self.jobs))

    def methods(self, dataset: str) -> list[str]:
        return list(dict.fromkeys(job.method for job in self.jobs if job.dataset == dataset))

    def seeds(self) -> list[int]:
        return list(dict.fromkeys(job.seed for job in self.jobs))

    def jobs_of(self, dataset: str, method: str) -> list[Job]:
        return [j for j in self.jobs if j.dataset == dataset and j.method == method]


def find_suite(name_or_path: str) -> Path:
    """A suite file path, or the name of a suite shipped in the package (dmrnet/bench/suites/)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = SUITES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml")) if SUITES_DIR.is_dir() else []
    hint = f"; suites in {SUITES_DIR}: {', '.join(known)}" if known else ""
    raise ConfigError(f"no suite file {name_or_path!r} (and no {candidate}){hint}")


def _subset(
    requested: list[str] | None, available: list[str], what: str, source: Path
) -> list[str]:
    if not requested:
        return available
    unknown = [r for r in requested if r not in available]
    if unknown:
        raise ConfigError(
            f"{source}: no {what} {unknown[0]!r} in the suite; it has {', '.join(available)}"
        )
    return [a for a in available if a in requested]


def load_suite(
    name_or_path: str,
    overrides: list[str] | None = None,
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
) -> LoadedSuite:
    """Parse a suite and every job's config (optionally a slice: some seeds/methods/datasets)."""
    path = find_suite(name_or_path)
    raw = read_yaml(path)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, str(path))) from None
    base = (path.parent / suite.base).resolve()
    extra = list(overrides or [])
    chosen_seeds = suite.seeds
    if seeds:
        missing = [s for s in seeds if s not in suite.seeds]
        if missing:
            raise ConfigError(
                f"{path}: seed {missing[0]} is not in the suite's seeds {suite.seeds}"
            )
        chosen_seeds = [s for s in suite.seeds if s in seeds]
    jobs: list[Job] = []
    for dataset in _subset(datasets, list(suite.datasets), "dataset", path):
        entry = suite.datasets[dataset]
        if suite.reference not in entry.methods:
            raise ConfigError(
                f"{path}: datasets.{dataset}.methods: no method {suite.reference!r} (the suite's "
                "reference, that every other method is compared with)"
            )
        for method in _subset(methods, list(entry.methods), "method", path):
            spec = entry.methods[method]
            where = f"{path}: datasets.{dataset}.methods.{method}"
            try:
                config_path = resolve_config(spec.config, base=base)
            except ConfigError as error:
                raise ConfigError(f"{where}.config: {error}") from None
            for seed in chosen_seeds:
                run_overrides = [
                    *suite.overrides,
                    *entry.overrides,
                    *spec.overrides,
                    *extra,
                    f"seed={seed}",
                    # The bench shows its own progress; runs log to their train.log.
                    "train.progress_bar=false",
                ]
                try:
                    config = parse_config(
                        apply_overrides(read_yaml(config_path), run_overrides), str(config_path)
                    )
                except DmrnetError as error:
                    raise ConfigError(f"{where}: {error}") from None
                jobs.append(Job(dataset, method, seed, config, config_path))
        _check_same_data(jobs, dataset, path)
    if not jobs:
        raise ConfigError(f"{path}: the selection has no runs")
    return LoadedSuite(suite=suite, path=path, jobs=jobs, overrides=extra)


def _check_same_data(jobs: list[Job], dataset: str, path: Path) -> None:
    """Methods are compared on one dataset only if they see the same data (per seed)."""
    first: dict[int, tuple[str, dict[str, Any]]] = {}
    for job in jobs:
        if job.dataset != dataset:
            continue
        data = job.config.data.model_dump(mode="json")
        if job.seed not in first:
            first[job.seed] = (job.method, data)
        elif first[job.seed][1] != data:
            raise ConfigError(
                f"{path}: datasets.{dataset}: methods {first[job.seed][0]!r} and {job.method!r} "
                "have different `data` sections; every method of a dataset must see the same data"
            )
