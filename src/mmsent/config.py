"""Typed run configuration: validated sections, YAML load/save and `key=value` overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmsent.errors import ConfigError
from mmsent.files import atomic_write_text


class _Section(BaseModel):
    """Base of every config section: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = 42
    on_error: Literal["fail", "skip"] = "fail"
    # decompression-bomb guard, checked from the header before any decoding
    max_image_pixels: int = Field(89_478_485, gt=0)
    # augmentation folders (or their manifest.csv) whose copies are added to the training split only
    augment: list[str] = Field(default_factory=list)


class TextConfig(_Section):
    """Text cleaning steps, each on or off (see mmsent.data.text)."""

    remove_urls: bool = True
    remove_mentions: bool = True
    hashtags_to_words: bool = True
    # "#ThrowbackThursday" -> "Throwback Thursday", "#happyfriday" -> "happy friday" (wordsegment); implies words
    segment_hashtags: bool = False
    lowercase: bool = True
    fold_whitespace: bool = True
    emoji: Literal["keep", "token", "name"] = "name"
    fold_repeats: bool = True
    remove_stopwords: bool = False


class ImageConfig(_Section):
    """Training-time augmentation; eval preprocessing belongs to the image encoder."""

    crop_scale_min: float = Field(0.7, gt=0.0, le=1.0)
    hflip: bool = True
    color_jitter: float = Field(0.1, ge=0.0, le=1.0)


