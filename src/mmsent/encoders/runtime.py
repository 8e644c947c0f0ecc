"""How a frozen encoder runs at inference: its checked ONNX export in ONNX Runtime, or torch tuned for a CPU."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mmsent.config import Config
from mmsent.encoders.base import Encoder
from mmsent.errors import MmsentError

_NOTED: set[str] = set()  # notes already printed by this process
# from this many posts on, encoding is a bulk job: throughput first (two encoders at once each get half the
# cores, images are decoded a batch ahead in a thread); below it (a service's batch), latency first
BULK_POSTS = 64


class Forward(Protocol):
    """A frozen encoder's inference: a collated batch in, features (B, dim) float32 out."""

    backend: str

    def __call__(self, batch: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class BundledExport:
    """A verified export that a run folder carries for one of its encoders (set as `encoder.bundled_export`)."""

    key: str  # onnx_export.export_key of the encoder it was exported from
    path: Path


class TorchForward:
    """The encoder in torch: inference mode, and convolutional networks in the channels_last layout.

    channels_last changes the weights' memory layout in place, not their values (a fine-tuned run saves
    them contiguous); on 2 cores it took EfficientNet-Lite0 from 178 to 120 ms per image.
    """

    backend = "torch"

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        encoder.ensure_network()
        if encoder.convolutional:
            encoder.to(memory_format=torch.channels_last)

    def _layout(self, batch: Any) -> Any:
        if self.encoder.convolutional and isinstance(batch, torch.Tensor) and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W), stored as (B, H, W, 3)
        return batch

    def __call__(self, batch: Any) -> np.ndarray:
        with torch.inference_mode():
            return self.encoder(self._layout(batch)).float().cpu().numpy()  # (B, dim)

    def tokens(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """Token features (B, T, D_tok) float32 and their mask (B, T) bool."""
        with torch.inference_mode():
            tokens, mask = self.encoder.forward_tokens(self._layout(batch))
            return tokens.float().cpu().numpy(), mask.bool().cpu().numpy()


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_processes(cfg: Config) -> int:
    """runtime.num_workers, else one image loader process per 4 cores (none below 4).

    Decoding and resizing is about a quarter of an image's encoding work (4 of 17 core-ms for
    EfficientNet-Lite0), so a process of its own on a smaller machine holds back a core that the network
    needs: on 2 cores Lite0 encoded 1,000 images in 10.2 s without one and 13.2 s with one (ONNX Runtime),
    24.0 and 33.5 s in torch.
    """
    workers = cfg.runtime.num_workers
    return available_cores() // 4 if workers is None else workers


def inference_threads(cfg: Config, workers: int) -> int:
    """runtime.threads, else the cores that the image loader's worker processes leave free (at least one).

    More threads than free cores make every step of a network wait for a thread that is not running: on a
    2-core machine shared with one other busy process, MiniLM took 157 ms per text with 2 threads, 20 with 1.
    """
    return cfg.runtime.threads or max(1, available_cores() - workers)


_THREADS_LOCK = threading.Lock()
_threads_depth = 0  # blocks of torch_threads open now, in any thread
_threads_first = 0  # torch's setting when the first of them opened


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block, then as they were.

    The setting is global: when blocks overlap in two threads (image and text encoders encoding at once),
    the last block to close puts back what the first one found; a block nested in another gives back the
    outer block's setting.
    """
    global _threads_depth, _threads_first
    with _THREADS_LOCK:
        if _threads_depth == 0:
            _threads_first = torch.get_num_threads()
        _threads_depth += 1
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_depth -= 1
            torch.set_num_threads(_threads_first if _threads_depth == 0 else before)


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_possible(cfg: Config) -> bool:
    """Whether frozen encoders may run in ONNX Runtime under cfg: a backend other than torch, and ONNX Runtime
    installed (choose_forward decides per encoder)."""
    return cfg.runtime.backend != "torch" and onnxruntime_installed()


def frozen_forward(encoder: Encoder, cfg: Config, threads: int) -> Forward:
    """The forward that runs the encoder's frozen inference under runtime.backend; chosen once per encoder.

    The choice (and any export and check) is kept on the encoder for its fingerprint, backend and threads,
    so it lives as long as the encoder and a fine-tuned encoder (another fingerprint) is exported anew.
    """
    chosen: dict[tuple, Forward] = encoder.__dict__.setdefault("_frozen_forwards", {})
    key = (cfg.runtime.backend, encoder.cache_fingerprint(), threads)
    if key not in chosen:
        chosen[key] = choose_forward(encoder, cfg, threads)
    return chosen[key]


def chosen_onnx_path(encoder: Encoder, cfg: Config) -> Path | None:
    """The export file of an ONNX forward that frozen_forward chose for the encoder under cfg's backend, with
    any thread count (so already checked in this process); None if it chose none."""
    for (backend, fingerprint, _threads), forward in encoder.__dict__.get("_frozen_forwards", {}).items():
        if backend == cfg.runtime.backend and fingerprint == encoder.cache_fingerprint() and forward.backend == "onnx":
            return forward.path
    return None


def choose_forward(encoder: Encoder, cfg: Config, threads: int) -> Forward:
    """ONNX Runtime where the backend allows it and the export verifies; torch otherwise (with a note)."""
    backend = cfg.runtime.backend
    if backend == "torch" or not encoder.exportable:
        return TorchForward(encoder)
    if not onnxruntime_installed():
        if backend == "onnx":
            raise MmsentError("runtime.backend=onnx needs ONNX Runtime: pip install onnxruntime onnx "
                              "(or set runtime.backend=auto or torch)")
        return TorchForward(encoder)
    from mmsent.encoders.onnx_export import ExportFailed, bundled_forward, export_key, verified_onnx_forward

    bundled: BundledExport | None = encoder.__dict__.get("bundled_export")
    if bundled is not None and bundled.key == export_key(encoder):
        try:
            return bundled_forward(encoder, bundled.path, threads)
        except ExportFailed as exc:
            note_once(f"encoder {encoder.name!r}: {exc}; it is exported anew")
    try:
        return verified_onnx_forward(encoder, cfg.cache_path(), threads)
    except ExportFailed as exc:
        note_once(f"encoder {encoder.name!r}: {exc}; it runs in torch")
        return TorchForward(encoder)


def note_once(message: str) -> None:
    """Print a note on stderr, once per process."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"mmsent: note: {message}", file=sys.stderr, flush=True)
