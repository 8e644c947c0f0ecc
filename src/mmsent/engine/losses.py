"""Losses: class-weighted cross-entropy with weights from the training labels; supervised contrastive."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def balanced_class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """n / (C * count_c), as scikit-learn's 'balanced'; a missing class gets weight 1."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(kind: str, y_train: np.ndarray, num_classes: int, label_smoothing: float = 0.0) -> nn.Module:
    weight = balanced_class_weights(y_train, num_classes) if kind == "balanced" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def supervised_contrastive_loss(embeddings: torch.Tensor, y: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Khosla et al. (2020): each post is pulled towards the other posts of its class in the batch and pushed
    from the rest, on L2-normalised embeddings (B, H). Posts with no other post of their class add nothing."""
    z = nn.functional.normalize(embeddings, dim=-1)
    logits = z @ z.T / temperature  # (B, B)
    self_mask = torch.eye(len(y), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # log p(j | i) over j != i
    positives = (y[:, None] == y[None, :]) & ~self_mask  # (B, B)
    counts = positives.sum(1)
    anchors = counts > 0
    if not anchors.any():
        return embeddings.sum() * 0.0  # keeps the graph: no pair in this batch
    summed = log_prob.masked_fill(~positives, 0.0).sum(1)  # (B,)
    return -(summed[anchors] / counts[anchors]).mean()
