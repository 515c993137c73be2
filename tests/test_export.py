"""dmrnet export: graphs with a presence-mask input that agree with predict on every combination."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from dmrnet.api import Predictor
from dmrnet.cli import main
from dmrnet.config import parse_config
from dmrnet.data.base import DataSpec
from dmrnet.errors import DmrnetError
from dmrnet.export import (
    FORMATS,
    MASK_INPUT,
    TOLERANCE,
    check_samples,
    compare_combinations,
    export,
    load_exported,
)
from dmrnet.methods import METHODS, build_method
from dmrnet.modalities import ModalitySet
from dmrnet.runs import LoadedRun
from dmrnet.tasks import build_task

ROOT = Path(__file__).resolve().parent.parent
onnxruntime = pytest.importorskip("onnxruntime")  # the `export` extra (requirements.lock has it)


@pytest.fixture(scope="module")
def trained_run(tiny_run: Path) -> Path:
    return tiny_run


def tiny_predictor(method: str, **extra: Any) -> Predictor:
    """A freshly built (untrained) `method` on a small spec of its task, in evaluation mode;
    `extra`: more model fields."""
    tasks = METHODS.get(method).tasks
    if "segmentation" in tasks:
        spec = DataSpec(
            name="scenes",
            modalities=ModalitySet(("rgb", "depth")),
            input_shapes={"rgb": (3, 32, 32), "depth": (1, 32, 32)},
            task="segmentation",
            num_classes=5,
            ignore_index=255,
            extra={"holes": {"depth": 0.0}},
        )
        model: dict[str, Any] = {
            "encoder": {"name": "resnet", "options": {"depth": 10, "width": 8}},
            "embed_dim": 16,
            "decoder_channels": [16, 12, 8],
            "decoder_blocks": 1,
            "context_bins": [1, 2],
        }
    elif method.startswith("surf"):
        spec = DataSpec(
            name="faces",
            modalities=ModalitySet(("rgb", "depth", "ir")),
            input_shapes={n: (3, 32, 32) for n in ("rgb", "depth", "ir")},
            task="pad",
            num_classes=2,
            extra={"bona_fide_class": 1},
        )
        model = {"depth": 10, "width": 8, "embed_dim": 16}
    else:
        spec = DataSpec(
            name="views",
            modalities=ModalitySet(("a", "b", "c")),
            input_shapes={"a": (8,), "b": (5,), "c": (3,)},
            task="classification",
            num_classes=4,
            class_names=("w", "x", "y", "z"),
        )
        model = {
            "encoder": {"name": "mlp", "options": {"hidden": [16], "dropout": 0.0}},
            "feature_dim": 8,
            "embed_dim": 8,
        }
    fields = METHODS.get(method).config_class.model_fields  # late-fusion has no embedding
    model = {key: value for key, value in model.items() if key in fields}
    config = parse_config(
        {"data": {"name": spec.name}, "model": {"method": method, **model, **extra}}
    )
    torch.manual_seed(0)
    method_ = build_method(config.model, spec, build_task(spec)).eval()
    return Predictor(LoadedRun(method_, config, spec, Path("tiny.ckpt")))


@pytest.fixture(scope="module")
def onnx_model(trained_run: Path) -> tuple[Path, str]:
    """The trained run exported through the CLI, with what the command printed."""
    out = trained_run.parent / "runs" / "handwritten" / "export" / "model.onnx"
    out.parent.mkdir(parents=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(trained_run), "--format", "onnx", "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_onnx_export_agrees_with_predict_on_every_combination_in_onnxruntime(
    trained_run, onnx_model
):
    out, printed = onnx_model
    assert f"written to {out}" in printed and "over 7 combinations" in printed
    session = onnxruntime.InferenceSession(str(out))
    assert [i.name for i in session.get_inputs()] == ["a", "b", "c", MASK_INPUT]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    predictor = Predictor(trained_run)
    for batch in (1, 6):  # dynamic batch: neither is the example batch of the export
        samples = [s[:1].expand(batch, -1) + 0.1 * torch.randn(batch, s.shape[1]) for s in
                   check_samples(predictor)]  # fmt: skip
        differences = compare_combinations(predictor, load_exported(out), samples)
        assert len(differences) == 7 and max(differences.values()) <= TOLERANCE


def test_default_output_is_the_run_export_folder(trained_run, capsys):
    assert main(["export", str(trained_run), "--format", "exported-program"]) == 0
    assert (trained_run / "export" / "model.pt2").is_file()
    assert "max |difference| to predict over 7 combinations" in capsys.readouterr().out


def test_absent_inputs_are_ignored_even_when_they_hold_nan(trained_run, tmp_path):
    result = export(trained_run, "exported-program", tmp_path / "model.pt2")
    graph = load_exported(result.path)
    a, b, c = check_samples(Predictor(trained_run))
    present = torch.tensor([[True, False, True]] * a.shape[0])
    reference = graph(a, b, c, present)
    assert torch.equal(graph(a, torch.full_like(b, float("nan")), c, present), reference)
    assert torch.allclose(reference.sum(1), torch.ones(a.shape[0]))


# Every exportable method once, the tasks classification, PAD (surf-*) and segmentation (*-seg);
# ONNX through the trained run above. The image networks take 5-10 s each to trace.
SLOW = pytest.mark.slow
CASES = [
    ("dmrnet", "torchscript"),
    ("moddrop", "exported-program"),
    ("late-fusion", "torchscript"),
    ("hemis", "exported-program"),
    ("shaspec", "exported-program"),
    ("mmanet", "torchscript"),
    pytest.param("surf-dmrnet", "exported-program", marks=SLOW),
    pytest.param("surf-moddrop", "torchscript", marks=SLOW),
    pytest.param("dmrnet-seg", "exported-program", marks=SLOW),
    pytest.param("moddrop-seg", "torchscript", marks=SLOW),
]


@pytest.mark.parametrize(("method", "fmt"), CASES)
def test_method_exports_and_agrees_with_predict_on_every_combination(method, fmt, tmp_path):
    """`export` loads the file back with its runtime and compares it with predict on every
    combination (compare_combinations, itself checked in the ONNX test above)."""
    predictor = tiny_predictor(method)
    result = export(predictor, fmt, tmp_path / f"model{FORMATS[fmt].suffix}")
    combinations = len(predictor.modalities.combinations())
    assert result.combinations == combinations and result.max_difference <= TOLERANCE


@SLOW
def test_the_dense_product_of_experts_exports_to_onnx_and_agrees_with_predict(tmp_path):
    experts = {"weight": 1.0, "ensemble": True, "mix": 0.7}
    predictor = tiny_predictor("dmrnet-seg", experts=experts)
    result = export(predictor, "onnx", tmp_path / "model.onnx")
    assert result.combinations == 3 and result.max_difference <= TOLERANCE


def test_every_registered_method_is_covered_or_known_not_exportable():
    covered = {case.values[0] if hasattr(case, "values") else case[0] for case in CASES}
    covered |= {"dedicated"}
    assert covered == set(METHODS.names())


@pytest.mark.parametrize(("method", "fmt"), [("dedicated", "exported-program"),
                                             ("dedicated", "torchscript")])  # fmt: skip
def test_data_dependent_routing_is_refused_in_one_line_and_writes_nothing(method, fmt, tmp_path):
    out = tmp_path / f"model{FORMATS[fmt].suffix}"
    with pytest.raises(DmrnetError, match=f"'{method}'") as error:
        export(tiny_predictor(method), fmt, out)
    assert "\n" not in str(error.value) and not out.exists()


def test_export_errors_name_the_problem(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--out", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_the_serving_snippet_of_docs_deploy_runs_with_onnxruntime(onnx_model, monkeypatch):
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text[text.index("### Serving with ONNX Runtime alone") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    model, _ = onnx_model  # at FOLDER/runs/handwritten/export/model.onnx, the snippet's path
    monkeypatch.chdir(model.parents[3])
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/deploy.md", "exec"), namespace)
    probabilities = namespace["probabilities"]
    assert probabilities.shape == (4, 4)
    assert abs(float(probabilities.sum(1).mean()) - 1.0) < 1e-5
