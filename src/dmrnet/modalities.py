"""Modalities, their 2^M - 1 combinations, per-sample masks and the training-time samplers.

Conventions used everywhere in dmrnet:
- a `ModalitySet` fixes the order of the M modality names (the dataset's order);
- a *combination* is a non-empty subset, stored as a sorted tuple of modality indices and printed
  as the names joined by "+" in modality order ("pix+fou");
- a *mask* is a bool tensor, (M,) for one combination or (B, M) for a batch, True = used.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from dmrnet.errors import UnknownNameError

Combination = tuple[int, ...]


@dataclass(frozen=True)
class ModalitySet:
    """An ordered set of modality names and everything derived from it."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a ModalitySet needs at least one modality")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"modality names must be unique, got {list(self.names)}")
        for name in self.names:
            if not name or "+" in name or name != name.strip():
                raise ValueError(f"invalid modality name {name!r} (non-empty, no '+', no spaces)")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def full(self) -> Combination:
        return tuple(range(len(self.names)))

    def combinations(self) -> list[Combination]:
        """All 2^M - 1 non-empty combinations, ordered by size, then by modality order."""
        m = len(self.names)
        return [c for k in range(1, m + 1) for c in itertools.combinations(range(m), k)]

    def format(self, combination: Iterable[int]) -> str:
        return "+".join(self.names[i] for i in sorted(combination))

    def parse(self, text: str) -> Combination:
        """Parse "rgb+depth" (any order, any case of spacing) into a combination."""
        parts = [p.strip() for p in text.split("+")]
        if not text.strip() or any(not p for p in parts):
            raise UnknownNameError(f"empty modality name in combination {text!r}")
        unknown = [p for p in parts if p not in self.names]
        if unknown:
            raise UnknownNameError(
                f"combination {text!r}: unknown modality {unknown[0]!r}; "
                f"modalities are {'+'.join(self.names)}"
            )
        if len(set(parts)) != len(parts):
            raise UnknownNameError(f"combination {text!r} names a modality twice")
        return tuple(sorted(self.names.index(p) for p in parts))

    def mask(self, combination: Iterable[int]) -> torch.Tensor:
        mask = torch.zeros(len(self.names), dtype=torch.bool)
        mask[list(combination)] = True
        return mask

    def masks(self, combinations: Sequence[Combination]) -> torch.Tensor:
        """(C, M) bool masks of several combinations."""
        return torch.stack([self.mask(c) for c in combinations])

    def combination_of(self, mask: torch.Tensor) -> Combination:
        return tuple(int(i) for i in torch.nonzero(mask, as_tuple=False).flatten())

    def combination_index(self, masks: torch.Tensor) -> torch.Tensor:
        """Index into `combinations()` of each row of a (B, M) mask; -1 for an empty row."""
        lookup = torch.full((2 ** len(self.names),), -1, dtype=torch.long)
        for index, combination in enumerate(self.combinations()):
            lookup[sum(1 << i for i in combination)] = index
        # Powers of two as a product, not a shift: exported graphs (ONNX) have no bit shift.
        powers = 2 ** torch.arange(len(self.names), device=masks.device)
        bits = (masks.long() * powers).sum(-1)
        return lookup.to(masks.device)[bits]


SamplerKind = Literal["uniform", "independent", "fixed", "full"]


class CombinationSampler:
    """Draws the combination each training sample is seen with (modality dropout).

    - ``uniform``: uniform over the non-empty combinations the sample really has, i.e. over all
      2^M - 1 when nothing is missing. This is the paper's code (`np.random.choice` over all
      combinations with equal probability); dmrnet draws among the sample's available subsets
      instead of intersecting afterwards, so no draw ever leaves a sample empty.
    - ``independent``: each available modality is dropped with probability ``p``; if that drops
      all of them, one available modality is kept at random.
    - ``fixed``: always the given combination, intersected with availability (a sample that has
      none of it keeps what it has).
    - ``full``: no dropout: whatever the sample has.
    """

    def __init__(
        self,
        modalities: ModalitySet,
        kind: SamplerKind = "uniform",
        p: float = 0.5,
        fixed: Combination | None = None,
    ) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop probability p must be in [0, 1), got {p}")
        if kind == "fixed" and not fixed:
            raise ValueError("sampler kind 'fixed' needs a combination")
        self.modalities = modalities
        self.kind = kind
        self.p = p
        self.fixed = modalities.mask(fixed) if fixed else None
        self._table = modalities.masks(modalities.combinations())  # (C, M)

    def sample(
        self, present: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, M) bool mask of the modalities each sample uses in this step."""
        present = present.bool()
        if self.kind == "full":
            return present.clone()
        if self.kind == "fixed":
            assert self.fixed is not None
            mask = present & self.fixed.to(present.device)
            return torch.where(mask.any(-1, keepdim=True), mask, present)
        if self.kind == "uniform":
            table = self._table.to(present.device)  # (C, M)
            # A combination is allowed for a sample when it uses nothing the sample lacks.
            allowed = ~(table.unsqueeze(0) & ~present.unsqueeze(1)).any(-1)  # (B, C)
            choice = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
            return table[choice]
        keep = torch.rand(present.shape, generator=generator, device=present.device) >= self.p
        mask = present & keep
        empty = ~mask.any(-1)
        if bool(empty.any()):
            # Keep one available modality, chosen uniformly, for samples left with none.
            pick = torch.multinomial(present[empty].float(), 1, generator=generator).squeeze(1)
            mask[empty] = torch.nn.functional.one_hot(pick, present.shape[1]).bool()
        return mask


def availability_weights(
    modalities: ModalitySet, combinations: Sequence[Combination], p: float | Sequence[float]
) -> list[float]:
    """P(combination | non-empty) when each modality is available independently with prob. p
    (one p for all, or one per modality in the set's order)."""
    m = len(modalities)
    probabilities = [float(p)] * m if isinstance(p, int | float) else [float(q) for q in p]
    if len(probabilities) != m:
        raise ValueError(f"{len(probabilities)} availability probabilities for {m} modalities")
    raw = [
        math.prod(q if i in c else 1.0 - q for i, q in enumerate(probabilities))
        for c in combinations
    ]
    total = sum(raw)
    return [w / total for w in raw]
