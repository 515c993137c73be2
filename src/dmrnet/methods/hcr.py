"""Hard-combination regularizer (HCR), general in the number of modalities.

DMRNet (paper section 3.3) adds task loss on the modality combinations the model finds hardest:

    L_hcr = sum over samples i whose combination is hard of CE_i / B        (weight beta)

switched on after a warm-up (the paper's code: off in epochs 0-5, on from epoch 6). During the
warm-up dmrnet accumulates, per combination, the mean embedding variance (mean of std^2) and the
mean task loss; at the end of the warm-up a *selection rule* picks the hard combinations:

- ``unimodal-max``  the paper's audio-visual code: the single-modality combination(s) with the
                    largest variance (k of them, k=1 as the paper).
- ``fixed``         the paper's face anti-spoofing code: a list from the config.
- ``incomplete``    the paper's segmentation code: every combination that misses a modality.
                    The code trains an auxiliary decoder on those samples; the dense
                    methods offer it as `auxiliary_decoder: true` (methods/dense.py:
                    the HCR loss then comes from that decoder, via `Method.hcr_task_loss`).
- ``variance-by-size``  ours: the k combinations whose variance is largest relative to the mean
                    variance of the combinations with the same number of modalities. Raw variance
                    grows with the number of modalities present (measured on four real data sets),
                    so ranking all combinations by it picks the full set, the easiest one.
- ``loss-topk``     ours: the k combinations with the largest mean task loss.
- ``loss-weighted`` ours, soft: every combination, weighted by its mean task loss over the mean
                    of all combinations' (the weights average 1), recomputed from the running
                    loss at the end of every epoch after the warm-up (it always reselects).

The other rules give each selected combination weight 1. With ``reselect`` the rule runs again at
the end of every later epoch on that epoch's statistics.
Statistics are summed across DDP processes before a selection, so every process picks the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dmrnet.config import HCRConfig
from dmrnet.errors import ConfigError
from dmrnet.modalities import Combination, ModalitySet

log = logging.getLogger("dmrnet")

VARIANCE_RULES = ("unimodal-max", "variance-by-size")


class HardCombinationRegularizer(nn.Module):
    """Per-combination statistics, the selection rule and the extra loss.

    State lives in buffers so it is checkpointed: a resumed run keeps its selection and any
    statistics gathered so far.
    """

    def __init__(
        self,
        config: HCRConfig,
        modalities: ModalitySet,
        has_variance: bool,
        fixed: Sequence[Combination] = (),
    ) -> None:
        super().__init__()
        self.config = config
        self.modalities = modalities
        self.combinations = modalities.combinations()
        count = len(self.combinations)
        if config.rule in VARIANCE_RULES and not has_variance:
            raise ConfigError(
                f"model.hcr.rule: {config.rule!r} ranks combinations by embedding variance, which "
                "this method does not have; use 'loss-topk', 'fixed' or 'incomplete'"
            )
        if config.rule == "fixed" and not fixed:
            raise ConfigError("model.hcr.combinations: rule 'fixed' needs at least one combination")
        if fixed and config.rule != "fixed":
            raise ConfigError("model.hcr.combinations: only used with rule 'fixed'")
        self.fixed = [self.combinations.index(c) for c in fixed]
        self.has_variance = has_variance
        # Running sums of the current statistics window, float64 for exact accumulation.
        self.register_buffer("variance_sum", torch.zeros(count, dtype=torch.float64))
        self.register_buffer("loss_sum", torch.zeros(count, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(count, dtype=torch.float64))
        self.register_buffer("hard", torch.zeros(count, dtype=torch.bool))
        # Each combination's weight in the loss: 1 for the hard ones, or loss-weighted.
        self.register_buffer("weights", torch.zeros(count))
        # The epoch being trained and the last epoch whose end was processed.
        self.register_buffer("epoch", torch.tensor(0))
        self.register_buffer("last_closed", torch.tensor(-1))
        # The statistics the latest selection was made on (the warm-up window's, unless
        # `reselect`) and its epoch: what `summary` reports in results.json.
        nan = torch.full((count,), float("nan"), dtype=torch.float64)
        self.register_buffer("selection_variance", nan.clone())
        self.register_buffer("selection_loss", nan.clone())
        self.register_buffer("selection_count", torch.zeros(count, dtype=torch.float64))
        self.register_buffer("selected_at", torch.tensor(-1))

    @property
    def enabled(self) -> bool:
        return self.config.rule != "none" and self.config.weight > 0

    @property
    def soft(self) -> bool:
        """Weights from the running loss (`loss-weighted`) instead of 1 per hard combination."""
        return self.config.rule == "loss-weighted"

    @property
    def active(self) -> bool:
        """True once the warm-up is over and something was selected."""
        return (
            self.enabled and int(self.epoch) >= self.config.warmup_epochs and bool(self.hard.any())
        )

    def hard_names(self) -> list[str]:
        return [self.modalities.format(self.combinations[i]) for i in torch.nonzero(self.hard)]

    def describe(self, shown: int = 3) -> str:
        """The selection in a few words, for the logs: the hard combinations, or with soft
        weights the `shown` largest."""
        if not self.soft or not bool(self.hard.any()):
            return ", ".join(self.hard_names()) or "none yet"
        order = torch.argsort(self.weights, descending=True)[:shown]
        largest = [
            f"{self.modalities.format(self.combinations[i])} x{float(self.weights[i]):.2f}"
            for i in order
        ]
        return f"weighted by loss, largest {', '.join(largest)}"

    # -- statistics -------------------------------------------------------------------------
    def observe(
        self, combination: torch.Tensor, loss: torch.Tensor, variance: torch.Tensor | None
    ) -> None:
        """Add one batch: combination index (B,), task loss (B,), embedding variance (B,)."""
        index = combination.to(self.count.device)
        self.count.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
        self.loss_sum.index_add_(0, index, loss.detach().double())
        if variance is not None:
            self.variance_sum.index_add_(0, index, variance.detach().double())

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean variance, mean loss, count) per combination, summed over DDP processes."""
        sums = torch.stack([self.variance_sum, self.loss_sum, self.count])
        if dist.is_available() and dist.is_initialized():
            sums = sums.clone()
            dist.all_reduce(sums)
        variance_sum, loss_sum, count = sums
        seen = count.clamp(min=1)
        nan = torch.full_like(count, float("nan"))
        mean_variance = torch.where(count > 0, variance_sum / seen, nan)
        mean_loss = torch.where(count > 0, loss_sum / seen, nan)
        return mean_variance, mean_loss, count

    # -- selection --------------------------------------------------------------------------
    def select(
        self, variance: torch.Tensor, loss: torch.Tensor, count: torch.Tensor
    ) -> torch.Tensor:
        """Apply the configured rule to per-combination statistics -> (C,) bool (for
        `loss-weighted`: every combination seen; its weights come from `weigh`)."""
        rule, k = self.config.rule, self.config.k
        sizes = torch.tensor([len(c) for c in self.combinations])
        seen = count > 0
        hard = torch.zeros(len(self.combinations), dtype=torch.bool)
        if rule == "fixed":
            hard[self.fixed] = True
        elif rule == "incomplete":
            hard = sizes < len(self.modalities)
        elif rule == "unimodal-max":
            hard[_top_k(torch.where((sizes == 1) & seen, variance, -torch.inf), k)] = True
        elif rule == "variance-by-size":
            relative = torch.full_like(variance, -torch.inf)
            for size in range(1, len(self.modalities)):  # the full set has no peers to compare
                group = (sizes == size) & seen
                if bool(group.any()):
                    relative[group] = variance[group] / variance[group].mean()
            hard[_top_k(relative, k)] = True
        elif rule == "loss-topk":
            hard[_top_k(torch.where(seen, loss, -torch.inf), k)] = True
        elif rule == "loss-weighted":
            hard = seen.clone()
        return hard

    def weigh(self, hard: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """(C,) weights of the selected combinations in the loss: 1, or for `loss-weighted`
        each one's mean loss over the mean of theirs."""
        if not self.soft or not bool(hard.any()):
            return hard.float()
        relative = torch.where(hard, loss, 0.0) / loss[hard].mean()
        return relative.float()

    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Called before an epoch trains. Closes a window left open (a run resumed from a
        checkpoint written before the previous epoch ended) so no selection is ever skipped."""
        logs = {}
        if int(self.last_closed) < epoch - 1:
            logs = self.end_epoch(epoch - 1)
        self.epoch.fill_(epoch)
        return logs

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Close epoch `epoch`: log statistics and select at the end of the warm-up (and after
        it, when `reselect`). Returns scalars for the logger."""
        if not self.enabled:
            return {}
        self.last_closed.fill_(epoch)
        variance, loss, count = self.statistics()
        logs: dict[str, float] = {}
        for index, combination in enumerate(self.combinations):
            if count[index] > 0:
                name = self.modalities.format(combination)
                logs[f"hcr/loss/{name}"] = float(loss[index])
                if self.has_variance:
                    logs[f"hcr/variance/{name}"] = float(variance[index])
        last_warmup = self.config.warmup_epochs - 1
        reselect = self.config.reselect or self.soft
        if epoch == last_warmup or (reselect and epoch > last_warmup):
            self.hard.copy_(self.select(variance, loss, count))
            self.weights.copy_(self.weigh(self.hard, loss))
            kept = (self.selection_variance, self.selection_loss, self.selection_count)
            for buffer, value in zip(kept, (variance, loss, count), strict=True):
                buffer.copy_(value)
            self.selected_at.fill_(epoch)
            log.info("epoch %d: hard combinations: %s", epoch, self.describe())
        if epoch >= last_warmup:
            # The warm-up window accumulates over all warm-up epochs; later windows are one epoch.
            for buffer in (self.variance_sum, self.loss_sum, self.count):
                buffer.zero_()
        logs["hcr/num_hard"] = float(self.hard.sum())
        return logs

    def summary(self) -> dict[str, Any]:
        """The rule, the selected (hard) combinations, the epoch of the selection and the
        per-combination statistics it was made on (results.json: "hcr")."""
        statistics = {}
        for index, combination in enumerate(self.combinations):
            count = int(self.selection_count[index])
            if count:
                variance = float(self.selection_variance[index])
                statistics[self.modalities.format(combination)] = {
                    "samples": count,
                    "loss": float(self.selection_loss[index]),
                    "variance": variance if self.has_variance else None,
                }
        summary: dict[str, Any] = {
            "rule": self.config.rule,
            "selected": self.hard_names(),
            "selected_at_epoch": int(self.selected_at) if int(self.selected_at) >= 0 else None,
            "statistics": statistics,
        }
        if self.soft:
            summary["weights"] = {
                self.modalities.format(self.combinations[i]): float(self.weights[i])
                for i in torch.nonzero(self.hard)
            }
        return summary

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints from before the selection statistics were kept load with them empty.
        for name in ("selection_variance", "selection_loss", "selection_count", "selected_at"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        # ... and from before the weights: a hard combination weighs 1.
        if prefix + "hard" in state_dict:
            state_dict.setdefault(prefix + "weights", state_dict[prefix + "hard"].float())
        super()._load_from_state_dict(state_dict, prefix, *args)

    # -- loss -------------------------------------------------------------------------------
    def loss(self, combination: torch.Tensor, per_sample: torch.Tensor) -> torch.Tensor | None:
        """beta * sum of the task loss over hard samples (times their combination's weight) /
        batch size, or None while off."""
        if not self.active:
            return None
        weights = self.weights.to(combination.device)[combination]
        return self.config.weight * (per_sample * weights).sum() / per_sample.shape[0]


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest finite scores."""
    finite = torch.isfinite(scores)
    k = min(k, int(finite.sum()))
    return torch.topk(torch.where(finite, scores, -torch.inf), k).indices
