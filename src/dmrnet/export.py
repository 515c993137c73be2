"""Export a trained run as a graph that takes whatever sensors are left.

    dmrnet export RUN --format onnx              # RUN/export/model.onnx
    dmrnet export RUN --format torchscript       # RUN/export/model.torchscript.pt
    dmrnet export RUN --format exported-program  # RUN/export/model.pt2

The graph's inputs are every modality's raw (unstandardized) samples, in the run's modality
order, plus one presence mask `present` (B, M) of booleans; its output is the class
probabilities (B, K) ((B, K, H, W) for segmentation), computed by `Predictor.probabilities`, the
same step `dmrnet predict` uses (and so calibrated where the run has a calibration). The batch
size is dynamic. Absent modalities still need an input of the right shape: its values are
ignored (zeroed before the encoders).

There is no data-dependent control flow: every encoder runs on every row (`encode(inputs,
None)`) and `decode` masks the absent modalities. In evaluation mode an encoder treats each row
on its own (BatchNorm uses its running statistics), so this equals `predict`, which encodes only
the rows that have a modality; `tests/test_export.py` checks it for every combination.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dmrnet.api import Predictor
from dmrnet.errors import DmrnetError

MASK_INPUT = "present"
OUTPUT = "probabilities"
EXAMPLE_BATCH = 3  # not 0 or 1: torch.export specializes those sizes


class DeployedModel(nn.Module):
    """forward(*modality inputs, present (B, M) bool) -> class probabilities."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.method = predictor.method
        self.names = predictor.modalities.names
        self.probabilities = predictor.probabilities  # the hook predict uses too

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *samples, present = inputs
        present = present.to(torch.bool)
        # Absent rows may hold anything (NaN included): they become the placeholder zeros that
        # predict passes, so no NaN can leak through a masked multiplication.
        full = {
            name: torch.where(present[:, index].view(-1, *[1] * (x.dim() - 1)), x, 0.0)
            for index, (name, x) in enumerate(zip(self.names, samples, strict=True))
        }
        features = self.method.encode(full, None)  # every encoder on every row
        output = self.method.decode(features, present)
        return self.probabilities(output.logits, present)


def example_inputs(predictor: Predictor, batch: int = EXAMPLE_BATCH) -> tuple[torch.Tensor, ...]:
    """Inputs of the graph's shapes: random samples and a mask holding different combinations."""
    generator = torch.Generator().manual_seed(0)
    samples = [
        torch.randn(batch, *predictor.spec.input_shapes[name], generator=generator)
        for name in predictor.modalities.names
    ]
    count = len(predictor.modalities)
    present = torch.rand(batch, count, generator=generator) < 0.5
    present[torch.arange(batch), torch.arange(batch) % count] = True  # one modality at least
    return (*samples, present)


def input_names(predictor: Predictor) -> list[str]:
    names = list(predictor.modalities.names)
    if MASK_INPUT in names:
        raise DmrnetError(
            f"a modality is named {MASK_INPUT!r}, the name of the exported mask input; rename it"
        )
    return [*names, MASK_INPUT]


def _dynamic_batch(count: int) -> tuple[dict[int, torch.export.Dim], ...]:
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} for _ in range(count))


