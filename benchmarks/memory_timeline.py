"""Where a cold `mmsent run` holds its memory: resident memory sampled every 50 ms, by phase.

Usage: python benchmarks/memory_timeline.py --data ../shared/mvsa [--src SRC] [--set key=value ...]

Runs `mmsent run` (the code at --src, default this checkout) in a child process with a fresh, empty cache,
reads its progress bars to tell the phases apart (start-up and exports, encoding, head training, writing
and predicting the test list) and prints the peak resident memory of each, and of the whole run, as a
Markdown table. Results: benchmarks/results/memory_timeline.json. The machine is shared: resident memory
barely depends on its load, times do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PHASES = ("start-up and exports", "encoding", "head training", "writing the run and predicting the test list")


def resident_mb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def phase_bounds(events: list[tuple[float, str]]) -> list[float]:
    """When each phase after the first begins: the first encoding bar, the first and the last head-training bar."""
    encode = [t for t, line in events if line.startswith("encode ")]
    train = [t for t, line in events if line.startswith("train")]
    if not encode or not train:
        raise SystemExit("no encoding or training progress seen: is the cache really empty?")
    return [encode[0], train[0], train[-1]]


def timeline(data: Path, src: Path, overrides: list[str]) -> dict:
    """Run a cold `mmsent run` and sample its resident memory; the peak of each phase and of the whole run."""
    work = Path(tempfile.mkdtemp(prefix="mmsent-memory-"))
    args = [sys.executable, "-m", "mmsent.cli", "run", "--data", str(data), "--out", str(work / "run")]
    for item in overrides:
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(src), "MMSENT_CACHE": str(work / "cache")}
    samples: list[tuple[float, int]] = []  # (seconds, MB)
    events: list[tuple[float, str]] = []  # (seconds, progress line)
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def sample() -> None:
            while proc.poll() is None:
                mb = resident_mb(proc.pid)
                if mb is not None:
                    samples.append((time.perf_counter() - start, mb))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for raw in proc.stderr:  # tqdm redraws with carriage returns: each part is a state of a bar
            for line in re.split(r"[\r\n]", raw):
                if line.strip():
                    events.append((time.perf_counter() - start, line.strip()))
        code = proc.wait()
        sampler.join()
        if code != 0:
            raise SystemExit(f"mmsent run exited with {code}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bounds = phase_bounds(events)
    peaks = []
    for index, name in enumerate(PHASES):
        low = bounds[index - 1] if index else 0.0
        high = bounds[index] if index < len(bounds) else float("inf")
        inside = [(t, mb) for t, mb in samples if low <= t < high]
        if inside:
            t, mb = max(inside, key=lambda s: s[1])
            peaks.append({"phase": name, "from_s": round(inside[0][0], 1), "to_s": round(inside[-1][0], 1),
                          "peak_mb": mb, "peak_at_s": round(t, 1)})
    t, mb = max(samples, key=lambda s: s[1])
    return {"wall_seconds": round(time.perf_counter() - start, 1), "peak_mb": mb, "peak_at_s": round(t, 1),
            "phases": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--src", type=Path, default=SRC, help="src folder of the code to measure (default: this one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_timeline.json"))
    args = parser.parse_args()
    result = {"command": "python benchmarks/memory_timeline.py " + " ".join(sys.argv[1:]),
              "load_average_before": round(os.getloadavg()[0], 1),
              **timeline(args.data.resolve(), args.src.resolve(), args.overrides)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| phase | seconds | peak resident memory (MB) |")
    print("|---|---|---|")
    for p in result["phases"]:
        print(f"| {p['phase']} | {p['from_s']}-{p['to_s']} | {p['peak_mb']} |")
    print(f"| whole run | {result['wall_seconds']} | {result['peak_mb']} (at {result['peak_at_s']} s) |")


if __name__ == "__main__":
    main()
