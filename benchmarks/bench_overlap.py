"""Where a prediction's time goes on a small machine: loading a run, and encoding with the image and text encoders
at once, each with half the cores' threads (the default) or with all of them.

Usage: python benchmarks/bench_overlap.py --run RUN --data ../shared/mvsa [--posts 1000] [--rounds 2] [--out FILE]

Each measurement runs in a child process of its own with an empty feature cache: `load` is load_run (its
seconds and the resident memory after it); `half` and `all` predict the first --posts posts of train.txt
with runtime.threads unset (each of the two overlapped encoders gets half the cores) or set to every core
(each gets all of them). Wall seconds and the process's CPU seconds of the prediction alone. The machine is
shared, so the variants alternate within each round; compare them within one run. Results: a Markdown table
on stdout and benchmarks/results/overlap.json (or --out). The code measured is the mmsent that Python
imports: PYTHONPATH=OTHER/src measures other code (`all` then means what that code does by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "overlap.json"


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


def child_main(args: argparse.Namespace) -> None:
    """In the child: one measurement, printed as JSON."""
    from bench_run import first_guids  # beside this script: python puts its folder first on the path

    from mmsent import api
    from mmsent.data.records import load_records

    t0 = time.perf_counter()
    run = api.load_run(args.run)
    out = {"load_seconds": round(time.perf_counter() - t0, 2), "rss_after_load_mb": rss_mb()}
    if args.variant != "load":
        guids = first_guids(args.data, args.posts, Path(tempfile.mkdtemp()) / "guids.txt")
        records, _ = load_records(args.data, guids, False, run.cfg.data.max_image_pixels)
        threads = os.cpu_count() if args.variant == "all" else None
        run.cfg = run.cfg.with_values({"runtime.threads": threads, "runtime.cache_dir": tempfile.mkdtemp()})
        wall, cpu = time.perf_counter(), time.process_time()
        run.predict_proba(records, quiet=True)
        out.update(posts=len(records), wall_seconds=round(time.perf_counter() - wall, 2),
                   cpu_seconds=round(time.process_time() - cpu, 2))
    print(json.dumps(out))


def measure(args: argparse.Namespace, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--run", str(args.run), "--data", str(args.data),
           "--posts", str(args.posts)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["load", "half", "all"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.child
        child_main(args)
        return
    results: dict[str, list[dict]] = {"load": [], "half": [], "all": []}
    for rnd in range(args.rounds):
        for variant in results:
            results[variant].append(measure(args, variant))
            print(f"[round {rnd + 1}] {variant}: {json.dumps(results[variant][-1])}", file=sys.stderr, flush=True)
    load = results["load"]
    print(f"load_run: {statistics.median(r['load_seconds'] for r in load):.2f} s (median), "
          f"{max(r['rss_after_load_mb'] for r in load)} MB resident after it\n")
    print("| threads per overlapped encoder | posts | wall seconds per round | CPU seconds per round |")
    print("|---|---|---|---|")
    for variant, label in (("half", "half the cores (default)"), ("all", "all the cores")):
        rows = results[variant]
        print(f"| {label} | {rows[0]['posts']} | {' / '.join(str(r['wall_seconds']) for r in rows)} | "
              f"{' / '.join(str(r['cpu_seconds']) for r in rows)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "posts": args.posts, "cores": os.cpu_count(),
                                   "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
