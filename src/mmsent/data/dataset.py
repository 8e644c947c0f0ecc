"""Record batches for fine-tuning: each encoder's item loader per record, its collate per batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmsent.data.records import Record


class RecordDataset(Dataset):
    """(inputs {encoder: item}, label) per record; label -1 when unknown.

    Encoders in `features` (frozen while others fine-tune) give their cached feature row instead of an item.
    """

    def __init__(self, records: list[Record], loaders: dict[str, Callable[[Record], Any]], labels: np.ndarray,
                 features: dict[str, np.ndarray] | None = None):
        self.records = records
        self.loaders = loaders
        self.labels = labels
        self.features = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in (features or {}).items()}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        items = {name: load(record) for name, load in self.loaders.items() if name not in self.features}
        items.update({name: rows[i] for name, rows in self.features.items()})  # (D,)
        return items, int(self.labels[i])


class _Collate:
    """Batches per-record items with each encoder's own collate (tokenizer, tensor stacking)."""

    def __init__(self, collates: dict[str, Callable[[list[Any]], Any]]):
        self.collates = collates

    def __call__(self, batch: list[tuple[dict[str, Any], int]]):
        inputs = {name: collate([item[name] for item, _ in batch]) for name, collate in self.collates.items()}
        return inputs, torch.tensor([label for _, label in batch], dtype=torch.long)


def record_batches(
    records: list[Record],
    labels: np.ndarray,
    loaders: dict[str, Callable[[Record], Any]],
    collates: dict[str, Callable[[list[Any]], Any]],
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    features: dict[str, np.ndarray] | None = None,
) -> DataLoader:
    """A DataLoader over raw records: each encoder's item loader per record, its collate per batch.

    `features` {encoder: (N, D)} replaces the items of encoders that stay frozen (stacked into (B, D)).
    """
    collates = {name: torch.stack if name in (features or {}) else fn for name, fn in collates.items()}
    return DataLoader(
        RecordDataset(records, loaders, labels, features),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=_Collate(collates),
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
