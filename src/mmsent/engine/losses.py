"""Losses: class-weighted cross-entropy with weights from the training labels."""

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
