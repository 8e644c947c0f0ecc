"""The classifier: encoders (`forward_features`) and a fusion head over standardised features (`forward_head`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mmsent import LABELS
from mmsent.errors import ConfigError
from mmsent.heads import create_head


class FusionClassifier(nn.Module):
    """Standardise each encoder's features, group them by modality, apply the fusion heads and the decision.

    Input: {encoder name: (B, D_enc)}; output: logits (B, C). With several heads (an ensemble) the
    output is the log of their mean class probabilities; the decision (per-class offsets, then a
    temperature, both fitted on out-of-fold predictions) is applied last, so that softmax of the
    output gives the calibrated probabilities and argmax the tag. This is the trainable part in
    frozen mode and the part a checkpoint stores; encoders are rebuilt from the config.
    """

    def __init__(
        self,
        encoder_dims: dict[str, int],
        encoder_modalities: dict[str, str],
        head: str,
        head_kwargs: dict,
        num_classes: int = len(LABELS),
        token_encoders: list[str] | None = None,
        num_heads: int = 1,
        feature_scale: dict[str, float] | None = None,
        modality_dropout: float = 0.0,
    ):
        super().__init__()
        self.encoder_dims = dict(encoder_dims)
        # an encoder's standardised features are multiplied by its scale (folded into std by fit_scaler)
        self.feature_scale = dict(feature_scale or {})
        self.modality_dropout = modality_dropout  # training only: see _drop_modalities_at_random
        self.encoder_modalities = dict(encoder_modalities)
        # encoders whose input here is a token sequence (B, T, D) with a mask under "<name>.mask"
        self.token_encoders = list(token_encoders or [])
        self.order = list(encoder_dims)  # fixed concatenation order within a modality
        for name, dim in encoder_dims.items():
            self.register_buffer(f"mean_{name}", torch.zeros(dim))
            self.register_buffer(f"std_{name}", torch.ones(dim))
        modality_dims: dict[str, int] = {}
        for name in self.order:
            modality = encoder_modalities[name]
            modality_dims[modality] = modality_dims.get(modality, 0) + encoder_dims[name]
        per_modality = [encoder_modalities[n] for n in self.token_encoders]
        if len(per_modality) != len(set(per_modality)):
            raise ValueError("at most one token encoder per modality")
        self.modality_dims = modality_dims
        self.drop_modalities: frozenset[str] = frozenset()  # blanked at inference (ablation)
        self.heads = nn.ModuleList(create_head(head, modality_dims, num_classes, **head_kwargs) for _ in range(num_heads))
        # the decision: logits = (log p + offsets) / temperature; identity until fitted
        self.register_buffer("offsets", torch.zeros(num_classes))
        self.register_buffer("temperature", torch.ones(()))

    def fit_scaler(self, features: dict[str, np.ndarray]) -> None:
        """Set per-dimension mean/std from training features (never from validation), and what heads fit on them."""
        for name in self.order:
            values = features[name]
            if name in self.token_encoders:
                values = values[features[f"{name}.mask"].astype(bool)]  # valid tokens only: (N_tok, D)
            mean = values.mean(axis=0)
            std = values.std(axis=0)
            getattr(self, f"mean_{name}").copy_(torch.from_numpy(mean))
            std = np.where(std < 1e-6, 1.0, std) / self.feature_scale.get(name, 1.0)
            getattr(self, f"std_{name}").copy_(torch.from_numpy(std.astype(np.float32)))
        self._fit_head_inputs(features)

    def _fit_head_inputs(self, features: dict[str, np.ndarray]) -> None:
        """Heads with fitted inputs (the bilinear head's projections) fit them on the standardised training
        features; the first fits, the other members of an ensemble take the same (nothing in it saw a tag)."""
        fitting = [head for head in self.heads if hasattr(head, "fit_inputs")]
        if not fitting or self.token_encoders:
            return
        with torch.no_grad():
            groups = self.group_by_modality({n: torch.as_tensor(features[n], dtype=torch.float32) for n in self.order},
                                            random_drop=False)
            fitted = None
            for head in fitting:
                fitted = head.fit_inputs(groups, fitted)

    def training_mean(self, name: str) -> np.ndarray:
        """An encoder's training mean (D,): features equal to it standardise to 0, i.e. are blanked."""
        return getattr(self, f"mean_{name}").detach().cpu().numpy()

    def group_by_modality(self, features: dict[str, torch.Tensor], random_drop: bool = True) -> dict[str, torch.Tensor]:
        """{encoder: (B, D_enc)} -> {modality: (B, D_modality)}, standardised.

        A modality in `drop_modalities` becomes zeros, i.e. the training mean after standardisation; in
        training, modality dropout blanks some at random unless random_drop is False.
        """
        groups: dict[str, list[torch.Tensor]] = {}
        for name in self.order:
            x = (features[name] - getattr(self, f"mean_{name}")) / getattr(self, f"std_{name}")
            if self.encoder_modalities[name] in self.drop_modalities:
                x = torch.zeros_like(x)
            groups.setdefault(self.encoder_modalities[name], []).append(x)
        if random_drop and self.training and self.modality_dropout > 0 and len(groups) > 1:
            groups = self._drop_modalities_at_random(groups)
        if not self.token_encoders:
            return {m: torch.cat(parts, dim=-1) for m, parts in groups.items()}
        return self._token_groups(groups, features)

    def _drop_modalities_at_random(self, groups: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
        """Modality dropout: each post loses one modality (blanked to its mean) with probability modality_dropout."""
        modalities = list(groups)
        batch = groups[modalities[0]][0].shape[0]
        dropped = torch.rand(batch) < self.modality_dropout  # (B,) posts that lose a modality
        which = torch.randint(len(modalities), (batch,))  # (B,) the modality each of them loses
        out = {}
        for index, modality in enumerate(modalities):
            keep = ~(dropped & (which == index))  # (B,)
            out[modality] = [x * keep.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) for x in groups[modality]]
        return out

    def _token_groups(self, groups: dict[str, list[torch.Tensor]], features: dict[str, torch.Tensor]) -> dict:
        """Per modality (tokens (B, T, D), mask (B, T)); pooled features of the modality join every token."""
        out: dict = {}
        for modality, parts in groups.items():
            seq = [p for p in parts if p.dim() == 3]
            pooled = [p for p in parts if p.dim() == 2]
            if not seq:
                out[modality] = torch.cat(pooled, dim=-1)  # (B, D): one token
                continue
            tokens = seq[0]
            name = next(n for n in self.token_encoders if self.encoder_modalities[n] == modality)
            mask = features[f"{name}.mask"].bool()
            if pooled:
                extra = torch.cat(pooled, dim=-1).unsqueeze(1).expand(-1, tokens.shape[1], -1)  # (B, T, D_pooled)
                tokens = torch.cat([tokens, extra], dim=-1)
            out[modality] = (tokens, mask)
        return out

    @property
    def token_level(self) -> bool:
        return bool(getattr(self.heads[0], "token_level", False))

    def member(self, index: int) -> HeadView:
        """Head `index` alone on this classifier's grouping: what training one member of the ensemble sees."""
        return HeadView(self, index)

    def set_decision(self, offsets: np.ndarray, temperature: float) -> None:
        self.offsets.copy_(torch.as_tensor(offsets, dtype=torch.float32))
        self.temperature.fill_(float(temperature))

    def prepare_fixed_inputs(self, features: dict[str, torch.Tensor]) -> tuple[Callable, dict]:
        """(forward on grouped inputs, the grouped inputs) for a full-batch optimiser (see trainer.fixed_inputs)."""
        if self.modality_dropout > 0:
            return self, features  # grouping is random in training: redo it on every call
        with torch.no_grad():
            return self.forward_groups, self.group_by_modality(features)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_groups(self.group_by_modality(features))

    def forward_groups(self, groups: dict) -> torch.Tensor:
        """Standardised {modality: features} -> decision logits (B, C)."""
        if len(self.heads) == 1:
            return self.decide(self.heads[0](groups))
        per_head = torch.stack([torch.log_softmax(h(groups), dim=-1) for h in self.heads])  # (K, B, C)
        log_p = torch.logsumexp(per_head, dim=0) - math.log(len(self.heads))  # log of the mean probability
        return (log_p + self.offsets) / self.temperature  # (B, C)

    def decide(self, head_logits: torch.Tensor) -> torch.Tensor:
        """One head's logits (B, C) -> decision logits: (log p + offsets) / temperature."""
        return (torch.log_softmax(head_logits, dim=-1) + self.offsets) / self.temperature

    def spec(self) -> dict:
        """What rebuilding this module needs besides its weights."""
        return {
            "encoder_dims": self.encoder_dims,
            "encoder_modalities": self.encoder_modalities,
            "token_encoders": self.token_encoders,
        }


class HeadView(nn.Module):
    """One head of a FusionClassifier with the classifier's standardisation: raw logits (B, C) of that member.

    Only the head is a submodule, so an optimiser and a best-epoch snapshot see that member's weights alone.
    """

    def __init__(self, classifier: FusionClassifier, index: int):
        super().__init__()
        object.__setattr__(self, "classifier", classifier)  # not a submodule: its other heads stay out
        self.head = classifier.heads[index]

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.classifier.group_by_modality(features))

    def prepare_fixed_inputs(self, features: dict[str, torch.Tensor]) -> tuple[Callable, dict]:
        """(this member's head, the grouped inputs) for a full-batch optimiser (see trainer.fixed_inputs)."""
        forward, groups = self.classifier.prepare_fixed_inputs(features)
        return (self, features) if forward is self.classifier else (self.head, groups)


