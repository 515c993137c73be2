import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dmrnet.config import parse_config
from dmrnet.data import build_data
from dmrnet.data.base import ArrayMultiModalDataset
from dmrnet.evaluate import EvaluationReport, build_report, evaluate_combinations
from dmrnet.methods import build_method
from dmrnet.metrics import summarize
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import build_task


@pytest.fixture
def model_and_data(make_config):
    config = parse_config(make_config("dmrnet"))
    data = build_data("multiview", config.data.options, None, 0.2, 0)
    torch.manual_seed(0)
    model = build_method(config.model, data.spec, build_task(data.spec))
    # A few steps so predictions differ between combinations.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for batch in DataLoader(data.train, batch_size=32, drop_last=True):
        mask = model.training_mask(batch["present"])
        loss = model.loss(model(batch["inputs"], mask), batch["target"], mask)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    return model, data


def test_batched_evaluation_equals_evaluating_each_combination_separately(model_and_data):
    model, data = model_and_data
    loader = DataLoader(data.test, batch_size=20)
    batched = evaluate_combinations(model, loader)
    separate = evaluate_combinations(model, loader, batched=False)
    assert len(batched) == 7
    for one, other in zip(batched, separate, strict=True):
        assert one.name == other.name and one.samples == other.samples == len(data.test)
        assert one.metrics["accuracy"] == other.metrics["accuracy"]
        assert one.variance == pytest.approx(other.variance, rel=1e-6)
    assert len({r.metrics["accuracy"] for r in batched}) > 1


def test_samples_missing_a_modality_only_count_where_they_have_it(model_and_data):
    model, data = model_and_data
    test = data.test
    present = test.present.clone()
    present[:10, 1] = False  # ten samples really lack view b
    partial = ArrayMultiModalDataset(
        model.modalities, test.inputs, test.targets, 4, present=present, source="partial"
    )
    results = {r.name: r for r in evaluate_combinations(model, DataLoader(partial, batch_size=16))}
    assert results["a"].samples == len(test)
    assert results["b"].samples == results["a+b+c"].samples == len(test) - 10


def test_summaries_by_hand():
    views = ModalitySet(("a", "b"))
    combos = views.combinations()  # a, b, a+b
    summary = summarize([0.6, 0.8, 0.9], combos, views, availability_p=0.8)
    # p=0.8: P(a only) = P(b only) = 0.16, P(both) = 0.64, renormalized over 0.96.
    assert summary["mean"] == pytest.approx(2.3 / 3)
    assert summary["worst"] == 0.6
    assert summary["full"] == 0.9
    assert summary["expected_p0.8"] == pytest.approx((0.16 * 0.6 + 0.16 * 0.8 + 0.64 * 0.9) / 0.96)
    lower_better = summarize([0.1, 0.3, 0.05], combos, views, higher_is_better=False)
    assert lower_better["worst"] == 0.3
    assert summarize([0.5], [(0,)], views)["full"] is None


def test_report_writes_json_csv_markdown_and_plot(model_and_data, tmp_path):
    model, data = model_and_data
    report = build_report(
        model, DataLoader(data.test, batch_size=64), "synthetic", "dmrnet", "test"
    )
    assert isinstance(report, EvaluationReport)
    paths = report.write(tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.csv", "results.md", "results.png"]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["dataset"] == "synthetic" and result["method"] == "dmrnet"
    assert result["metric"] == "accuracy" and result["modalities"] == ["a", "b", "c"]
    assert list(result["combinations"]) == ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]
    values = np.array(list(result["combinations"].values()))
    assert ((values >= 0) & (values <= 1)).all()
    assert set(result["summary"]) == {"mean", "worst", "full", "expected_p0.5", "expected_all_p0.9"}
    assert result["summary"]["mean"] == pytest.approx(values.mean())
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("combination,size,samples,accuracy") and len(csv_lines) == 8
    assert "| a+b+c | 3 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
