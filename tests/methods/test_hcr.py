import math

import pytest
import torch

from dmrnet.config import HCRConfig
from dmrnet.errors import ConfigError
from dmrnet.methods.hcr import HardCombinationRegularizer
from dmrnet.modalities import ModalitySet

VIEWS = ModalitySet(("a", "b", "c"))
COMBOS = VIEWS.combinations()  # a, b, c, a+b, a+c, b+c, a+b+c
NAMES = [VIEWS.format(c) for c in COMBOS]


def regularizer(rule, **kwargs):
    fixed = kwargs.pop("fixed", ())
    config = HCRConfig(rule=rule, **kwargs)
    return HardCombinationRegularizer(config, VIEWS, has_variance=True, fixed=fixed)


# Variance grows with the number of modalities (as measured on real data); within sizes, `b`
# and `a+c` stand out. Loss is highest for `c`, then `b`.
VARIANCE = torch.tensor([0.5, 0.7, 0.4, 0.9, 1.2, 0.8, 2.0], dtype=torch.float64)
LOSS = torch.tensor([0.3, 0.9, 1.5, 0.2, 0.25, 0.6, 0.1], dtype=torch.float64)
COUNT = torch.ones(7, dtype=torch.float64)


def selected(hcr):
    return [NAMES[i] for i in torch.nonzero(hcr.select(VARIANCE, LOSS, COUNT)).flatten()]


def test_unimodal_max_picks_the_single_modality_with_largest_variance():
    assert selected(regularizer("unimodal-max")) == ["b"]
    assert selected(regularizer("unimodal-max", k=2)) == ["a", "b"]


def test_variance_by_size_compares_only_within_sizes_and_never_picks_the_full_set():
    # Relative to its size group: b = 0.7/0.533 = 1.31, a+c = 1.2/0.967 = 1.24; full set has
    # the largest raw variance but no peers.
    assert selected(regularizer("variance-by-size", k=2)) == ["b", "a+c"]
    assert "a+b+c" not in selected(regularizer("variance-by-size", k=6))


def test_loss_topk_fixed_and_incomplete_rules():
    assert selected(regularizer("loss-topk", k=2)) == ["b", "c"]
    assert selected(regularizer("fixed", combinations=["x"], fixed=[(0,), (0, 2)])) == ["a", "a+c"]
    assert selected(regularizer("incomplete")) == NAMES[:-1]


def test_unseen_combinations_are_never_selected():
    count = COUNT.clone()
    count[1] = 0
    hcr = regularizer("unimodal-max")
    picked = torch.nonzero(hcr.select(VARIANCE, LOSS, count)).flatten().tolist()
    assert picked == [0]


def test_variance_rules_need_a_method_with_variance():
    with pytest.raises(ConfigError, match="model.hcr.rule.*variance"):
        HardCombinationRegularizer(HCRConfig(rule="unimodal-max"), VIEWS, has_variance=False)
    with pytest.raises(ConfigError, match="model.hcr.combinations"):
        HardCombinationRegularizer(HCRConfig(rule="fixed"), VIEWS, has_variance=True)


def feed_epoch(hcr, epoch, combination, loss, variance):
    hcr.start_epoch(epoch)
    hcr.observe(combination, loss, variance)
    return hcr.end_epoch(epoch)


def test_warm_up_then_loss_on_hard_samples_only():
    hcr = regularizer("unimodal-max", warmup_epochs=2, weight=0.5)
    combination = torch.tensor([0, 1, 2, 6])
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    variance = torch.tensor([0.1, 0.9, 0.2, 3.0])
    feed_epoch(hcr, 0, combination, loss, variance)
    assert hcr.loss(combination, loss) is None  # still warming up
    logs = feed_epoch(hcr, 1, combination, loss, variance)
    assert hcr.hard_names() == ["b"]
    assert logs["hcr/variance/b"] == pytest.approx(0.9)
    assert logs["hcr/loss/c"] == pytest.approx(3.0)
    hcr.start_epoch(2)
    # beta * (sum of the hard samples' loss) / batch size = 0.5 * 2.0 / 4
    assert hcr.loss(combination, loss).item() == pytest.approx(0.25)


