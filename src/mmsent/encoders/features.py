"""Turning records into feature matrices with a frozen encoder, through the cache."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmsent import distributed
from mmsent.config import Config
from mmsent.data.images import ImageReadError
from mmsent.data.records import Record
from mmsent.encoders.base import Encoder
from mmsent.encoders.cache import FeatureCache
from mmsent.encoders.runtime import (
    BULK_POSTS,
    Forward,
    TorchForward,
    chosen_onnx_path,
    frozen_forward,
    inference_threads,
    loader_processes,
    torch_threads,
)
from mmsent.errors import DataError, Problem


class _ItemDataset(Dataset):
    """Records mapped through an encoder's item loader; read errors are returned, not raised."""

    def __init__(self, records: list[Record], loader):
        self.records = records
        self.loader = loader

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        try:
            return i, self.loader(record), None
        except ImageReadError as exc:
            return i, None, Problem(record.guid, str(record.image_path), str(exc))


def loader_workers(encoder: Encoder, cfg: Config) -> int:
    """Worker processes that load the encoder's items: only image decoding is worth them."""
    return loader_processes(cfg) if encoder.modality == "image" else 0


def eval_items(encoder: Encoder, records: list[Record], cfg: Config) -> DataLoader:
    """Batches of (index, item, problem) for encoding."""
    return DataLoader(
        _ItemDataset(records, encoder.item_loader(cfg, train=False)),
        batch_size=cfg.runtime.text_batch_size if encoder.modality == "text" else cfg.runtime.encode_batch_size,
        shuffle=False,
        num_workers=loader_workers(encoder, cfg),
        collate_fn=list,
    )


_END = object()


def prefetched(batches: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """The batches, each produced up to `depth` ahead in a thread of its own.

    Without loader processes, an image batch used to be decoded and resized while the network waited, and
    the network ran while the decoding waited: PIL leaves the GIL while it decodes, so a thread overlaps them.
    """
    iterator = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="mmsent-decode") as pool:
        pending = deque(pool.submit(next, iterator, _END) for _ in range(depth))
        while True:
            batch = pending.popleft().result()
            if batch is _END:
                return
            pending.append(pool.submit(next, iterator, _END))
            yield batch


def prepare_inference(encoder: Encoder, cfg: Config) -> Forward:
    """Choose (export and check, where the backend says so) the forward that encodes with this config, now."""
    encoder.eval()
    return frozen_forward(encoder, cfg, inference_threads(cfg, loader_workers(encoder, cfg)))


def verified_export_path(encoder: Encoder, cfg: Config) -> Path | None:
    """The ONNX export this encoder runs from under cfg: one this process already checked (whatever its thread
    count), else one exported and checked now; None where the encoder runs in torch."""
    chosen = chosen_onnx_path(encoder, cfg)
    if chosen is not None:
        return chosen
    forward = prepare_inference(encoder, cfg)
    return forward.path if forward.backend == "onnx" else None


def release_inference(encoder: Encoder) -> None:
    """Free what encoding held for an encoder that ONNX Runtime ran: its sessions and its torch network.

    Both come back on first use (the checked export is opened again, the network built again), so a command
    calls this once an encoder's bulk encoding is over: on a cold `make run`, MiniLM's session and network
    are ~215 MB that the lexicon's encoding and head training would otherwise carry.
    """
    onnx = [f for f in encoder.__dict__.get("_frozen_forwards", {}).values() if f.backend == "onnx"]
    for forward in onnx:
        forward.release()
    if onnx:
        encoder.release_network()


@dataclass
class EncodeStats:
    encoder: str
    items: int
    cached: int
    computed: int


TOKENS = "tokens"  # the fingerprint suffix of an encoder's token features: their own cache entry


def encode_records(
    encoder: Encoder,
    records: list[Record],
    cfg: Config,
    cache_root: Path | None,
    quiet: bool = False,
    release: bool = False,
) -> tuple[np.ndarray, EncodeStats]:
    """Features (N, encoder.dim) for records, computing only what the cache lacks.

    `release`: free what encoding held once it is done (release_inference), and the torch network as soon as
    ONNX Runtime runs the checked export; for a caller that encodes nothing more for a while.
    """
    cache = FeatureCache.open(cache_root, encoder.cache_fingerprint())
    keys, stats = _fill_cache(encoder, records, cfg, cache, quiet, tokens=False, release=release)
    if release:
        release_inference(encoder)
    out = np.stack([cache.get(k) for k in keys]) if keys else np.zeros((0, encoder.dim), np.float32)
    return out.astype(np.float32, copy=False), stats


def encode_tokens(
    encoder: Encoder,
    records: list[Record],
    cfg: Config,
    cache_root: Path | None,
    quiet: bool = False,
) -> tuple[np.ndarray, np.ndarray, EncodeStats]:
    """Token features (N, T, D_tok) zero-padded to the longest and masks (N, T), through the token cache.

    The cache keeps each item's valid tokens in float16 (MiniLM's word pieces, EfficientNet's feature-map cells),
    so cross-validating a token-level head encodes each post once, not once per fold.
    """
    cache = FeatureCache.open(cache_root, f"{encoder.cache_fingerprint()}|{TOKENS}")
    keys, stats = _fill_cache(encoder, records, cfg, cache, quiet, tokens=True)
    sequences = [cache.get(k) for k in keys]
    longest = max((len(s) for s in sequences), default=1)
    tokens = np.zeros((len(records), longest, token_dim(encoder)), dtype=np.float32)
    masks = np.zeros((len(records), longest), dtype=bool)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = seq
        masks[row, : len(seq)] = True
    return tokens, masks, stats


