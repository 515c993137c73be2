"""Multi-stage training: a method that trains in several stages declares them here.

Most methods train in one stage. A method such as MMANet (a full-modality teacher first, then a
student distilled from it) implements `StagedMethod`: `runs.train` fits each declared stage in turn
with its own epochs, checkpoints and selection metric, loads the stage's best weights, and calls
`begin_stage` before each one. The user runs one `dmrnet train`; `--resume` continues whichever
stage was interrupted. The engine never asks which method it is, only whether it has stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class TrainingStage:
    name: str  # also the folder of the stage's checkpoints: RUN_DIR/stages/<name>/
    epochs: int
    # The logged validation value that selects the stage's best checkpoint ("val/mean": the mean
    # over combinations; "val/full": the full-modality value, for a full-modality teacher).
    monitor: str = "val/mean"


@runtime_checkable
class StagedMethod(Protocol):
    def training_stages(self, epochs: int) -> list[TrainingStage]:
        """The stages in training order; `epochs` is `train.epochs` of the config. The last
        stage produces the model that is evaluated and deployed."""
        ...

    def begin_stage(self, name: str) -> None:
        """Switch the method to stage `name` (what trains, what is frozen, what decode uses).
        Called before each stage's fit, also when a stage is resumed."""
        ...
