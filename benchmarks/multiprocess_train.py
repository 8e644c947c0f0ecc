"""Fine-tuning in one process and in N CPU processes (`accelerate launch`, gloo): the work each process did.

Usage: python benchmarks/multiprocess_train.py [--processes 2] [--epochs 3] [--batch-size 8]
       [--json benchmarks/results/multiprocess_train.json]

Trains the tests' tiny fine-tune (a random BERT with VADER cached, on the synthetic data set of the
tests, each run with a cold feature cache) once as a plain command and once under `accelerate launch
--num_processes N`, and reads each run's metrics.json: training batches and optimiser steps of each
process, items each process encoded, wall time, and the validation scores. The target: no process of
the launch takes more optimiser steps than half of the single process's, plus one. Prints a Markdown
table; writes JSON.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic data set, the tiny model and the launcher of the tests

from conftest import make_bert_tokenizer, make_dataset  # noqa: E402
from launching import child_env, launch, tiny_finetune_args  # noqa: E402


def run_once(args: list[str], cache: Path, processes: int) -> tuple[float, str]:
    """(wall seconds, output) of one training, launched as N processes or run as a plain command."""
    t0 = time.perf_counter()
    if processes > 1:
        done = launch(args, child_env(cache), processes)
    else:
        done = subprocess.run([sys.executable, "-m", "mmsent.cli", *args], env=child_env(cache), capture_output=True,
                              text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"training in {processes} process(es) failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - t0, done.stdout


def summary_of(run: Path, seconds: float, processes: int) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    work = metrics["work_per_process"]
    return {"processes": processes, "wall_s": round(seconds, 1), "train_s": metrics["train_seconds"],
            "n_train": metrics["n_train"], "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
            "train_batches": [w["train_batches"] for w in work], "optimizer_steps": [w["optimizer_steps"] for w in work],
            "encoded": [w["encoded"] for w in work], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "multiprocess_train.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmsent-multiprocess-"))
    try:
        data, tokenizer = make_dataset(work / "data"), make_bert_tokenizer(work / "tokenizer")
        rows = []
        for processes in (1, args.processes):
            run = work / f"run-{processes}"
            train_args = tiny_finetune_args(data, run, tokenizer, args.epochs, args.batch_size)
            seconds, _ = run_once(train_args, work / f"cache-{processes}", processes)
            rows.append(summary_of(run, seconds, processes))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    single, shared = rows
    bound = single["optimizer_steps"][0] / args.processes + 1
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python benchmarks/multiprocess_train.py " + " ".join(sys.argv[1:]),
        "runs": rows, "steps_bound_per_process": bound,
        "target_met": all(steps <= bound for steps in shared["optimizer_steps"]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print("| processes | wall (s) | training (s) | batches per process | optimiser steps per process | "
          "items encoded per process | best epoch | accuracy | macro-F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['wall_s']} | {r['train_s']} | {r['train_batches']} | {r['optimizer_steps']} | "
              f"{r['encoded']} | {r['best_epoch']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    print(f"steps per process <= {bound:g} (half the single process's + 1): {result['target_met']}")
    print(f"json: {args.json}")
    if not result["target_met"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
