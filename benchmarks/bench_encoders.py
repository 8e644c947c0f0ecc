"""Milliseconds per item of each frozen encoder: torch as 7b007e0 ran it, torch tuned, and ONNX Runtime, side by side.

Usage: python benchmarks/bench_encoders.py --data ../shared/mvsa [--encoders minilm,efficientnet_lite0]
       [--items 96] [--batch 4,16] [--repeats 3] [--threads N]

The first --items posts of train.txt are loaded once (images decoded, texts cleaned); only the forward
passes are timed, in rounds that alternate the three ways so that a shared machine's load falls on
each alike. "eager" is the encode loop of 7b007e0 (inference mode, torch's default threads, NCHW);
"tuned" is the torch fallback of runtime.backend (channels_last for conv nets, the runtime's threads);
"onnx" is the encoder's checked export in ONNX Runtime with the runtime's threads. Each row gives the
median ms per item over the rounds and the largest difference to eager over all items. resnet18 runs
from random weights (the ImageNet ones cannot be had offline here); its compute is the same.
Results: printed as a Markdown table and written to benchmarks/results/encoders.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mmsent.config import load_config
from mmsent.data.records import load_records
from mmsent.encoders import create_encoder
from mmsent.encoders.features import loader_workers
from mmsent.encoders.onnx_export import verified_onnx_forward
from mmsent.encoders.runtime import TorchForward, inference_threads, torch_threads

DEFAULT_THREADS = torch.get_num_threads()  # what 7b007e0's encoding ran with
OPTIONS = {"resnet18": {"pretrained": False}}


def load_items(name: str, data: Path, n: int) -> list:
    """The encoder's inputs for the first n posts of train.txt, as its item loader gives them."""
    cfg = load_config()
    records, _ = load_records(data, data / "train.txt", labelled=True, max_pixels=cfg.data.max_image_pixels)
    loader = create_encoder(name, **OPTIONS.get(name, {})).item_loader(cfg)
    return [loader(record) for record in records[:n]]


def eager_forward(encoder) -> Callable:
    """7b007e0's encode loop: inference mode, default threads, the layout the weights load in."""

    def run(batch):
        with torch.inference_mode():
            return encoder(batch).float().numpy()

    return run


def time_per_item(forward: Callable, batches: list, n_items: int, threads: int) -> tuple[float, np.ndarray]:
    """ms per item of one pass over the batches, and the features (N, dim)."""
    with torch_threads(threads):
        forward(batches[0])  # warm-up: first-call allocations are not the steady state
        t0 = time.perf_counter()
        outputs = [forward(batch) for batch in batches]
        seconds = time.perf_counter() - t0
    return 1000 * seconds / n_items, np.concatenate(outputs)


def bench_encoder(name: str, items: list, batch_size: int, repeats: int, threads: int, cache: Path) -> dict:
    """The three ways side by side for one encoder and batch size."""
    encoders = {way: create_encoder(name, **OPTIONS.get(name, {})).eval() for way in ("eager", "tuned", "onnx")}
    batches = [encoders["eager"].collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    t0 = time.perf_counter()
    onnx = verified_onnx_forward(encoders["onnx"], cache, threads)
    prepare_seconds = time.perf_counter() - t0
    ways = {
        "eager": (eager_forward(encoders["eager"]), DEFAULT_THREADS),
        "tuned": (TorchForward(encoders["tuned"]), threads),
        "onnx": (onnx, threads),
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    features: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for way, (forward, way_threads) in ways.items():
            ms, features[way] = time_per_item(forward, batches, len(items), way_threads)
            times[way].append(ms)
    ms = {way: round(statistics.median(values), 2) for way, values in times.items()}
    return {
        "encoder": name, "batch": batch_size, "items": len(items), "threads": {w: t for w, (_, t) in ways.items()},
        "ms_per_item": ms, "rounds": {way: [round(v, 2) for v in values] for way, values in times.items()},
        "speedup_vs_eager": {way: round(ms["eager"] / ms[way], 2) for way in ("tuned", "onnx")},
        "max_abs_diff_vs_eager": {way: float(np.abs(features[way] - features["eager"]).max()) for way in ("tuned", "onnx")},
        "export_and_check_seconds": round(prepare_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--encoders", default="minilm,efficientnet_lite0,efficientnet_lite2,resnet18")
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--batch", default="4,16", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads of tuned and onnx (default: the runtime's choice)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/encoders.json"))
    args = parser.parse_args()
    cfg = load_config()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmsent-bench-onnx-") as cache:
        for name in args.encoders.split(","):
            items = load_items(name, args.data, args.items)
            threads = args.threads or inference_threads(cfg, loader_workers(create_encoder(name, **OPTIONS.get(name, {})), cfg))
            for batch_size in (int(b) for b in args.batch.split(",")):
                rows.append(bench_encoder(name, items, batch_size, args.repeats, threads, Path(cache)))
                print(json.dumps(rows[-1]), file=sys.stderr)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "command": "python benchmarks/bench_encoders.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("| encoder | batch | eager ms/item | tuned ms/item | onnx ms/item | onnx speed-up | max abs diff (tuned / onnx) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ms, diff = r["ms_per_item"], r["max_abs_diff_vs_eager"]
        print(f"| {r['encoder']} | {r['batch']} | {ms['eager']} | {ms['tuned']} | {ms['onnx']} | "
              f"{r['speedup_vs_eager']['onnx']}x | {diff['tuned']:.1e} / {diff['onnx']:.1e} |")


if __name__ == "__main__":
    main()
