"""A presentation-attack-detection stand-in built from real data: Handwritten, made binary.

CASIA-SURF and CeFA cannot be shipped, so the PAD path (the `pad` task, APCER / BPCER / ACER per
modality combination, the equal-error threshold) is checked on a real three-view binary task:
the UCI handwritten digits (see handwritten.py) with views pix / fou / kar by default, where
digits 0-4 play "bona fide" (label 1, as in the CASIA-SURF lists) and digits 5-9 play "attack"
(label 0). It is a classification problem dressed as PAD, not face anti-spoofing: its numbers say
that the metric path works, not how well faces are protected.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmrnet.data import handwritten
from dmrnet.data.base import ArrayMultiModalDataset, DataSpec, DataSplits, register_dataset
from dmrnet.data.store import DataStore

DEFAULT_VIEWS = ["pix", "fou", "kar"]
BONA_FIDE = 1  # digits below ATTACK_FROM
ATTACK_FROM = 5  # digits 5-9 are the "attacks" (label 0)
CLASS_NAMES = ("attack (digit 5-9)", "bona fide (digit 0-4)")


class HandwrittenPADOptions(BaseModel):
    """`data.options` for handwritten-pad."""

    model_config = ConfigDict(extra="forbid")

    views: list[str] = Field(default_factory=lambda: list(DEFAULT_VIEWS))
    threshold: Literal["argmax", "eer"] = Field(
        "argmax", description="argmax, or the validation split's equal-error threshold"
    )

    @field_validator("views")
    @classmethod
    def _known_views(cls, views: list[str]) -> list[str]:
        known = list(handwritten.HANDWRITTEN_VIEWS)
        if not views or len(set(views)) != len(views) or any(v not in known for v in views):
            raise ValueError(f"give distinct views of {', '.join(known)}")
        return [view for view in known if view in views]  # canonical order


def _binary(dataset: ArrayMultiModalDataset, source: str) -> ArrayMultiModalDataset:
    """The same rows labelled 1 (bona fide, digit < 5) or 0 (attack, digit >= 5)."""
    labels = (dataset.targets.numpy() < ATTACK_FROM).astype(np.int64)
    return ArrayMultiModalDataset(
        dataset.modalities, dataset.inputs, labels, 2, present=dataset.present, source=source
    )


@register_dataset(
    "handwritten-pad",
    options=HandwrittenPADOptions,
    description="Handwritten as a PAD stand-in: digits 0-4 bona fide, 5-9 attack (pix/fou/kar)",
    files=(handwritten.HANDWRITTEN_FILE,),
)
def build(
    options: HandwrittenPADOptions, store: DataStore, val_fraction: float, seed: int
) -> DataSplits:
    """Handwritten's splits (validation stratified by digit, so by class too), relabelled."""
    digits = handwritten.build(
        handwritten.HandwrittenOptions(views=options.views), store, val_fraction, seed
    )
    spec = digits.spec
    return DataSplits(
        spec=DataSpec(
            name="handwritten-pad",
            modalities=spec.modalities,
            input_shapes=spec.input_shapes,
            task="pad",
            num_classes=2,
            class_names=CLASS_NAMES,
            input_stats=spec.input_stats,
            extra={"bona_fide_class": BONA_FIDE, "threshold": options.threshold},
        ),
        train=_binary(digits.train, "handwritten-pad (train)"),
        val=_binary(digits.val, "handwritten-pad (validation)"),
        test=_binary(digits.test, "handwritten-pad (test)"),
    )
