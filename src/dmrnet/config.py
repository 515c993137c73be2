"""Typed run configuration: YAML files, dotted overrides, errors that name the key.

A run is described by one `Config`: `data` (which dataset and its options), `model` (the method
and its network; each method family extends `ModelConfig` with its own fields), `train` (optimizer,
schedule, devices) and `eval`. Unknown keys and bad values are rejected with the dotted key.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from dmrnet.checks import describe_yaml_error, format_errors
from dmrnet.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(Strict):
    name: str
    root: str | None = Field(None, description="read-only data mirror; default: $DMRNET_DATA")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    options: dict[str, Any] = Field(default_factory=dict)
    num_workers: int = Field(0, ge=0)


class EncoderConfig(Strict):
    name: str = "mlp"
    options: dict[str, Any] = Field(default_factory=dict)


class SamplerConfig(Strict):
    """Training-time modality dropout (see dmrnet.modalities.CombinationSampler)."""

    kind: Literal["uniform", "independent", "fixed", "full"] = "uniform"
    p: float = Field(0.5, ge=0.0, lt=1.0)
    combination: str | None = None


HCRRule = Literal[
    "none", "unimodal-max", "fixed", "incomplete", "variance-by-size", "loss-topk", "loss-weighted"
]


class HCRConfig(Strict):
    """Hard-combination regularizer (see dmrnet.methods.hcr)."""

    rule: HCRRule = "none"
    weight: float = Field(0.2, ge=0.0, description="beta")
    warmup_epochs: int = Field(6, ge=1, description="statistics epochs before HCR switches on")
    k: int = Field(1, ge=1, description="how many combinations the top-k rules pick")
    combinations: list[str] = Field(default_factory=list, description="for rule 'fixed'")
    reselect: bool = Field(False, description="re-pick hard combinations every epoch")


class ModelConfig(Strict):
    """Fields every method has; each method family extends it with the fields it uses (its
    network's, and its head's section from dmrnet.nn.heads), and nothing else."""

    # Fields that every saved config (config.yaml, a checkpoint's stored config) had before each
    # family got its own schema, with the default they were saved with. A schema without such a
    # field drops it when it holds that value, so earlier runs still load; any other value is
    # an unknown key, as for a config written today.
    retired_fields: ClassVar[dict[str, Any]] = {
        "encoder": {"name": "mlp", "options": {}},
        "encoders": {},
        "feature_dim": 128,
        "embed_dim": 128,
    }

    method: str
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    hcr: HCRConfig = Field(default_factory=HCRConfig)

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            key: value
            for key, value in data.items()
            if key in cls.model_fields
            or key not in cls.retired_fields
            or value != cls.retired_fields[key]
        }


class OptimizerConfig(Strict):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0.0)


class SchedulerConfig(Strict):
    name: Literal["none", "step", "multistep", "cosine"] = "cosine"
    step_size: int = Field(70, ge=1)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0.0)
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up from lr/10")


# The values Lightning's Trainer accepts, checked here so that a typo is a config error naming the
# key before anything is built (the strategy name and the accelerator's presence are checked
# against Lightning's registries when a run is planned, see runs.check_trainer).
Precision = Literal["32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"]
# Lightning's short spellings, normalized so a stored config always names the full mode.
PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}


class EarlyStoppingConfig(Strict):
    """Stop a fit when `monitor` has not improved for `patience` validation epochs."""

    patience: int | None = Field(None, ge=1, description="validation epochs; None: off")
    monitor: str | None = Field(None, description="a logged metric; None: checkpoint selection")
    mode: Literal["max", "min"] | None = Field(
        None, description="None: as checkpoint selection, or min for a loss"
    )
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(Strict):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1, description="per device (and per node)")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    precision: Precision = "32-true"
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps", "tpu"] = "cpu"
    devices: int | str | list[int] = Field(1, description="count, -1 / auto (all), or ids")
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    gradient_clip: float | None = Field(None, gt=0.0, description="gradient norm clip")
    accumulate_grad_batches: int = Field(1, ge=1)
    deterministic: bool | Literal["warn"] = False
    loggers: list[Literal["csv", "tensorboard"]] = Field(default_factory=lambda: ["csv"])
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    log_every_n_steps: int = Field(10, ge=1)
    progress_bar: bool = True

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_alias(cls, value: Any) -> Any:
        return PRECISION_ALIASES.get(str(value), value)

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: int | str | list[int]) -> int | str | list[int]:
        if isinstance(value, int) and (value >= 1 or value == -1):
            return value
        if isinstance(value, list) and value and all(i >= 0 for i in value):
            return value
        if isinstance(value, str) and (value == "auto" or _is_id_list(value)):
            return value
        raise ValueError("expected a device count >= 1, -1 or 'auto' (all), or ids like [0, 1]")

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("strategy must name a Lightning strategy, e.g. auto or ddp")
        return value

    @field_validator("loggers")
    @classmethod
    def _unique_loggers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a logger is listed twice")
        return value


def _is_id_list(text: str) -> bool:
    # Lightning's "0,1" (device ids) and "2" (a count given as text).
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return bool(parts) and all(p.isdigit() for p in parts)


EnsembleFit = Literal["none", "global", "size", "combination"]


class EvalConfig(Strict):
    batch_size: int = Field(256, ge=1)
    ensemble_fit: EnsembleFit = Field(
        "none",
        description="how the product-of-experts weight is fitted on validation after training "
        "(model.experts.ensemble): none (model.experts.mix), global, size or combination",
    )
    # Parsed against the method's modalities when a run is planned (runs.plan), before training.
    combinations: list[str] | None = Field(None, description="default: all 2^M - 1", min_length=1)
    availability_p: float = Field(0.5, gt=0.0, lt=1.0, description="for the expected summary")
    availability: dict[str, float] | None = Field(
        None,
        description="per-modality availability probabilities, e.g. {pix: 0.9, fou: 0.5}, of the "
        "expected_availability summary; unnamed modalities: availability_p",
    )
    target_accuracy: float | None = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="accuracy whose confidence threshold (per combination, on validation) and "
        "coverage the calibration report gives; null: none",
    )


class Config(Strict):
    name: str | None = None
    seed: int = 0
    plugins: list[str] = Field(
        default_factory=list,
        description="modules to import before the config is resolved (dmrnet.plugins); a run "
        "records here every plugin module it needs",
    )
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# The package whose import registers every method (and with it each method's schema). It is
# named, not imported: dmrnet.methods builds on this module, so importing it here would make the
# two depend on each other.
METHODS_PACKAGE = "dmrnet.methods"


@functools.cache
def _config_class(method: str) -> type[Config]:
    """`Config` whose `model` field has the method's own schema."""
    methods = importlib.import_module(METHODS_PACKAGE)
    model_class = methods.METHODS.get(method).config_class
    return create_model(f"Config[{method}]", __base__=Config, model=(model_class, ...))


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a config dict; errors name the dotted key (and the file, as `source`)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    _import_config_plugins(raw, source)
    model = raw.get("model")
    if not isinstance(model, dict) or "method" not in model:
        raise ConfigError(f"{source}: model.method: required key is missing")
    try:
        config_class = _config_class(str(model["method"]))
    except LookupError as error:
        raise ConfigError(f"{source}: model.method: {error}") from None
    try:
        return config_class.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_errors(error, source)) from None


