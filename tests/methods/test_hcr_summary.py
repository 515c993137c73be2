"""The HCR's public summary (results.json "hcr"): what it selected, when, and on which
statistics; checkpoints from before the summary existed still load."""

import math

import pytest
import torch

from dmrnet.config import HCRConfig
from dmrnet.methods.hcr import HardCombinationRegularizer
from dmrnet.modalities import ModalitySet

VIEWS = ModalitySet(("a", "b"))


def regularizer(**config):
    return HardCombinationRegularizer(
        HCRConfig(rule="unimodal-max", warmup_epochs=2, **config), VIEWS, has_variance=True
    )


def test_the_summary_keeps_the_warm_up_statistics_the_selection_was_made_on():
    hcr = regularizer()
    assert hcr.summary() == {
        "rule": "unimodal-max",
        "selected": [],
        "selected_at_epoch": None,
        "statistics": {},
    }
    combination = torch.tensor([0, 1, 1, 2])  # a, b, b, a+b
    loss = torch.tensor([0.5, 1.0, 2.0, 0.1])
    variance = torch.tensor([0.2, 0.6, 0.8, 1.5])
    for epoch in range(3):
        hcr.start_epoch(epoch)
        hcr.observe(combination, loss, variance)
        hcr.end_epoch(epoch)
    summary = hcr.summary()
    assert summary["selected"] == ["b"] and summary["selected_at_epoch"] == 1
    # Both warm-up epochs, not the (later) third epoch whose window was reset.
    assert summary["statistics"]["b"] == {
        "samples": 4,
        "loss": pytest.approx(1.5),
        "variance": pytest.approx(0.7),
    }
    assert math.isclose(summary["statistics"]["a+b"]["variance"], 1.5)


def test_a_checkpoint_without_the_selection_statistics_still_loads():
    trained = regularizer()
    trained.hard[1] = True
    state = {
        k: v for k, v in trained.state_dict().items() if not k.startswith(("selection", "selected"))
    }
    loaded = regularizer()
    loaded.load_state_dict(state)
    assert loaded.hard_names() == ["b"] and loaded.summary()["selected_at_epoch"] is None
