"""MODEL_CARD.md: written with the results of every run, from measured facts only."""

from __future__ import annotations

import json

from dmrnet.config import parse_config
from dmrnet.runs import train


def test_every_run_gets_a_model_card_with_inputs_summary_and_limits(make_config, tmp_path):
    run_dir = tmp_path / "run"
    train(parse_config(make_config("dmrnet")), run_dir)
    card = (run_dir / "MODEL_CARD.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert card.startswith("# Model card: tiny-dmrnet")
    for section in ("## Inputs", "## Method", "## Measured", "## Calibration", "## Intended use"):
        assert section in card
    assert "| a | (8,) |" in card and "| b | (5,) |" in card and "| c | (3,) |" in card
    assert f"| mean | {100 * results['summary']['mean']:.2f}% |" in card
    worst = min(results["combinations"], key=results["combinations"].__getitem__)
    assert f"plan for the worst combination ({worst})" in card
    # Every run is calibrated after training: the card names the per-combination temperatures.
    assert "Temperature scaling per combination" in card
    for name in results["calibration"]["temperature"]:
        if len(name.split("+")) == 1:
            assert f"{name}: T = " in card
