"""Stratified train/validation splits as pure functions of the labels and a seed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split


def stratified_split(tags: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with class proportions kept; the same seed gives the same split."""
    indices = np.arange(len(tags))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, random_state=seed, stratify=list(tags), shuffle=True
    )
    return np.sort(train_idx), np.sort(val_idx)


def stratified_folds(tags: Sequence[str], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, held-out) index pairs; each index is held out exactly once."""
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in folds.split(np.zeros(len(tags)), list(tags))]
