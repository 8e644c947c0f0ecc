"""Config: defaults, YAML round trip, overrides, and clear errors for unknown keys and wrong types."""

from pathlib import Path

import pytest

from mmsent.config import Config, load_config, save_config
from mmsent.errors import ConfigError


def test_defaults_are_the_offline_model():
    cfg = load_config()
    assert cfg.model.encoders == ["minilm", "efficientnet_lite0", "vader", "lexicon"]
    assert cfg.model.head == "linear" and cfg.train.optimizer == "lbfgs" and cfg.train.ensemble == 5
    assert cfg.data.val_fraction == 0.1
    assert load_config(preset="default") == cfg


def test_settings_that_cannot_go_together_are_one_message():
    with pytest.raises(ConfigError, match="start from --preset finetune"):
        load_config(overrides=["train.mode=finetune"])
    with pytest.raises(ConfigError, match="lbfgs needs model.dropout=0"):
        load_config(overrides=["model.dropout=0.2"])
    assert load_config(preset="finetune").train.mode == "finetune"


def test_yaml_round_trip(tmp_path: Path):
    cfg = load_config(overrides=["train.lr=0.005", "model.layernorm=true", "model.encoders=[vader]"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert again.train.lr == 0.005 and again.model.layernorm is True and again.model.encoders == ["vader"]


def test_unknown_key_is_a_clear_error(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("train:\n  lrate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.lrate"):
        load_config(tmp_path / "c.yaml")


def test_wrong_type_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(overrides=["train.epochs=many"])


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["train.lr"])


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_cache_path_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSENT_CACHE", str(tmp_path / "env"))
    assert Config().cache_path() == tmp_path / "env"
    assert load_config(overrides=[f"runtime.cache_dir={tmp_path / 'cfg'}"]).cache_path() == tmp_path / "cfg"
