"""On-disk feature cache: keyed by encoder fingerprint (weights + preprocessing) and each input's content."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from pathlib import Path

import numpy as np

# caches opened in this process, by (root, fingerprint): experiments that train many models (search,
# cross-validation, seeds) read the shards from disk once, then only the shards other processes added
_OPEN: dict[tuple[str, str], FeatureCache] = {}


def entry_name(fingerprint: str) -> str:
    """A file-system name for a fingerprint: the encoder's name, readable, and a digest of the whole."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", fingerprint.split("|")[0])[:40]
    digest = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]
    return f"{slug}-{digest}"


class FeatureCache:
    """Append-only shards of (key, array) pairs under one folder per encoder fingerprint.

    A shard holds either vectors (N, D) float32, or token sequences of varied lengths: their rows joined
    (sum T_i, D) in float16 with the lengths (N,) beside them (a token cache is ~50x the pooled one).
    """

    def __init__(self, root: Path | None, fingerprint: str):
        self.fingerprint = fingerprint
        self.dir: Path | None = None
        self._store: dict[str, np.ndarray] = {}
        self._shards: set[str] = set()  # shard files already read
        if root is None:
            return
        self.dir = Path(root) / "features" / entry_name(fingerprint)
        self.refresh()

    @classmethod
    def open(cls, root: Path | None, fingerprint: str) -> FeatureCache:
        """The process's cache for this fingerprint, brought up to date with the shards on disk."""
        if root is None:
            return cls(None, fingerprint)
        key = (str(Path(root).expanduser().resolve()), fingerprint)
        cache = _OPEN.get(key)
        if cache is None:
            cache = _OPEN[key] = cls(root, fingerprint)
        else:
            cache.refresh()
        return cache

    def refresh(self) -> None:
        """Read the shards not read yet (all of them the first time)."""
        if self.dir is None or not self.dir.is_dir():
            return
        for shard in sorted(self.dir.glob("shard-*.npz")):
            if shard.name in self._shards:
                continue
            self._shards.add(shard.name)
            try:
                with np.load(shard, allow_pickle=False) as data:
                    values = data["values"]
                    if "lengths" in data:  # ragged: (sum T_i, D) -> one (T_i, D) view per key
                        values = np.split(values, np.cumsum(data["lengths"])[:-1])
                    for key, vec in zip(data["keys"], values, strict=True):
                        self._store[str(key)] = vec
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard only costs recomputation

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: str) -> np.ndarray | None:
        return self._store.get(key)

    def put_many(self, keys: list[str], values: np.ndarray) -> None:
        """Add vectors (N, D) and persist them as one new shard."""
        values = np.asarray(values, dtype=np.float32)
        for key, vec in zip(keys, values, strict=True):
            self._store[key] = vec
        self._write_shard(keys, values=values)

    def put_sequences(self, keys: list[str], sequences: list[np.ndarray]) -> None:
        """Add token sequences [(T_i, D)] and persist them as one new shard, in float16."""
        sequences = [np.asarray(s, dtype=np.float16) for s in sequences]
        for key, seq in zip(keys, sequences, strict=True):
            self._store[key] = seq
        if sequences:
            self._write_shard(keys, values=np.concatenate(sequences), lengths=np.array([len(s) for s in sequences]))

    def _write_shard(self, keys: list[str], **arrays: np.ndarray) -> None:
        """One new shard file (atomic: temp file, then rename), so readers never see half of one."""
        if self.dir is None or not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "fingerprint.txt").write_text(self.fingerprint + "\n", encoding="utf-8")
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=self.dir, prefix=".tmp-")
        os.close(fd)
        try:
            np.savez(tmp, keys=np.array(keys, dtype=str), **arrays)
            name = f"shard-{uuid.uuid4().hex}.npz"
            os.replace(tmp, self.dir / name)
            self._shards.add(name)  # already in memory
        finally:
            Path(tmp).unlink(missing_ok=True)
