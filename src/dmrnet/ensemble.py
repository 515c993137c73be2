"""The product-of-experts mixing weights, fitted on the validation split after training.

With unimodal experts and `model.experts.ensemble` (dmrnet.nn.heads.UnimodalExperts) a method
predicts combination S with

    log softmax(fused logits) + w_S * mean over m in S of log softmax(expert_m)

`eval.ensemble_fit` decides how w_S is chosen once the best checkpoint is known:

- `none`: the configured `model.experts.mix` for every combination;
- `global`: one weight for all combinations, the grid value with the best validation mean of the
  headline metric over all combinations;
- `size`: one weight per combination size (all singles, all pairs, ...), each the best mean over
  the combinations of that size;
- `combination`: one weight per combination, each the best on that combination alone.

The candidates are `GRID`; a tie goes to the value nearest the configured `mix`. Each candidate
costs one validation pass over every combination (encoders once per batch), so the fit costs
len(GRID) validation passes. The weights are stored in the checkpoint with the other weights
(a buffer of the head), so evaluate, predict, export and the Python API use them; what was
fitted, and the validation score of every candidate, goes into results.json ("ensemble").
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from dmrnet.config import EnsembleFit
from dmrnet.modalities import Combination

GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def _groups(combinations: Sequence[Combination], granularity: EnsembleFit) -> list[list[int]]:
    """The indices of the combinations that share one weight."""
    if granularity == "global":
        return [list(range(len(combinations)))]
    if granularity == "size":
        sizes = sorted({len(c) for c in combinations})
        return [[i for i, c in enumerate(combinations) if len(c) == s] for s in sizes]
    return [[i] for i in range(len(combinations))]


def choose(
    scores: torch.Tensor, groups: list[list[int]], default: float, higher_is_better: bool
) -> list[float]:
    """The grid value of each group: scores (G, C) of the G candidates on the C combinations
    (NaN: no validation sample), best mean over the group's combinations, ties to `default`."""
    chosen = []
    for group in groups:
        values = scores[:, group].nanmean(1)  # (G,)
        if bool(values.isnan().all()):  # no validation sample of this group
            chosen.append(default)
            continue
        best = values.max() if higher_is_better else values.min()
        ties = [g for g in range(len(GRID)) if bool(values[g] == best)]
        chosen.append(GRID[min(ties, key=lambda g: abs(GRID[g] - default))])
    return chosen


@torch.no_grad()
def fit_ensemble(
    method: Any,
    loader: DataLoader,
    granularity: EnsembleFit,
    device: str | torch.device = "cpu",
) -> dict[str, Any] | None:
    """Set the method's mixing weights as `granularity` says (see the module docstring) and
    return what was chosen; None for a method that predicts without an ensemble."""
    from dmrnet.evaluate import evaluate_combinations

    experts = getattr(method, "experts", None)
    if experts is None or not experts.ensemble:
        return None
    started = time.perf_counter()
    default = float(method.config.experts.mix)
    modalities = method.modalities
    combinations = modalities.combinations()
    names = [modalities.format(c) for c in combinations]
    if granularity == "none":
        experts.set_mix(dict.fromkeys(combinations, default))
        return {"fit": "none", "weights": dict.fromkeys(names, default)}
    headline = method.task.headline
    scores = torch.full((len(GRID), len(combinations)), math.nan, dtype=torch.float64)
    for index, weight in enumerate(GRID):
        experts.set_mix(dict.fromkeys(combinations, weight))
        results = evaluate_combinations(method, loader, combinations, device)
        scores[index] = torch.tensor([r.metrics[headline.name] for r in results])
    groups = _groups(combinations, granularity)
    weights = dict.fromkeys(range(len(combinations)), default)
    chosen = choose(scores, groups, default, headline.higher_is_better)
    for group, value in zip(groups, chosen, strict=True):
        weights.update(dict.fromkeys(group, value))
    experts.set_mix({combinations[i]: w for i, w in weights.items()})
    return {
        "fit": granularity,
        "metric": headline.name,
        "grid": list(GRID),
        "weights": {names[i]: w for i, w in weights.items()},
        # Validation score of every candidate, per combination (None: no sample).
        "validation": {
            name: [None if math.isnan(v) else v for v in scores[:, i].tolist()]
            for i, name in enumerate(names)
        },
        "seconds": time.perf_counter() - started,
    }
