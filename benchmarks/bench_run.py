"""Benchmark of `mmsent run` on the real data: validation accuracy / macro-F1, wall time and peak memory.

Usage: python benchmarks/bench_run.py --data ../shared/mvsa [--cold] [--warm] [--set key=value ...]
--cold uses a fresh, empty feature cache (every encoder runs); --warm runs again on that cache.
Results are printed as a Markdown table and written to benchmarks/results/run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(data: Path, out: Path, cache: Path, overrides: list[str]) -> dict:
    """One `mmsent run` in a child process; peak RSS from the child's rusage."""
    cmd = [sys.executable, "-m", "mmsent.cli", "run", "--data", str(data), "--out", str(out), "--quiet"]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ, MMSENT_CACHE=str(cache))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"mmsent run failed with exit code {proc.returncode}")
    peak_kb = usage.ru_maxrss
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_kb / 1024),
        "val_accuracy": round(metrics["accuracy"], 4),
        "val_macro_f1": round(metrics["macro_f1"], 4),
        "encode_seconds": metrics["encode_seconds"],
        "train_seconds": metrics["train_seconds"],
        "n_val": metrics["n"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--cache", type=Path, help="feature cache to use (default: a fresh temp folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/run.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmsent-bench-"))
    cache = args.cache or work / "cache"
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads default",
        "command": "python benchmarks/bench_run.py " + " ".join(sys.argv[1:]),
        "overrides": args.overrides,
    }
    try:
        results["cold" if args.cache is None else "given_cache"] = run_once(args.data, work / "run1", cache, args.overrides)
        results["warm"] = run_once(args.data, work / "run2", cache, args.overrides)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("| cache | wall (s) | encode (s) | train (s) | peak RSS (MB) | val accuracy | val macro-F1 |")
    print("|---|---|---|---|---|---|---|")
    for key in ("cold", "given_cache", "warm"):
        if key in results:
            r = results[key]
            print(f"| {key} | {r['wall_seconds']} | {r['encode_seconds']} | {r['train_seconds']} | "
                  f"{r['peak_rss_mb']} | {r['val_accuracy']} | {r['val_macro_f1']} |")


if __name__ == "__main__":
    main()