def test_warm_up_statistics_accumulate_over_all_warm_up_epochs():
    hcr = regularizer("unimodal-max", warmup_epochs=2)
    feed_epoch(hcr, 0, torch.tensor([0, 1]), torch.zeros(2), torch.tensor([5.0, 1.0]))
    feed_epoch(hcr, 1, torch.tensor([0, 1]), torch.zeros(2), torch.tensor([0.0, 3.0]))
    assert hcr.hard_names() == ["a"]  # mean 2.5 vs 2.0 over both epochs


def test_selection_is_kept_unless_reselect():
    for reselect, expected in ((False, ["b"]), (True, ["a"])):
        hcr = regularizer("loss-topk", warmup_epochs=1, reselect=reselect)
        feed_epoch(hcr, 0, torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), None)
        feed_epoch(hcr, 1, torch.tensor([0, 1]), torch.tensor([3.0, 2.0]), None)
        assert hcr.hard_names() == expected


def test_resume_closes_an_epoch_whose_end_was_not_processed():
    hcr = regularizer("unimodal-max", warmup_epochs=1)
    hcr.start_epoch(0)
    hcr.observe(torch.tensor([0, 1]), torch.zeros(2), torch.tensor([0.1, 0.7]))
    # The checkpoint was written before end_epoch(0) ran: restore it into a fresh instance.
    state = {k: v.clone() for k, v in hcr.state_dict().items()}
    resumed = regularizer("unimodal-max", warmup_epochs=1)
    resumed.load_state_dict(state)
    resumed.start_epoch(1)
    assert resumed.hard_names() == ["b"]
    assert resumed.active


def test_no_rule_means_no_loss_and_no_logs():
    hcr = regularizer("none")
    assert feed_epoch(hcr, 0, torch.tensor([0]), torch.ones(1), torch.ones(1)) == {}
    assert hcr.loss(torch.tensor([0]), torch.ones(1)) is None
    assert not math.isnan(float(hcr.count.sum()))


def test_loss_weighted_weighs_every_combination_by_its_running_loss_every_epoch():
    hcr = regularizer("loss-weighted", warmup_epochs=1, weight=0.5)
    combination = torch.tensor([0, 1, 1, 2])  # a, b, b, c
    feed_epoch(hcr, 0, combination, torch.tensor([1.0, 2.0, 2.0, 3.0]), None)
    assert hcr.hard_names() == ["a", "b", "c"]  # the combinations seen, unseen ones weigh 0
    assert hcr.weights[:3].tolist() == pytest.approx([0.5, 1.0, 1.5])  # loss / mean loss (2.0)
    assert hcr.weights[3:].sum() == 0
    assert hcr.describe() == "weighted by loss, largest c x1.50, b x1.00, a x0.50"
    hcr.start_epoch(1)
    loss = torch.tensor([2.0, 4.0, 4.0, 8.0])
    # beta * sum(weight * loss) / batch = 0.5 * (0.5 * 2 + 1 * 4 + 1 * 4 + 1.5 * 8) / 4
    assert hcr.loss(combination, loss).item() == pytest.approx(0.5 * 21.0 / 4)
    feed_epoch(hcr, 1, combination, torch.tensor([3.0, 1.0, 1.0, 2.0]), None)  # no reselect set
    assert hcr.weights[:3].tolist() == pytest.approx([1.5, 0.5, 1.0])  # still follows the loss
    assert hcr.summary()["weights"] == pytest.approx({"a": 1.5, "b": 0.5, "c": 1.0})


def test_a_checkpoint_without_weights_gives_its_hard_combinations_weight_one():
    hcr = regularizer("loss-topk", warmup_epochs=1)
    feed_epoch(hcr, 0, torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), None)
    state = {k: v.clone() for k, v in hcr.state_dict().items() if k != "weights"}
    resumed = regularizer("loss-topk", warmup_epochs=1)
    resumed.load_state_dict(state)
    assert resumed.weights.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    resumed.start_epoch(1)
    assert resumed.loss(torch.tensor([0, 1]), torch.tensor([1.0, 2.0])).item() == pytest.approx(
        0.2 * 2.0 / 2
    )
