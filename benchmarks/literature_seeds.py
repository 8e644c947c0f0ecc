"""The literature's protocol over several split seeds: `mmsent split`, train on the lists, evaluate the test part.

Usage: python benchmarks/literature_seeds.py --data ../shared/mvsa [--seeds 0 1 2] [--set key=value ...]
Each seed splits the labelled posts 8:1:1 (stratified, duplicates on one side), trains the default model on
train.txt with val.txt as its validation list, and evaluates test.txt with --metrics literature, each step a
child process with the feature cache in MMSENT_CACHE. Writes benchmarks/results/literature_seeds.json (per
seed and mean / standard deviation of accuracy, weighted F1 and macro-F1) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCORES = ("accuracy", "weighted_f1", "macro_f1")


def mmsent(*args: str) -> str:
    """Run one mmsent command in a child process; its stdout."""
    cmd = [sys.executable, "-m", "mmsent.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def one_seed(data: Path, seed: int, work: Path, overrides: list[str]) -> dict:
    """Split with seed, train on the lists, evaluate the test list; the literature's scores and the test size."""
    split, run = work / f"split-{seed}", work / f"run-{seed}"
    mmsent("split", "--data", str(data), "--out", str(split), "--seed", str(seed))
    sets = [a for item in overrides for a in ("--set", item)]
    mmsent("train", "--data", str(data), "--out", str(run), "--train-list", str(split / "train.txt"),
           "--val-list", str(split / "val.txt"), "--quiet", *sets)
    metrics = json.loads(mmsent("evaluate", "--run", str(run), "--data", str(data), "--labels",
                                str(split / "test.txt"), "--metrics", "literature", "--quiet"))
    return {"seed": seed, "n_test": metrics["n"], **{s: round(metrics[s], 4) for s in SCORES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/literature_seeds.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmsent-lit-") as tmp:
        rows = [one_seed(args.data, seed, Path(tmp), args.overrides) for seed in args.seeds]
    summary = {s: {"mean": round(statistics.mean(r[s] for r in rows), 4),
                   "sd": round(statistics.stdev(r[s] for r in rows), 4) if len(rows) > 1 else 0.0} for s in SCORES}
    results = {"command": "python benchmarks/literature_seeds.py " + " ".join(sys.argv[1:]),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
               "overrides": args.overrides, "seeds": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| split seed | test posts | accuracy | weighted F1 | macro-F1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['n_test']} | {r['accuracy']:.4f} | {r['weighted_f1']:.4f} | {r['macro_f1']:.4f} |")
    cells = " | ".join(f"{summary[s]['mean']:.4f} ± {summary[s]['sd']:.4f}" for s in SCORES)
    print(f"| mean ± sd | | {cells} |")


if __name__ == "__main__":
    main()
