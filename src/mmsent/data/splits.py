"""Stratified train/validation splits as pure functions of the labels and a seed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from mmsent.errors import MmsentError


def stratified_split(tags: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with class proportions kept; the same seed gives the same split."""
    indices = np.arange(len(tags))
    try:
        train_idx, val_idx = train_test_split(
            indices, test_size=val_fraction, random_state=seed, stratify=list(tags), shuffle=True
        )
    except ValueError as exc:  # too few posts for a stratified split: the user's data, not a bug
        counts = ", ".join(f"{t} {n}" for t, n in sorted(Counter(tags).items()))
        raise MmsentError(
            f"cannot split {len(tags)} labelled posts ({counts}) into training and a validation fraction of "
            f"{val_fraction}: every class needs at least 2 posts and the validation split at least one post per class "
            f"({exc}). Add labelled posts, or raise data.val_fraction."
        ) from None
    return np.sort(train_idx), np.sort(val_idx)


def stratified_folds(tags: Sequence[str], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, held-out) index pairs; each index is held out exactly once."""
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in folds.split(np.zeros(len(tags)), list(tags))]
