"""Stratified splits and folds that keep duplicate groups on one side: pure functions of tags, groups and a seed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from mmsent.errors import MmsentError


def _groups(n: int, groups: Sequence[int] | None) -> np.ndarray:
    return np.arange(n) if groups is None else np.asarray(groups)


def stratified_split(
    tags: Sequence[str], val_fraction: float, seed: int, groups: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about val_fraction of each class in val, every group on one side; seeded.

    Groups (duplicate posts, see data.duplicates) are visited in a seeded random order and join the
    validation side while every class stays within its quota round(val_fraction * class size); without
    groups every post is its own group, and this is a plain stratified random split.
    """
    tags = list(tags)
    groups = _groups(len(tags), groups)
    classes = sorted(set(tags))
    # at least one post of each class (that has two) on the validation side, so every class is scored
    quota = {c: max(1 if n >= 2 else 0, round(val_fraction * n)) for c, n in Counter(tags).items()}
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(int(g), []).append(i)
    order = list(members)
    np.random.default_rng(seed).shuffle(order)
    taken = Counter()
    chosen: set[int] = set()
    for g in order:
        counts = Counter(tags[i] for i in members[g])
        if all(taken[c] + k <= quota[c] for c, k in counts.items()):
            taken.update(counts)
            chosen.add(g)
    # a class whose posts all sit in groups larger than its quota: take its smallest group anyway
    for c in classes:
        if taken[c] == 0 and quota[c] > 0:
            candidates = [g for g in order if g not in chosen and c in {tags[i] for i in members[g]}]
            if candidates:
                g = min(candidates, key=lambda g: len(members[g]))
                taken.update(Counter(tags[i] for i in members[g]))
                chosen.add(g)
    val = [i for g in order if g in chosen for i in members[g]]
    short = [c for c in classes if taken[c] == 0 or taken[c] == Counter(tags)[c]]
    if short or not val:
        counts = ", ".join(f"{t} {n}" for t, n in sorted(Counter(tags).items()))
        raise MmsentError(
            f"cannot split {len(tags)} labelled posts ({counts}) into training and a validation fraction of "
            f"{val_fraction}: every class needs at least one post on each side (short: {', '.join(short) or 'all'}). "
            "Add labelled posts, or change data.val_fraction."
        )
    val_idx = np.sort(np.asarray(val))
    train_idx = np.setdiff1d(np.arange(len(tags)), val_idx)
    return train_idx, val_idx


def stratified_folds(
    tags: Sequence[str], k: int, seed: int, groups: Sequence[int] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, held-out) index pairs, stratified, every group in one fold; each index is held out once."""
    key = None if groups is None else tuple(int(g) for g in groups)
    return [(a.copy(), b.copy()) for a, b in _stratified_folds(tuple(tags), k, seed, key)]


@lru_cache(maxsize=64)
def _stratified_folds(
    tags: tuple[str, ...], k: int, seed: int, groups: tuple[int, ...] | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    # memoised: cross-validation asks for the same folds of the same posts once per candidate, and
    from sklearn.model_selection import StratifiedGroupKFold  # here, not at the top: see mmsent.engine.metrics

    # StratifiedGroupKFold takes seconds on a few thousand groups
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    pairs = folds.split(np.zeros(len(tags)), list(tags), _groups(len(tags), groups))
    return [(np.sort(a), np.sort(b)) for a, b in pairs]


def ratio_split(
    tags: Sequence[str], ratios: Sequence[float], seed: int, groups: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, validation, test) in the proportions ratios (8:1:1, say) within each class; every group on
    one side; seeded.

    The test part is cut first (its fraction of every class), then the validation part from the rest, each
    by stratified_split; so a post's side depends only on the tags, the groups, the ratios and the seed.
    """
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or not all(np.isfinite(r) and r > 0 for r in ratios):
        raise MmsentError(f"ratios must be three positive numbers (train, validation, test) such as 8,1,1, not {ratios}")
    tags = list(tags)
    groups = _groups(len(tags), groups)
    rest_seed, val_seed = np.random.default_rng(seed).integers(2**31, size=2)
    try:
        rest, test = stratified_split(tags, ratios[2] / sum(ratios), int(rest_seed), groups)
        train, val = stratified_split([tags[i] for i in rest], ratios[1] / (ratios[0] + ratios[1]), int(val_seed),
                                      groups[rest])
    except MmsentError:
        counts = ", ".join(f"{t} {n}" for t, n in sorted(Counter(tags).items()))
        raise MmsentError(
            f"cannot split {len(tags)} labelled posts ({counts}) by the ratios {':'.join(f'{r:g}' for r in ratios)}: "
            "every class needs at least one post in each part. Give more labelled posts or other ratios."
        ) from None
    return rest[train], rest[val], test
