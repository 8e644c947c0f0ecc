"""An encoder's frozen forward exported to ONNX once, under the cache folder, checked against torch, run by ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsent.encoders.base import IMAGES, Encoder
from mmsent.encoders.cache import entry_name
from mmsent.errors import MmsentError

OPSET = 17
OUTPUT = "features"
# besides the encoder's fingerprint (name, weights, preprocessing), what decides the exported graph
EXPORT_RECIPE = f"onnx-export=1|opset={OPSET}|torch={torch.__version__}"
# the largest difference to torch on the probe batch that an export may show and still be used
MAX_ABS_DIFF = 1e-4


class ExportFailed(Exception):
    """The encoder could not be exported, or its export does not compute what torch does."""


class NamedForward(torch.nn.Module):
    """The encoder's forward over positional tensors in a fixed order, the form torch.onnx traces."""

    def __init__(self, encoder: Encoder, names: list[str]):
        super().__init__()
        self.encoder = encoder
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.names, tensors, strict=True))
        return self.encoder(named[IMAGES] if self.names == [IMAGES] else named)  # (B, dim)


def export_key(encoder: Encoder) -> str:
    """What an export of this encoder is an export of: its features' fingerprint and the export recipe."""
    return f"{encoder.cache_fingerprint()}|{EXPORT_RECIPE}"


def export_path(encoder: Encoder, cache_root: Path) -> Path:
    """Where the export of this encoder lives: keyed like its features (name, weights, preprocessing)."""
    return Path(cache_root) / "onnx" / f"{entry_name(export_key(encoder))}.onnx"


def dynamic_axes(named: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """The batch axis of every input varies, and so does the token axis of (B, T) token ids and masks."""
    return {name: {0: "batch", 1: "tokens"} if t.dim() == 2 else {0: "batch"} for name, t in named.items()}


def export(encoder: Encoder, path: Path) -> None:
    """Export the encoder's forward to path atomically: a private temp file in the same folder, then a rename.

    Two processes exporting at once each write their own temp file; the last rename wins and both
    files are whole, so a reader never sees a partial export.
    """
    named = encoder.named_inputs(encoder.collate(encoder.probe_items()[:2]))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        trace_to_onnx(NamedForward(encoder, list(named)).eval(), named, tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would follow the file into run folders (hard links) that others read
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# torch.onnx keeps its state in module globals: two exports at once (image and text encoders encoding in two
# threads) break each other, so a process exports one encoder at a time
_EXPORT_LOCK = threading.Lock()


def trace_to_onnx(module: torch.nn.Module, named: dict[str, torch.Tensor], target: str) -> None:
    """torch.onnx's TorchScript exporter: it exports every encoder here in 0.3 to 3 s, where the torch.export one
    took 5 to 25 s (and needs onnxscript). A torch without it fails here, and the encoder runs in torch."""
    with _EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings are not the user's concern
        torch.onnx.export(
            module, tuple(named.values()), target, input_names=list(named), output_names=[OUTPUT],
            dynamic_axes=dynamic_axes(named), opset_version=OPSET, dynamo=False,
        )


def execution_providers() -> list[str]:
    """CUDA where this onnxruntime has it, then the CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def open_session(path: Path, threads: int):
    """An ONNX Runtime session of the export with `threads` threads that sleep, not spin, between runs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # spinning threads take the cores from the image decoding workers and from other processes: on a shared
    # 2-core machine they made EfficientNet-Lite0 twice as slow (26 vs 13 ms per image)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=execution_providers())


class OnnxForward:
    """Runs the encoder's exported forward: a collated batch in, features (B, dim) float32 out.

    `release()` closes the session (its copy of the weights, its arena); the next call opens the same
    checked file again, without checking it against torch a second time.
    """

    backend = "onnx"

    def __init__(self, encoder: Encoder, session: Any, path: Path, threads: int):
        self.encoder = encoder
        self.session: Any = session
        self.path = path
        self.threads = threads
        # the exporter drops inputs the graph does not read, so feed only those it declares
        self.inputs = [i.name for i in session.get_inputs()]

    def release(self) -> None:
        self.session = None

    def __call__(self, batch: Any) -> np.ndarray:
        if self.session is None:
            self.session = self._reopen()
        named = self.encoder.named_inputs(batch)
        feeds = {name: named[name].numpy() for name in self.inputs}
        return self.session.run([OUTPUT], feeds)[0]  # (B, dim)

    def _reopen(self) -> Any:
        try:
            return open_session(self.path, self.threads)
        except Exception as exc:  # the file went away (a cache cleared meanwhile) or onnxruntime refuses it
            raise MmsentError(f"encoder {self.encoder.name!r}: its checked ONNX export {self.path} cannot be opened "
                              f"again ({type(exc).__name__}: {first_line(exc)}); run the command again") from exc


def probe_difference(encoder: Encoder, forward: OnnxForward) -> float:
    """Max abs difference between the export and torch on the encoder's probe batch (inf if shapes differ)."""
    batch = encoder.collate(encoder.probe_items())  # one more item, and other lengths, than the export saw
    with torch.inference_mode():
        expected = encoder(batch).float().cpu().numpy()  # (B, dim)
    got = forward(batch)
    return float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")


def checked_forward(encoder: Encoder, path: Path, threads: int) -> OnnxForward:
    """A session of the export at path, if it matches torch on the probe batch; else ExportFailed."""
    try:
        forward = OnnxForward(encoder, open_session(path, threads), path, threads)
        difference = probe_difference(encoder, forward)
    except Exception as exc:  # onnxruntime raises its own types for a graph it cannot load or run
        raise ExportFailed(f"ONNX Runtime cannot run its export ({type(exc).__name__}: {first_line(exc)})") from exc
    if not difference <= MAX_ABS_DIFF:
        raise ExportFailed(f"its ONNX export differs from torch by {difference:.1e} on the probe batch "
                           f"(more than {MAX_ABS_DIFF:.0e})")
    return forward


def bundled_forward(encoder: Encoder, path: Path, threads: int) -> OnnxForward:
    """A session of the export that a run folder carries: checked against torch when the run was written, and
    its bytes against the run's record when the run was loaded, so torch is not needed (nor built) here."""
    try:
        return OnnxForward(encoder, open_session(path, threads), path, threads)
    except Exception as exc:  # onnxruntime raises its own types for a graph it cannot load
        raise ExportFailed(f"ONNX Runtime cannot run the run's export ({type(exc).__name__}: {first_line(exc)})") from exc


def verified_onnx_forward(encoder: Encoder, cache_root: Path, threads: int) -> OnnxForward:
    """The encoder's export (made now if the cache lacks it), checked against torch; ExportFailed otherwise."""
    path = export_path(encoder, cache_root)
    if path.is_file():
        with contextlib.suppress(ExportFailed):  # a damaged or stale file is exported anew below
            return checked_forward(encoder, path, threads)
    try:
        export(encoder, path)
    except Exception as exc:  # exporters raise many types for a graph they cannot trace
        raise ExportFailed(f"the ONNX export failed ({type(exc).__name__}: {first_line(exc)})") from exc
    return checked_forward(encoder, path, threads)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no message"
