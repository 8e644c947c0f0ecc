"""Named presets, one per row of the study, plus the offline default: partial configs merged under the user's."""

from __future__ import annotations

import copy
from typing import Any

from mmsent.errors import ConfigError

# How the study's models train: one MLP head with AdamW and early stopping on the validation split.
STUDY_TRAINING: dict[str, Any] = {
    "model": {"head": "concat", "dropout": 0.3, "feature_scale": {}},
    "train": {"optimizer": "adamw", "weight_decay": 1e-2, "epochs": 60, "patience": 10, "ensemble": 1,
              "decision": "argmax"},
}


def _study(encoders: list[str], head: str = "concat") -> dict[str, Any]:
    """A row of the study: its encoders and head, trained the study's way."""
    config = copy.deepcopy(STUDY_TRAINING)
    config["model"].update(encoders=encoders, head=head)
    return config


# Each preset is a partial config; --config and --set are applied on top of it.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "description": "the default (what `make run` trains): MiniLM-L6 + EfficientNet-Lite0 + VADER + tweet "
                       "lexicon, five cross-fitted logistic regressions, macro-F1 decision, calibrated",
        "config": {},
    },
    "best": {
        "description": "the best of this stack on 2 cores (under 30 minutes): the default plus e5-small text "
                       "embeddings",
        "config": {"model": {"encoders": ["minilm", "e5", "efficientnet_lite0", "vader", "lexicon"]}},
    },
    "mlp": {
        "description": "the default until 0.1: MiniLM-L6 + EfficientNet-Lite0 + VADER, concat MLP (AdamW)",
        "config": _study(["minilm", "efficientnet_lite0", "vader"]),
    },
    "finetune": {
        "description": "the default's encoders trained end to end with a concat MLP head (Accelerate; slow on a CPU)",
        "config": {"model": {"head": "concat", "dropout": 0.3, "feature_scale": {}},
                   "train": {"mode": "finetune", "optimizer": "adamw", "weight_decay": 1e-2, "ensemble": 1,
                             "decision": "argmax", "epochs": 5, "patience": 2, "batch_size": 32}},
    },
    "tfidf_resnet18": {
        "description": "Stage-1 baseline: TF-IDF + ResNet18 (ImageNet), concat MLP",
        "config": _study(["tfidf", "resnet18"]),
    },
    "bert_resnet18_concat": {
        "description": "BERT-base + ResNet18, concatenation fusion",
        "config": _study(["bert", "resnet18"]),
    },
    "bert_resnet18_gated": {
        "description": "BERT-base + ResNet18, gated fusion",
        "config": _study(["bert", "resnet18"], "gated"),
    },
    "bert_resnet18_late": {
        "description": "BERT-base + ResNet18, late fusion",
        "config": _study(["bert", "resnet18"], "late"),
    },
    "clip": {
        "description": "CLIP ViT-B/32 text and image towers, concat MLP",
        "config": _study(["clip_text", "clip_image"]),
    },
    "clip_ln": {
        "description": "CLIP ViT-B/32 towers, LayerNorm head (the study's best)",
        "config": _study(["clip_text", "clip_image"], "ln"),
    },
    "blip": {
        "description": "BLIP ITM base (COCO) image and text features, concat MLP",
        "config": _study(["blip_text", "blip_image"]),
    },
}


def list_presets() -> dict[str, str]:
    return {name: p["description"] for name, p in PRESETS.items()}


def preset_config(name: str) -> dict[str, Any]:
    """The partial config of preset `name` (a copy)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name]["config"])


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """update merged into base, section by section (update wins)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
