"""One model factory: `create_model(cfg) -> (model, preprocessing)`, used to train, load, serve and experiment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from mmsent import LABELS
from mmsent.config import Config
from mmsent.data.records import Record
from mmsent.encoders import Encoder, create_encoder
from mmsent.encoders.features import has_tokens, token_dim
from mmsent.encoders.registry import encoder_accepts
from mmsent.heads.registry import head_is_token_level
from mmsent.model import FusionClassifier, MultimodalModel


@dataclass(frozen=True)
class Preprocessing:
    """Each encoder's own input pipeline (tokenizer; image size, mean, std), as its weights expect it.

    Built on first use: a loaded run that only predicts never builds the training augmentation (and so
    never imports torchvision for it).
    """

    encoders: dict[str, Encoder]
    cfg: Config

    @cached_property
    def train(self) -> dict[str, Callable[[Record], Any]]:
        """record -> item, with the training augmentation."""
        return {n: e.item_loader(self.cfg, train=True) for n, e in self.encoders.items()}

    @cached_property
    def eval(self) -> dict[str, Callable[[Record], Any]]:
        """record -> item, deterministic."""
        return {n: e.item_loader(self.cfg, train=False) for n, e in self.encoders.items()}

    @property
    def collate(self) -> dict[str, Callable[[list[Any]], Any]]:
        """items -> the encoder's batch."""
        return {n: e.collate for n, e in self.encoders.items()}


def preprocessing_of(encoders: dict[str, Encoder], cfg: Config) -> Preprocessing:
    return Preprocessing(dict(encoders), cfg)


def create_encoders(
    cfg: Config, architecture_only: frozenset[str] = frozenset(), deferred: frozenset[str] = frozenset()
) -> dict[str, Encoder]:
    """Every encoder of the config, by name, with its options; missing weights stop here, before any data work.

    Encoders named in architecture_only (that take a `pretrained` option) are built without their
    pretrained weights: a fine-tuned run supplies them. Encoders named in deferred (that take a
    `defer_network` option) build their torch network on first use only: a run's ONNX export runs them.
    """
    encoders = {}
    for name in cfg.model.encoders:
        options = dict(cfg.model.encoder_options.get(name, {}))
        if name in architecture_only and encoder_accepts(name, "pretrained"):
            options["pretrained"] = False
        if name in deferred and encoder_accepts(name, "defer_network"):
            options["defer_network"] = True
        encoders[name] = create_encoder(name, **options)
    return encoders


def choose_token_encoders(cfg: Config, encoders: dict[str, Encoder]) -> list[str]:
    """For a token-level head: the first encoder with token features in each modality; else none."""
    if not head_is_token_level(cfg.model.head):
        return []
    chosen: dict[str, str] = {}
    for name, encoder in encoders.items():
        if has_tokens(encoder) and encoder.modality not in chosen:
            chosen[encoder.modality] = name
    return list(chosen.values())


def create_classifier(cfg: Config, encoders: dict[str, Encoder], token_encoders: list[str]) -> FusionClassifier:
    """The fusion classifier for these encoders, initialised reproducibly from train.seed."""
    dims = {n: token_dim(e) if n in token_encoders else e.dim for n, e in encoders.items()}
    modalities = {n: e.modality for n, e in encoders.items()}
    m = cfg.model
    head_kwargs = {"hidden_dim": m.hidden_dim, "dropout": m.dropout, "layernorm": m.layernorm, **m.head_options}
    with torch.random.fork_rng(devices=[]):  # the same seed gives the same head, whatever ran before
        torch.manual_seed(cfg.train.seed)
        return FusionClassifier(dims, modalities, m.head, head_kwargs, len(LABELS), token_encoders,
                                num_heads=cfg.train.ensemble, feature_scale=m.feature_scale,
                                modality_dropout=m.modality_dropout)


def create_model(
    cfg: Config,
    *,
    encoders: dict[str, Encoder] | None = None,
    fit_records: list[Record] | None = None,
    encoder_state: dict[str, dict] | None = None,
    architecture_only: frozenset[str] = frozenset(),
    deferred: frozenset[str] = frozenset(),
) -> tuple[MultimodalModel, Preprocessing]:
    """The model a config describes (encoders + fusion classifier) and its preprocessing.

    Stateful encoders (TF-IDF) learn from `fit_records` (the training split only) or get their saved
    `encoder_state` back before the classifier is sized from their dimensions. `encoders` passes
    encoders created earlier (to fail on missing weights before loading data).
    """
    encoders = encoders if encoders is not None else create_encoders(cfg, architecture_only, deferred)
    for name, state in (encoder_state or {}).items():
        encoders[name].load_extra_state_dict(state)
    if fit_records is not None:
        for encoder in encoders.values():
            encoder.fit(fit_records, cfg)
    classifier = create_classifier(cfg, encoders, choose_token_encoders(cfg, encoders))
    cached = [n for n in encoders if n not in cfg.tuned_encoders()] if cfg.train.mode == "finetune" else []
    return MultimodalModel(encoders, classifier, cached=cached), preprocessing_of(encoders, cfg)