def _export_program(
    model: DeployedModel, inputs: tuple[torch.Tensor, ...]
) -> torch.export.ExportedProgram:
    try:
        return torch.export.export(model, inputs, dynamic_shapes=(_dynamic_batch(len(inputs)),))
    except Exception as error:  # torch raises many types for untraceable code
        raise DmrnetError(
            f"method {model.method.config.method!r} cannot be exported without data-dependent "
            f"control flow: {_first_line(error)}"
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _write_onnx(model: DeployedModel, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    program = _export_program(model, inputs)
    names = [*model.names, MASK_INPUT]
    try:
        onnx_program = torch.onnx.export(
            program, inputs, input_names=names, output_names=[OUTPUT], dynamo=True, verbose=False
        )
    except ImportError as error:
        raise DmrnetError(
            f"ONNX export needs the export extra ({error}); {INSTALL_EXPORT}"
        ) from None
    onnx_program.save(str(path))


INSTALL_EXPORT = "pip install 'dmrnet[export]' (onnx, onnxscript, onnxruntime)"


def _write_torchscript(model: DeployedModel, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    # Tracing, not scripting: the methods are typed Python (pydantic configs) that TorchScript
    # cannot compile. The traced graph has no branches, since the model has none to record.
    traced = torch.jit.trace(model, inputs, check_trace=False, strict=False)
    traced.save(str(path))


def _write_exported_program(
    model: DeployedModel, inputs: tuple[torch.Tensor, ...], path: Path
) -> None:
    torch.export.save(_export_program(model, inputs), str(path))


@dataclass(frozen=True)
class ExportFormat:
    suffix: str
    write: Callable[[DeployedModel, tuple[torch.Tensor, ...], Path], None]


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(".onnx", _write_onnx),
    "torchscript": ExportFormat(".torchscript.pt", _write_torchscript),
    "exported-program": ExportFormat(".pt2", _write_exported_program),
}


def default_path(checkpoint: Path, fmt: str) -> Path:
    """RUN/export/model<suffix> for RUN/checkpoints/*.ckpt; beside any other checkpoint."""
    folder = checkpoint.parent
    folder = folder.parent / "export" if folder.name == "checkpoints" else folder
    return folder / f"model{FORMATS[fmt].suffix}"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    inputs: list[str]  # the graph's input names, in order
    combinations: int  # how many modality combinations the check compared
    max_difference: float  # max |exported - predict| over their probabilities


TOLERANCE = 1e-4


def export(run: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> ExportResult:
    """Export run (a run directory or checkpoint) in format `fmt`, load the file back with its
    runtime and check it against `predict` on every modality combination; a file that
    disagrees by more than TOLERANCE is removed and refused."""
    if fmt not in FORMATS:
        raise DmrnetError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    predictor = run if isinstance(run, Predictor) else Predictor(run)
    names = input_names(predictor)  # refuses a clash of names before any work
    if out is not None:
        path = Path(out)
        if not path.parent.is_dir():
            raise DmrnetError(f"--out {path}: folder {path.parent} does not exist")
    else:
        path = default_path(predictor.checkpoint, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
    model = DeployedModel(predictor).eval()
    with torch.no_grad(), _quiet_exporters():
        FORMATS[fmt].write(model, example_inputs(predictor), path)
        try:
            exported = load_exported(path)
            differences = compare_combinations(predictor, exported, check_samples(predictor))
        except Exception as error:  # e.g. a traced graph that baked in one batch's routing
            path.unlink()
            raise DmrnetError(
                f"the {fmt} export of {predictor.config.model.method!r} fails on a new batch "
                f"({_first_line(error)}); nothing written"
            ) from None
    worst = max(differences, key=differences.__getitem__)
    if not differences[worst] <= TOLERANCE:
        path.unlink()
        raise DmrnetError(
            f"the {fmt} export of {predictor.config.model.method!r} differs from predict by "
            f"{differences[worst]:.2e} on {worst} (tolerance {TOLERANCE}); nothing written"
        )
    return ExportResult(path, names, len(differences), differences[worst])


def check_samples(predictor: Predictor, batch: int = 4) -> list[torch.Tensor]:
    """Inputs like the training data: mean + std * noise with the model's own statistics, so the
    check exercises realistic (not saturated) probabilities. A batch other than the example's."""
    generator = torch.Generator().manual_seed(1)
    samples = []
    for name in predictor.modalities.names:
        shape = predictor.spec.input_shapes[name]
        noise = torch.randn(batch, *shape, generator=generator)
        standardize = predictor.method.standardize[name]
        samples.append(noise * standardize.std + standardize.mean if standardize.enabled else noise)
    return samples


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """torch.export and torch.onnx log graph dumps and optional-dependency notes at WARNING; a
    failure is reported as one line instead."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def load_exported(path: str | Path) -> Callable[..., torch.Tensor]:
    """The exported graph at `path` as a function (*inputs, present) -> probabilities, loaded
    with the format's own runtime: onnxruntime, torch.jit.load or torch.export.load."""
    path = Path(path)
    name = path.name
    if name.endswith(".onnx"):
        import numpy as np

        try:
            import onnxruntime
        except ImportError:
            raise DmrnetError(f"loading {path} needs onnxruntime; {INSTALL_EXPORT}") from None

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = [i.name for i in session.get_inputs()]

        def run_onnx(*inputs: torch.Tensor) -> torch.Tensor:
            arrays = {k: np.asarray(v) for k, v in zip(feeds, inputs, strict=True)}
            return torch.from_numpy(session.run([OUTPUT], arrays)[0])

        return run_onnx
    if name.endswith(".pt2"):
        return torch.export.load(str(path)).module()
    if name.endswith(".pt"):
        return torch.jit.load(str(path))
    raise DmrnetError(f"{path}: not an exported model (.onnx, .torchscript.pt or .pt2)")


def compare_combinations(
    predictor: Predictor,
    exported: Callable[..., torch.Tensor],
    samples: Sequence[torch.Tensor],
) -> dict[str, float]:
    """Max |exported - predict| over the probabilities of every modality combination, for
    `samples` (one tensor per modality, in order)."""
    differences = {}
    modalities = predictor.modalities
    for combination in modalities.combinations():
        mask = modalities.mask(combination)
        inputs = {modalities.names[i]: samples[i] for i in combination}
        expected = predictor.predict(inputs).probabilities
        present = mask.expand(samples[0].shape[0], -1).contiguous()
        with torch.no_grad():
            got = exported(*samples, present)
        differences[modalities.format(combination)] = float((got - expected).abs().max())
    return differences
