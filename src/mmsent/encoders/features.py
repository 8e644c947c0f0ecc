"""Turning records into feature matrices with a frozen encoder, through the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmsent import distributed
from mmsent.config import Config
from mmsent.data.images import ImageReadError
from mmsent.data.records import Record
from mmsent.encoders.base import Encoder
from mmsent.encoders.cache import FeatureCache
from mmsent.encoders.runtime import Forward, frozen_forward, inference_threads, loader_processes, torch_threads
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


def prepare_inference(encoder: Encoder, cfg: Config) -> Forward:
    """Choose (export and check, where the backend says so) the forward that encodes with this config, now."""
    encoder.eval()
    return frozen_forward(encoder, cfg, inference_threads(cfg, loader_workers(encoder, cfg)))


@dataclass
class EncodeStats:
    encoder: str
    items: int
    cached: int
    computed: int


def encode_records(
    encoder: Encoder,
    records: list[Record],
    cfg: Config,
    cache_root: Path | None,
    quiet: bool = False,
) -> tuple[np.ndarray, EncodeStats]:
    """Features (N, encoder.dim) for records, computing only what the cache lacks.

    Under a launcher every process encodes its share of what is missing into the cache folder, and
    reads the other shares from there once all are done: each item is encoded and written once.
    """
    cache = FeatureCache.open(cache_root, encoder.cache_fingerprint())
    keys = [encoder.item_key(r, cfg) for r in records]
    todo = _missing(cache, keys, records)
    computed = 0
    if distributed.launched() and cache.dir is not None:
        distributed.wait_for_everyone()  # all have listed what is missing before any adds to the folder: the same list
        share = dict(distributed.my_share(list(todo.items())))
        if share:
            _compute_into(encoder, share, cfg, cache, quiet)
        computed = len(share)
        distributed.wait_for_everyone()  # every share is in the cache folder now
        cache.refresh()
        # left: what the other processes wrote where this one cannot see it (each machine its own cache folder)
        todo = _missing(cache, keys, records)
    if todo:
        _compute_into(encoder, todo, cfg, cache, quiet)
        computed += len(todo)
    out = np.stack([cache.get(k) for k in keys]) if keys else np.zeros((0, encoder.dim), np.float32)
    return out.astype(np.float32), EncodeStats(encoder.name, len(records), len(records) - computed, computed)


def _missing(cache: FeatureCache, keys: list[str], records: list[Record]) -> dict[str, Record]:
    """{key: record} of the items the cache lacks, each key once, in record order."""
    todo: dict[str, Record] = {}
    for key, record in zip(keys, records, strict=True):
        if cache.get(key) is None and key not in todo:
            todo[key] = record
    return todo


def _compute_into(encoder: Encoder, todo: dict[str, Record], cfg: Config, cache: FeatureCache, quiet: bool) -> None:
    keys = list(todo)
    if encoder.modality == "text":  # texts of alike lengths in one batch pad little (the cache is keyed, not ordered)
        keys.sort(key=lambda k: len(todo[k].text))
    records = [todo[k] for k in keys]
    loader = eval_items(encoder, records, cfg)
    problems: list[Problem] = []
    done_keys: list[str] = []
    done_vecs: list[np.ndarray] = []
    bar = tqdm(total=len(records), desc=f"encode {encoder.name}", disable=quiet, unit="item")
    with torch_threads(inference_threads(cfg, loader.num_workers)), bar:
        forward = prepare_inference(encoder, cfg)
        for batch in loader:
            good = [(i, item) for i, item, problem in batch if problem is None]
            problems += [problem for _, _, problem in batch if problem is not None]
            if good:
                done_keys += [keys[i] for i, _ in good]
                done_vecs.append(forward(encoder.collate([item for _, item in good])))  # (B, dim) float32
            bar.update(len(batch))
            if len(done_keys) >= 1024:  # persist progress so an interrupted encoding resumes
                cache.put_many(done_keys, np.concatenate(done_vecs))
                done_keys, done_vecs = [], []
    if done_keys:
        cache.put_many(done_keys, np.concatenate(done_vecs))
    if problems:
        raise DataError(problems, "Fix or remove these images, or pass --on-error skip.")


def has_tokens(encoder: Encoder) -> bool:
    """Whether the encoder implements token / patch features."""
    return type(encoder).forward_tokens is not Encoder.forward_tokens


def token_dim(encoder: Encoder) -> int:
    return int(getattr(encoder, "token_dim", encoder.dim))


def encode_tokens(encoder: Encoder, records: list[Record], cfg: Config, quiet: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token features (N, T, D_tok) zero-padded to the longest, and masks (N, T); kept in memory, not cached."""
    loader = eval_items(encoder, records, cfg)
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    problems: list[Problem] = []
    encoder.eval()
    with torch.inference_mode(), tqdm(total=len(records), desc=f"tokens {encoder.name}", disable=quiet, unit="item") as bar:
        for batch in loader:
            problems += [p for _, _, p in batch if p is not None]
            items = [item for _, item, p in batch if p is None]
            if items:
                tokens, mask = encoder.forward_tokens(encoder.collate(items))  # (B, T, D), (B, T)
                chunks.append((tokens.float().cpu().numpy(), mask.bool().cpu().numpy()))
            bar.update(len(batch))
    if problems:
        raise DataError(problems, "Fix or remove these images, or pass --on-error skip.")
    longest = max((t.shape[1] for t, _ in chunks), default=1)
    tokens = np.zeros((len(records), longest, token_dim(encoder)), dtype=np.float32)
    masks = np.zeros((len(records), longest), dtype=bool)
    row = 0
    for t, m in chunks:
        tokens[row : row + len(t), : t.shape[1]] = t
        masks[row : row + len(t), : m.shape[1]] = m
        row += len(t)
    return tokens, masks