def _import_config_plugins(raw: dict[str, Any], source: str) -> None:
    """Plugins first: the method, encoders and dataset a config names may come from them."""
    from dmrnet.plugins import import_plugins, load_entry_point_plugins

    load_entry_point_plugins()
    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{source}: plugins: expected a list of module names, got {plugins!r}")
    import_plugins(plugins, needed_by=source)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML (`1e-3`, `[a, b]`, `true`)."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. train.epochs=10")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(
                f"--set {override!r}: value is not valid YAML: {describe_yaml_error(error)}"
            ) from None
        node = raw
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {override!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {describe_yaml_error(error)}") from None
    return raw if raw is not None else {}


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs shipped with dmrnet (`handwritten/dmrnet`, ...), sorted."""
    return sorted(
        p.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix()
        for p in PACKAGED_CONFIGS.glob("*/*.yaml")
    )


def resolve_config(ref: str | Path, base: Path | None = None) -> Path:
    """A config file: `ref` as a path (relative to `base` if given), else a packaged name.

    `handwritten/dmrnet` (or `handwritten/dmrnet.yaml`) names a config shipped in the package, so
    an installed dmrnet runs without the repository; an existing file always wins. A `.yaml` path
    that exists nowhere is returned as is, so reading it names the missing file.
    """
    path = Path(ref)
    candidate = path if path.is_absolute() or base is None else base / path
    if candidate.exists() or path.is_absolute():
        return candidate
    packaged = PACKAGED_CONFIGS / f"{path.as_posix().removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    if path.suffix in (".yaml", ".yml"):
        return candidate
    raise ConfigError(
        f"{ref}: no such config file, and no packaged config of that name "
        "(`dmrnet configs` lists them, e.g. handwritten/dmrnet)"
    )


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a config file or packaged config name, with dotted overrides applied."""
    resolved = resolve_config(path)
    raw = apply_overrides(read_yaml(resolved), overrides or [])
    return parse_config(raw, source=str(path))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
