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
        analyses: [ladder, variance]    # extra report sections (dmrnet.bench.analysis.ANALYSES)
        ladder: [dmrnet, hemis@eer]     # optional: the ladder's rungs (label or label@evaluation)
        evaluations:            # optional: each run's best checkpoint evaluated again on the
          eer: [data.options.threshold=eer]   # test split under other decision options
        methods:
          dmrnet: {config: handwritten/dmrnet}
          hemis: {config: handwritten/hemis, overrides: [model.head_norm=false]}

Every (dataset, method, seed) is one *job*, trained into OUT/runs/<dataset>/<method>/seed<seed>/;
an evaluation <name> of it writes OUT/runs/<dataset>/<method>/seed<seed>/evaluations/<name>/.
An evaluation may only change `data.options.*` and `eval.*` (what decides, not what trains).

A suite with `kind: throughput` is a different file: models timed on random inputs
(dmrnet.bench.throughput).
All configs are parsed (and checked to share their data section within a dataset) before anything
trains, so a bad suite fails at once with the key that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dmrnet.checks import format_errors
from dmrnet.config import (
    Config,
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


EVALUATION_KEYS = ("data.options.", "eval.")  # what an extra evaluation may change


class DatasetEntry(_Strict):
    overrides: list[str] = Field(default_factory=list)
    evaluations: dict[str, list[str]] = Field(default_factory=dict)
    analyses: list[str] = Field(default_factory=list)  # dmrnet.bench.analysis.ANALYSES
    # The `ladder` analysis's rungs, bottom first: method labels, or `label@evaluation` for an
    # extra evaluation of a method's runs (default: every method in suite order).
    ladder: list[str] = Field(default_factory=list)
    methods: dict[str, MethodEntry]


class SpeedSettings(_Strict):
    enabled: bool = True
    train_steps: int = Field(10, ge=1, description="timed training steps per repeat")
    warmup_steps: int = Field(3, ge=0, description="untimed steps first")
    repeats: int = Field(5, ge=1, description="timings of each kind; the median is reported")
    isolate: bool = Field(True, description="measure in a fresh process (clean memory peaks)")


class Suite(_Strict):
    kind: Literal["training"] = "training"
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
    # Extra test evaluations of the trained run: name -> the config they evaluate with.
    evaluations: dict[str, Config] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.method}/seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.dataset / self.method / f"seed{self.seed}"

    def evaluation_dir(self, out: Path, name: str) -> Path:
        return self.run_dir(out) / "evaluations" / name


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
        raise ConfigError(format_errors(error, str(path))) from None
    _check_analyses(suite, path)
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
                config = _parse(config_path, run_overrides, where)
                evaluations = {
                    name: _parse(config_path, [*run_overrides, *changes], where)
                    for name, changes in _evaluations(entry, f"{path}: datasets.{dataset}")
                }
                jobs.append(Job(dataset, method, seed, config, config_path, evaluations))
        _check_same_data(jobs, dataset, path)
    if not jobs:
        raise ConfigError(f"{path}: the selection has no runs")
    return LoadedSuite(suite=suite, path=path, jobs=jobs, overrides=extra)


def _parse(config_path: Path, overrides: list[str], where: str) -> Config:
    try:
        return parse_config(apply_overrides(read_yaml(config_path), overrides), str(config_path))
    except DmrnetError as error:
        raise ConfigError(f"{where}: {error}") from None


def _evaluations(entry: DatasetEntry, where: str) -> list[tuple[str, list[str]]]:
    """The dataset's extra evaluations; each may change only what decides, not what trains
    (the trained weights must fit the evaluated model)."""
    for name, changes in entry.evaluations.items():
        for change in changes:
            if not change.strip().startswith(EVALUATION_KEYS):
                raise ConfigError(
                    f"{where}.evaluations.{name}: {change!r} changes what trains; an evaluation "
                    f"may only set keys under {' or '.join(k + '*' for k in EVALUATION_KEYS)}"
                )
    return list(entry.evaluations.items())


def _check_analyses(suite: Suite, path: Path) -> None:
    from dmrnet.bench.analysis import ANALYSES

    for dataset, entry in suite.datasets.items():
        for name in entry.analyses:
            if name not in ANALYSES:
                raise ConfigError(
                    f"{path}: datasets.{dataset}.analyses: no analysis {name!r}; known: "
                    f"{', '.join(ANALYSES)}"
                )
        for label in entry.ladder:
            method, _, evaluation = label.partition("@")
            if method not in entry.methods or (evaluation and evaluation not in entry.evaluations):
                raise ConfigError(
                    f"{path}: datasets.{dataset}.ladder: {label!r} is not a method label "
                    f"({', '.join(entry.methods)}) or label@evaluation "
                    f"({', '.join(entry.evaluations) or 'no evaluations'})"
                )


def suite_kind(path: Path) -> str:
    """'training' (methods x datasets x seeds) or 'throughput' (dmrnet.bench.throughput)."""
    raw = read_yaml(path)
    kind = raw.get("kind", "training") if isinstance(raw, dict) else "training"
    if kind not in ("training", "throughput"):
        raise ConfigError(f"{path}: kind: {kind!r}, expected training or throughput")
    return str(kind)


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
