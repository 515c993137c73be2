import ast
from pathlib import Path

import pytest
import yaml

import dmrnet.config
from dmrnet.config import (
    apply_overrides,
    load_config,
    packaged_configs,
    parse_config,
    resolve_config,
)
from dmrnet.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "src" / "dmrnet" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: str(p.name))
def test_every_shipped_config_is_valid(path):
    config = load_config(path)
    assert config.model.method


def test_method_specific_fields_are_typed(make_config):
    config = parse_config(make_config(kl_weight=0.01))
    assert config.model.kl_weight == 0.01
    assert config.model.hcr.rule == "unimodal-max"


def test_unknown_key_is_rejected_with_its_dotted_name(make_config):
    raw = make_config()
    raw["train"]["epochz"] = 3
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key"):
        parse_config(raw, source="my.yaml")


def test_a_dmrnet_only_key_is_unknown_for_moddrop(make_config):
    raw = make_config(method="moddrop", kl_weight=0.1)
    with pytest.raises(ConfigError, match=r"model\.kl_weight: unknown key"):
        parse_config(raw)


def test_wrong_type_names_key_and_value(make_config):
    raw = make_config(kl_weight="lots")
    with pytest.raises(ConfigError, match=r"model\.kl_weight: .*'lots'"):
        parse_config(raw)


def test_bad_value_range_and_bad_rule(make_config):
    raw = make_config()
    raw["train"]["epochs"] = 0
    raw["model"]["hcr"]["rule"] = "hardest"
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert "train.epochs" in str(error.value) and "model.hcr.rule" in str(error.value)


def test_unknown_method_lists_the_registered_ones(make_config):
    raw = make_config(method="magic")
    with pytest.raises(ConfigError, match="model.method: unknown method 'magic'.*dmrnet"):
        parse_config(raw)


def test_dotted_overrides_parse_yaml_values_and_create_sections(make_config):
    raw = apply_overrides(
        make_config(),
        ["model.kl_weight=1e-2", "model.hcr.combinations=[a, a+b]", "train.optimizer.name=sgd"],
    )
    config = parse_config(raw)
    assert config.model.kl_weight == 0.01
    assert config.model.hcr.combinations == ["a", "a+b"]
    assert config.train.optimizer.name == "sgd"


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train.epochs.x=3"])
def test_malformed_overrides_are_explained(make_config, override):
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides(make_config(), [override])


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    path.write_text(yaml.safe_dump({"data": {"name": "multiview"}}))
    with pytest.raises(ConfigError, match="model.method: required key is missing"):
        load_config(path)


def test_packaged_config_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "handwritten/dmrnet" in packaged_configs()
    by_name = load_config("handwritten/dmrnet")
    assert by_name == load_config("handwritten/dmrnet.yaml")
    assert by_name.model.method == "dmrnet"
    with pytest.raises(ConfigError, match="no-such/config: no such config file"):
        load_config("no-such/config")


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "handwritten" / "dmrnet.yaml"
    local.parent.mkdir()
    local.write_text((CONFIGS / "handwritten" / "moddrop.yaml").read_text())
    assert resolve_config("handwritten/dmrnet.yaml") == Path("handwritten/dmrnet.yaml")
    assert load_config("handwritten/dmrnet.yaml").model.method == "moddrop"


def test_the_config_module_does_not_import_the_methods(make_config):
    """dmrnet.methods builds on dmrnet.config; an import the other way (even inside a function)
    would make the two a cycle. The schema of a method is found through the registry by name."""
    tree = ast.parse(Path(dmrnet.config.__file__).read_text())
    imported = [
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
        )
    ]
    assert imported and not [name for name in imported if name.startswith("dmrnet.methods")]
    assert parse_config(make_config("moddrop")).model.method == "moddrop"