class ModelConfig(_Section):
    """The model; the defaults are the `default` model (chosen by cross-validation, see the README)."""

    encoders: list[str] = Field(default_factory=lambda: ["minilm", "efficientnet_lite0", "vader", "lexicon"])
    head: str = "linear"
    hidden_dim: int = Field(256, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    layernorm: bool = False
    # keyword options of the head, e.g. {"rank": 32, "scale": 0.6} for the bilinear head
    head_options: dict[str, Any] = Field(default_factory=dict)
    # per-encoder keyword options, e.g. {"bert": {"name_or_path": "/models/bert"}}
    encoder_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # weight of an encoder's standardised features in the head's input, e.g. {"lexicon": 3}: with an L2
    # penalty a larger scale means a weaker penalty on that encoder's weights (default 1; encoders the
    # model does not use are ignored)
    feature_scale: dict[str, float] = Field(default_factory=lambda: {"vader": 3.0, "lexicon": 3.0})
    # training only: each post loses one modality (set to its mean) with this probability, so that the head
    # does not lean on one side alone
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("encoders")
    @classmethod
    def _at_least_one(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one encoder is needed")
        if len(set(value)) != len(value):
            raise ValueError("an encoder is listed twice")
        return value


class TrainConfig(_Section):
    """How the model trains; the defaults train the `default` model: a cross-fitted ensemble of logistic regressions."""

    # frozen: features cached once, only the head trains; finetune: backbones train too
    mode: Literal["frozen", "finetune"] = "frozen"
    epochs: int = Field(15, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0.0)  # the head's learning rate
    backbone_lr: float = Field(2e-5, gt=0.0)  # fine-tune mode: the encoders' learning rate
    freeze_epochs: int = Field(0, ge=0)  # fine-tune mode: backbones frozen for the first N epochs
    # fine-tune mode: the encoders that train (all when empty); the others stay frozen and their features
    # come from the feature cache, e.g. [minilm] fine-tunes the text while the image features are cached
    finetune: list[str] = Field(default_factory=list)
    grad_accum_steps: int = Field(1, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # AdamW's decoupled decay; with lbfgs the L2 coefficient (0.3 ~ scikit-learn's C = 1 / (0.3 n) ~ 0.001 here)
    weight_decay: float = Field(0.3, ge=0.0)
    # adamw: mini-batches; lbfgs: full-batch L-BFGS on the L2-penalised loss (with head=linear, a logistic
    # regression), lbfgs_steps iterations per epoch
    optimizer: Literal["adamw", "lbfgs"] = "lbfgs"
    lbfgs_steps: int = Field(20, gt=0)
    patience: int = Field(5, gt=0)
    class_weights: Literal["balanced", "none"] = "balanced"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # auxiliary losses while a head trains (frozen mode, adamw; the saved model is the head alone):
    # unimodal_loss weights the cross-entropy of the head's predictions from each modality alone (the
    # others blanked); supcon_loss a supervised contrastive loss on its hidden layer (concat-family heads)
    unimodal_loss: float = Field(0.0, ge=0.0)
    supcon_loss: float = Field(0.0, ge=0.0)
    supcon_temperature: float = Field(0.1, gt=0.0)
    seed: int = 42
    # heads trained and averaged (frozen mode); with two or more each early-stops on its own fold of the
    # training split (cross-fitting), so the validation split is used for nothing but the report
    ensemble: int = Field(5, ge=1, le=50)
    # the tag rule, fitted on the heads' out-of-fold predictions (ensemble >= 2): per-class offsets that
    # maximise macro-F1 or accuracy, or plain argmax
    decision: Literal["argmax", "macro_f1", "accuracy"] = "macro_f1"
    # offsets averaged over this many bootstrap resamples of the out-of-fold predictions (0: one fit on
    # them all); the objective is flat near its best, so a single fit moves with the training seed
    decision_bootstraps: int = Field(32, ge=0, le=1000)
    # temperature scaling of the probabilities on the same out-of-fold predictions (ensemble >= 2)
    calibrate: bool = True

    @model_validator(mode="after")
    def _frozen_only(self) -> TrainConfig:
        if self.mode != "frozen" and (self.ensemble > 1 or self.optimizer == "lbfgs"):
            raise ValueError(
                "train.mode=finetune trains one model end to end with AdamW: it needs train.ensemble=1 and "
                "train.optimizer=adamw (the defaults train an ensemble of heads with L-BFGS); start from "
                "--preset finetune, or set both"
            )
        if (self.unimodal_loss or self.supcon_loss) and (self.mode != "frozen" or self.optimizer != "adamw"):
            raise ValueError("train.unimodal_loss and train.supcon_loss train beside a head on cached features with "
                             "mini-batches: they need train.mode=frozen and train.optimizer=adamw")
        return self


class RuntimeConfig(_Section):
    cache_dir: str | None = None
    # small batches encode faster on a CPU: activations stay below glibc's mmap threshold, so memory is
    # reused instead of mapped and faulted in afresh (EfficientNet-Lite0: 12 s per 384 images at 4, 22 s at 64)
    encode_batch_size: int = Field(4, gt=0)
    # texts are encoded longest-alike together (sorted by length), so larger batches pad little and run faster:
    # MiniLM in ONNX Runtime took 3.2 / 3.4 / 3.8 ms per text in sorted batches of 16 / 8 / 4 (6.3 unsorted at 4);
    # the price of 16: ONNX Runtime's arena grows about 45 MB more than with 4 (the last batches are the longest)
    text_batch_size: int = Field(16, gt=0)
    # image loader processes; None: one per 4 cores (see mmsent.encoders.runtime.loader_processes)
    num_workers: int | None = Field(None, ge=0)
    # threads of the encoders' inference: by default the cores less the image loader's workers, so that the
    # network and the decoding processes do not fight over the cores (see mmsent.encoders.runtime)
    threads: int | None = Field(None, gt=0)
    # how frozen encoders run at inference: onnx exports each one once (under the cache folder, checked
    # against torch) and runs it with ONNX Runtime, falling back to torch with a note where that fails;
    # auto does the same but uses torch quietly where ONNX Runtime is not installed; torch never exports
    backend: Literal["auto", "torch", "onnx"] = "auto"
    # a trained run folder carries the verified ONNX exports of its frozen encoders (hard links into the cache
    # where the file system allows): predict and serve then start without building those encoders in torch
    bundle_exports: bool = True


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    def tuned_encoders(self) -> list[str]:
        """The encoders whose weights training changes (fine-tune mode); the rest keep their named weights."""
        if self.train.mode != "finetune":
            return []
        return list(self.train.finetune) or list(self.model.encoders)

    @model_validator(mode="after")
    def _sections_agree(self) -> Config:
        unknown = sorted(set(self.train.finetune) - set(self.model.encoders))
        if unknown:
            raise ValueError(f"train.finetune names encoder(s) not in model.encoders: {', '.join(unknown)}")
        if self.train.optimizer == "lbfgs" and (self.model.dropout > 0 or self.model.modality_dropout > 0):
            raise ValueError("train.optimizer=lbfgs needs model.dropout=0 and model.modality_dropout=0 "
                             "(L-BFGS needs the same loss at every step)")
        return self

    def with_values(self, values: dict[str, Any]) -> Config:
        """A validated copy with `section.key` values set: the one way to derive a config from another."""
        raw = config_to_dict(self)
        for dotted, value in values.items():
            set_dotted(raw, str(dotted), value)
        return _validate(raw, "overrides " + ", ".join(f"{k}={v}" for k, v in values.items()))

    def cache_path(self) -> Path:
        """The feature cache folder: config, then $MMSENT_CACHE, then ~/.cache/mmsent."""
        if self.runtime.cache_dir:
            return Path(self.runtime.cache_dir).expanduser()
        env = os.environ.get("MMSENT_CACHE")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "mmsent"


def _validate(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [f"invalid config ({source}):"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {message}" if key else f"  {message}")
        raise ConfigError("\n".join(lines)) from None


def read_yaml_mapping(path: str | Path, what: str, allow_empty: bool = True) -> dict[str, Any]:
    """A YAML file that must hold a mapping (a config, grid, space or variants file); clear errors otherwise."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {path} is not valid YAML: {exc}") from None
    if loaded is None and allow_empty:
        return {}
    if not isinstance(loaded, dict) or (not loaded and not allow_empty):
        raise ConfigError(f"{what} file {path} must hold a {'' if allow_empty else 'non-empty '}mapping")
    return loaded


def config_from_text(text: str, source: str) -> Config:
    """A config from the YAML text of a complete config (a run's config.yaml), validated."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a mapping")
    return _validate(raw, source)


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, preset: str | None = None
) -> Config:
    """Defaults, then a preset, then a YAML config file, then `key=value` overrides; validated."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if preset is not None:
        from mmsent.presets import preset_config

        raw = preset_config(preset)
        source = f"preset {preset}"
    if path is not None:
        source = str(path) if source == "defaults" else f"{source} + {path}"
        loaded = read_yaml_mapping(path, "config")
        from mmsent.presets import deep_merge

        raw = deep_merge(raw, loaded)
    for item in overrides or []:
        apply_override(raw, item)
        source += f" + {item}"
    return _validate(raw, source)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `section.key=value` in a raw config dict; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    set_dotted(raw, dotted.strip(), value, what=f"override {item!r}")


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, what: str | None = None) -> None:
    """raw["a"]["b"] = value for "a.b", creating sections on the way."""
    what = what or repr(dotted)
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise ConfigError(f"{what} names no key")
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def config_to_dict(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")


def config_yaml(config: Config) -> str:
    """The full resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    """Write the full resolved config as YAML (atomically)."""
    atomic_write_text(Path(path), config_yaml(config))
