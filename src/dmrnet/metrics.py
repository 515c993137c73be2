"""Summaries of a metric over modality combinations (shared/DESIGN.md section 3)."""

from __future__ import annotations

from collections.abc import Sequence

from dmrnet.modalities import Combination, ModalitySet, availability_weights


def summarize(
    values: Sequence[float],
    combinations: Sequence[Combination],
    modalities: ModalitySet,
    higher_is_better: bool = True,
    availability_p: float = 0.5,
) -> dict[str, float | None]:
    """mean over combinations, worst, full-modality value, and the expected value when every
    modality is available independently with probability p (renormalized to the non-empty
    combinations evaluated)."""
    if not values:
        raise ValueError("no combinations to summarize")
    worst = min(values) if higher_is_better else max(values)
    full = modalities.full
    weights = availability_weights(modalities, combinations, availability_p)
    return {
        "mean": sum(values) / len(values),
        "worst": worst,
        "full": values[list(combinations).index(full)] if full in combinations else None,
        f"expected_p{availability_p:g}": sum(w * v for w, v in zip(weights, values, strict=True)),
    }