class AuxiliaryLosses(nn.Module):
    """A head in training with auxiliary losses beside its own; the head alone is kept once it has trained.

    `unimodal`: the head also predicts from each modality alone (the others blanked to their training mean,
    as modality ablation does), and the mean cross-entropy of those predictions, times the weight, joins the
    loss: every modality must carry the tag through the head's own weights. (Separate classifiers on frozen
    features would share no weight with the head and change nothing it learns.)
    `supcon`: a supervised contrastive loss on the head's hidden layer (heads with forward_features).
    `trained` is the FusionClassifier (one head) or a HeadView (a member of the cross-fitted ensemble).
    """

    def __init__(self, trained: nn.Module, classifier: FusionClassifier, unimodal: float, supcon: float,
                 temperature: float):
        super().__init__()
        self.trained = trained
        # not submodules: `trained` holds what trains (its state is what the best epoch restores)
        object.__setattr__(self, "classifier", classifier)
        object.__setattr__(self, "head", trained.head if isinstance(trained, HeadView) else classifier.heads[0])
        if supcon and not hasattr(self.head, "forward_features"):
            raise ConfigError(f"train.supcon_loss needs a head with a hidden layer (concat, ln or mlp), not "
                              f"{type(self.head).__name__}; set model.head or train.supcon_loss=0")
        self.unimodal, self.supcon, self.temperature = unimodal, supcon, temperature

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.trained(features)

    def _decided(self, logits: torch.Tensor) -> torch.Tensor:
        """The single head's decision is part of its logits, as in FusionClassifier.forward; a member's is not."""
        return self.classifier.decide(logits) if isinstance(self.trained, FusionClassifier) else logits

    def training_loss(self, features: dict[str, torch.Tensor], y: torch.Tensor, loss_fn: nn.Module) -> torch.Tensor:
        from mmsent.engine.losses import supervised_contrastive_loss

        groups = self.classifier.group_by_modality(features)  # {modality: (B, D_m) or (tokens, mask)}, standardised
        hidden = self.head.forward_features(groups) if self.supcon else None  # (B, H)
        logits = self.head.forward_head(hidden) if hidden is not None else self.head(groups)  # (B, C)
        loss = loss_fn(self._decided(logits), y)
        if hidden is not None:
            loss = loss + self.supcon * supervised_contrastive_loss(hidden, y, self.temperature)
        if self.unimodal and len(groups) > 1:
            alone = [loss_fn(self._decided(self.head({m: v if m == kept else _blanked(v) for m, v in groups.items()})), y)
                     for kept in groups]
            loss = loss + self.unimodal * torch.stack(alone).mean()
        return loss


