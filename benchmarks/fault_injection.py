"""Fault injection on run folders: kill -9 at random moments and two writers racing for one folder.

Usage: python benchmarks/fault_injection.py --data ../shared/mvsa [--kills 20] [--races 10] [--seed 0]

Each kill stops a child `mmsent train` (into a new folder), `mmsent train --overwrite` (over a good
run) or `mmsent predict` (over a good prediction file) with SIGKILL at a random moment of its run.
Afterwards every reader must see either nothing (a new folder), the old good run / file, or a
complete new one: never a half-written or mixed run. Each race starts two trainings with different
seeds into one folder at once: one must win, the other be refused, and the folder must be exactly
the winner's. The feature cache is warmed first, so that the kills land in training and writing.
Results: a Markdown table on stdout and benchmarks/results/fault_injection.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmsent.api import load_run
from mmsent.errors import MmsentError
from mmsent.run_folder import RunFolder


def mmsent(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmsent.cli", *args]


def run_to_end(cmd: list[str], env: dict) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return proc.returncode, time.perf_counter() - t0, proc.stderr.strip()


def kill_after(cmd: list[str], env: dict, delay: float) -> int | None:
    """Start cmd, SIGKILL it after delay seconds (unless it ended); its exit code, or None if it was killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def run_state(folder: Path) -> str:
    """What a reader finds at folder: 'absent', 'refused: ...' or the complete run's id."""
    if not folder.exists():
        return "absent"
    try:
        run = RunFolder.open(folder)
        load_run(folder)  # every file the model needs, verified against the marker
        return run.run_id
    except MmsentError as exc:
        return f"refused: {str(exc).splitlines()[0][:120]}"


def prediction_state(path: Path, n_expected: int) -> str:
    if not path.exists():
        return "absent"
    lines = path.read_text(encoding="utf-8").splitlines()
    ok = lines[:1] == ["guid,tag"] and len(lines) == n_expected + 1 and all(line.count(",") == 1 for line in lines[1:])
    return f"complete:{hash(tuple(lines))}" if ok else f"broken ({len(lines)} lines)"


def kill_trial(kind: str, i: int, work: Path, base: list[str], predict_args: list[str], durations: dict, env: dict,
               rng: random.Random, good_run: Path, n_test: int) -> dict:
    """One kill; what readers find afterwards: nothing or a complete run/file, never a half-written one."""
    delay = rng.uniform(0.0, durations[kind])
    lost = False
    if kind == "train-new":
        target = work / f"new-{i}"
        exit_code = kill_after(mmsent("train", *base, "--out", str(target)), env, delay)
        after = run_state(target)
        half = after.startswith("refused")  # a folder left at the target that no reader may use
    elif kind == "retrain-overwrite":
        exit_code = kill_after(mmsent("train", *base, "--out", str(good_run), "--overwrite",
                                      "--set", f"train.seed={1000 + i}"), env, delay)
        after = run_state(good_run)
        half = after.startswith("refused")
        lost = half or after == "absent"  # the old run must stay until the new one is complete
    else:
        out = work / "predictions.txt"
        exit_code = kill_after(mmsent("predict", *predict_args, "--out", str(out)), env, delay)
        after = prediction_state(out, n_test)
        half = after.startswith("broken")
        lost = not after.startswith("complete")
    leftovers = sorted(p.name for p in work.iterdir() if ".partial-" in p.name or p.name.endswith(".tmp"))
    return {"trial": i, "kind": kind, "kill_after_s": round(delay, 2), "exit": "killed" if exit_code is None else exit_code,
            "after": after if len(after) < 60 else after[:57] + "...", "half_written_at_target": half,
            "good_lost": lost, "stale_private_files": len(leftovers)}


def race_trial(i: int, work: Path, base: list[str], env: dict) -> dict:
    target = work / f"race-{i}"
    seeds = (2000 + 2 * i, 2001 + 2 * i)
    procs = [subprocess.Popen(mmsent("train", *base, "--out", str(target), "--overwrite", "--set", f"train.seed={s}"),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for s in seeds]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = [c for c, _ in results]
    state = run_state(target)
    winner_seed = None
    if not state.startswith(("refused", "absent")):
        winner_seed = RunFolder.open(target).config().train.seed
    winners = [s for s, (c, _) in zip(seeds, results) if c == 0]
    refused = [err for c, err in results if c == 2 and "another mmsent process" in err]
    # both may succeed one after the other (the second started after the first finished): then the later one wins
    consistent = winner_seed in winners and (len(winners) == 2 or len(refused) == 1)
    return {"trial": i, "exit_codes": codes, "published_seed": winner_seed, "refused_with_message": len(refused),
            "mixed_or_broken": not consistent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--races", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="feature cache (default: $MMSENT_CACHE, warmed first)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides for every run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fault_injection.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.cache:
        env["MMSENT_CACHE"] = str(args.cache)
    work = Path(tempfile.mkdtemp(prefix="mmsent-faults-"))
    base = ["--data", str(args.data), "--quiet", *[x for o in args.overrides for x in ("--set", o)]]
    good_run = work / "good"
    code, train_s, err = run_to_end(mmsent("train", *base, "--out", str(good_run)), env)  # warms the cache too
    if code != 0:
        raise SystemExit(f"the first training failed: {err}")
    code, train_s, _ = run_to_end(mmsent("train", *base, "--out", str(work / "timing")), env)
    test_list = args.data / "test_without_label.txt"
    n_test = len(test_list.read_text().splitlines()) - 1
    predict_args = ["--run", str(good_run), "--data", str(args.data), "--guids", str(test_list), "--quiet"]
    for _ in range(2):  # the first prediction may encode the test list: time the second, on a warm cache
        code, predict_s, err = run_to_end(mmsent("predict", *predict_args, "--out", str(work / "predictions.txt")), env)
        if code != 0:
            raise SystemExit(f"predict failed: {err}")
    durations = {"train-new": train_s, "retrain-overwrite": train_s, "predict": predict_s}
    print(f"warm-cache durations: train {train_s:.1f} s, predict {predict_s:.1f} s; work folder {work}", flush=True)
    kinds = ["train-new", "retrain-overwrite", "predict"]
    kills = []
    for i in range(args.kills):
        kills.append(kill_trial(kinds[i % 3], i, work, base, predict_args, durations, env, rng, good_run, n_test))
        print(json.dumps(kills[-1]), flush=True)
    races = []
    for i in range(args.races):
        races.append(race_trial(i, work, base, env))
        print(json.dumps(races[-1]), flush=True)
    summary = {
        "command": "python benchmarks/fault_injection.py " + " ".join(sys.argv[1:]),
        "kills": len(kills),
        "killed_mid_run": sum(k["exit"] == "killed" for k in kills),
        "half_written_runs_or_files_at_a_target": sum(k["half_written_at_target"] for k in kills),
        "good_runs_or_files_lost": sum(k["good_lost"] for k in kills),
        "races": len(races),
        "races_mixed_or_broken": sum(r["mixed_or_broken"] for r in races),
        "races_refused_with_message": sum(r["refused_with_message"] for r in races),
        "warm_train_seconds": round(train_s, 1),
        "predict_seconds": round(predict_s, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "kills": kills, "races": races}, indent=2))
    print("\n| measure | value |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key.replace('_', ' ')} | {value} |")


if __name__ == "__main__":
    main()