def _fill_cache(
    encoder: Encoder, records: list[Record], cfg: Config, cache: FeatureCache, quiet: bool, tokens: bool,
    release: bool = False,
) -> tuple[list[str], EncodeStats]:
    """The records' cache keys, after computing what the cache lacks.

    Under a launcher every process encodes its share of what is missing into the cache folder, and
    reads the other shares from there once all are done: each item is encoded and written once.
    """
    keys = [encoder.item_key(r, cfg) for r in records]
    todo = _missing(cache, keys, records)
    computed = 0
    if distributed.launched() and cache.dir is not None:
        distributed.wait_for_everyone()  # all have listed what is missing before any adds to the folder: the same list
        share = dict(distributed.my_share(list(todo.items())))
        if share:
            _compute_into(encoder, share, cfg, cache, quiet, tokens, release)
        computed = len(share)
        distributed.wait_for_everyone()  # every share is in the cache folder now
        cache.refresh()
        # left: what the other processes wrote where this one cannot see it (each machine its own cache folder)
        todo = _missing(cache, keys, records)
    if todo:
        _compute_into(encoder, todo, cfg, cache, quiet, tokens, release)
        computed += len(todo)
    return keys, EncodeStats(encoder.name, len(records), len(records) - computed, computed)


def _missing(cache: FeatureCache, keys: list[str], records: list[Record]) -> dict[str, Record]:
    """{key: record} of the items the cache lacks, each key once, in record order."""
    todo: dict[str, Record] = {}
    for key, record in zip(keys, records, strict=True):
        if cache.get(key) is None and key not in todo:
            todo[key] = record
    return todo


class _Pending:
    """Computed items not yet in the cache: written as a shard every 1,024 so an interrupted encoding resumes."""

    def __init__(self, cache: FeatureCache, tokens: bool):
        self.cache, self.tokens = cache, tokens
        self.keys: list[str] = []
        self.values: list[np.ndarray] = []  # (B, dim) blocks, or one (T_i, D_tok) array per item

    def add(self, keys: list[str], out) -> None:
        self.keys += keys
        if self.tokens:
            tokens, mask = out  # (B, T, D_tok), (B, T)
            self.values += [t[m] for t, m in zip(tokens, mask, strict=True)]  # valid tokens only
        else:
            self.values.append(out)
        if len(self.keys) >= 1024:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        if self.tokens:
            self.cache.put_sequences(self.keys, self.values)
        else:
            self.cache.put_many(self.keys, np.concatenate(self.values))
        self.keys, self.values = [], []


def _compute_into(
    encoder: Encoder, todo: dict[str, Record], cfg: Config, cache: FeatureCache, quiet: bool, tokens: bool,
    release: bool = False,
) -> None:
    keys = list(todo)
    if encoder.modality == "text":  # texts of alike lengths in one batch pad little (the cache is keyed, not ordered)
        keys.sort(key=lambda k: len(todo[k].text))
    records = [todo[k] for k in keys]
    loader = eval_items(encoder, records, cfg)
    problems: list[Problem] = []
    pending = _Pending(cache, tokens)
    bar = tqdm(total=len(records), desc=f"{TOKENS if tokens else 'encode'} {encoder.name}", disable=quiet, unit="item")
    with torch_threads(inference_threads(cfg, loader.num_workers)), bar:
        # token features always run in torch: they are encoded once into the cache, so no export pays off
        forward = TorchForward(encoder).tokens if tokens else prepare_inference(encoder, cfg)
        if release and not tokens and forward.backend == "onnx":
            encoder.release_network()  # the checked export runs from here on: its torch twin (~90 MB for MiniLM) can go
        # image decoding in a thread beside the network, where no loader processes do it (bulk jobs only: for a
        # few posts the thread costs more than it overlaps)
        ahead = encoder.modality == "image" and loader.num_workers == 0 and len(records) >= BULK_POSTS
        batches = prefetched(loader) if ahead else loader
        for batch in batches:
            good = [(i, item) for i, item, problem in batch if problem is None]
            problems += [problem for _, _, problem in batch if problem is not None]
            if good:
                pending.add([keys[i] for i, _ in good], forward(encoder.collate([item for _, item in good])))
            bar.update(len(batch))
    pending.flush()
    if problems:
        raise DataError(problems, "Fix or remove these images, or pass --on-error skip.")


def has_tokens(encoder: Encoder) -> bool:
    """Whether the encoder implements token / patch features."""
    return type(encoder).forward_tokens is not Encoder.forward_tokens


def token_dim(encoder: Encoder) -> int:
    return int(getattr(encoder, "token_dim", encoder.dim))