def _blanked(value: torch.Tensor | tuple) -> torch.Tensor | tuple:
    """A standardised modality input at its training mean: zeros (token inputs keep their mask)."""
    if isinstance(value, tuple):
        return torch.zeros_like(value[0]), value[1]
    return torch.zeros_like(value)


def with_auxiliary_losses(trained: nn.Module, classifier: FusionClassifier, unimodal: float, supcon: float,
                          temperature: float) -> nn.Module:
    """`trained` wrapped in AuxiliaryLosses where a weight asks for them; else `trained` itself."""
    if not unimodal and not supcon:
        return trained
    return AuxiliaryLosses(trained, classifier, unimodal, supcon, temperature)


class MultimodalModel(nn.Module):
    """Encoders and fusion classifier end to end, for fine-tuning: inputs {encoder: batch} -> logits."""

    def __init__(self, encoders: dict[str, nn.Module], classifier: FusionClassifier, cached: list[str] | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.classifier = classifier
        # encoders that stay frozen while the others fine-tune: their inputs here are cached features (B, D)
        self.cached = list(cached or [])

    def forward_features(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{encoder: collated batch} -> {encoder: (B, D_enc)}, or (B, T, D_tok) plus "<name>.mask" for token encoders."""
        feats: dict[str, torch.Tensor] = {}
        for name, batch in inputs.items():
            if name in self.cached:
                feats[name] = batch  # (B, D_enc), from the feature cache
            elif name in self.classifier.token_encoders:
                feats[name], feats[f"{name}.mask"] = self.encoders[name].forward_tokens(batch)
            else:
                feats[name] = self.encoders[name](batch)
        return feats

    def forward_head(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features)  # (B, C)

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.forward_head(self.forward_features(inputs))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The encoder weights that fine-tuning trains (not those of cached encoders, nor frozen layers)."""
        return [p for name, e in self.encoders.items() if name not in self.cached for p in e.parameters() if p.requires_grad]
