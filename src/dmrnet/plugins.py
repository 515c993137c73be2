"""Plugins: user modules that register encoders, methods or datasets into dmrnet's registries.

A plugin is an importable Python module whose import registers something, e.g.

    from dmrnet.nn import ENCODERS

    @ENCODERS.register("tiny-attn")
    def build_tiny_attn(input_shape, out_features, **options): ...

dmrnet imports plugins from three places: the `dmrnet.plugins` entry-point group of installed
packages (every command, automatically), `--import MODULE` on the command line
(`dmrnet.load(..., imports=[...])`, `dmrnet.train(..., imports=[...])` in Python), and the
`plugins` list of a config. A run records the plugin modules its config needs in its config
(RUN_DIR/config.yaml and the checkpoint), so evaluate, predict and resume import them again in a
fresh process; a module that is not installed there is an error that names it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from dmrnet.errors import DmrnetError

if TYPE_CHECKING:
    from dmrnet.config import Config

log = logging.getLogger("dmrnet")

ENTRY_POINT_GROUP = "dmrnet.plugins"

_entry_points_loaded = False


class PluginError(DmrnetError):
    """A plugin module cannot be imported; the message names it."""


def import_plugins(modules: Iterable[str], needed_by: str | None = None) -> None:
    """Import each plugin module (already imported ones are skipped by Python).

    `needed_by` names what asks for the module (a config or checkpoint file), for the error.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            where = (
                f"{needed_by} needs plugin module {module!r}"
                if needed_by
                else f"cannot import plugin module {module!r}"
            )
            raise PluginError(
                f"{where}: {error}; install it or put it on PYTHONPATH (`--import {module}`)"
            ) from None


def load_entry_point_plugins() -> None:
    """Import the plugins installed packages declare under the `dmrnet.plugins` entry-point
    group (once per process), e.g. in a plugin's pyproject.toml:

        [project.entry-points."dmrnet.plugins"]
        my-encoders = "my_package.encoders"
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # a broken third-party plugin: name it, not a traceback
            raise PluginError(
                f"plugin {entry.name!r} ({entry.value}, entry point group {ENTRY_POINT_GROUP!r}) "
                f"failed to import: {type(error).__name__}: {error}"
            ) from None


def _module_of(entry: Any) -> str:
    # Datasets are registered as entries holding their build function; the rest are the
    # builder function or class itself.
    target = getattr(entry, "build", entry)
    return str(getattr(target, "__module__", "") or "")


def required_plugins(config: Config) -> list[str]:
    """The non-dmrnet modules that registered the method, encoders and dataset `config` uses,
    plus the config's own `plugins`: what a fresh process must import to rebuild the run."""
    from dmrnet.data import DATASETS
    from dmrnet.methods import METHODS
    from dmrnet.nn import ENCODERS

    entries = [METHODS.get(config.model.method), DATASETS.get(config.data.name)]
    # Only the vector family names its encoders (dense and SURF networks are built in).
    model = config.model
    encoders = [getattr(model, "encoder", None), *getattr(model, "encoders", {}).values()]
    encoders = [encoder for encoder in encoders if encoder is not None]
    entries += [ENCODERS.get(encoder.name) for encoder in encoders]
    modules = set(config.plugins)
    for entry in entries:
        module = _module_of(entry)
        if module == "dmrnet" or module.startswith("dmrnet."):
            continue
        if module == "__main__":
            log.warning(
                "a registry entry this run uses is defined in the script (__main__): the run "
                "cannot be loaded in another process; move it into a module and --import it"
            )
            continue
        modules.add(module)
    return sorted(modules)


def with_required_plugins(config: Config) -> Config:
    """`config` with `plugins` listing every plugin module it needs (see required_plugins)."""
    return config.model_copy(update={"plugins": required_plugins(config)})
