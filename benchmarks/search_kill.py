"""Fault check of `mmsent search`: SIGKILL a grid search while a trial trains, rerun it, check the grid.

Usage: python benchmarks/search_kill.py [--data ../shared/mvsa] [--runs 10] [--set key=value ...]
       [--grid GRID.yaml] [--json benchmarks/results/search_kill.json] [--seed 0]

One uninterrupted search first gives the reference scores and the time a search takes. Then, N times:
a fresh search on the grid (default 2x2: train.lr x model.hidden_dim) is started, killed with SIGKILL
at a random moment while one of its trials trains (a random delay, then the first moment a trial is
running), and the same command is rerun to completion. Each rerun must leave every grid point with
exactly one finished (complete or pruned) trial, no point trained again after it finished, no trial
left running or queued, results.csv with one row per grid point, best.yaml from the best trial, and
the killed trial failed. Results are printed as a Markdown table and written as JSON.
The feature cache is the environment's (MMSENT_CACHE): warm it first for timings of the real data.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GRID = {"train.lr": [3.0e-4, 1.0e-3], "model.hidden_dim": [128, 256]}
SHOWN = ("COMPLETE", "PRUNED")


def search_command(data: Path, out: Path, grid: Path, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "mmsent.cli", "search", "--data", str(data), "--out", str(out), "--grid", str(grid)]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def child_env() -> dict[str, str]:
    """The checkout's own code: this script checks the search of the tree it lives in."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def run_to_end(cmd: list[str], log: Path) -> tuple[int, float, str]:
    """(exit code, wall seconds, stdout) of one search run to completion."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, check=False)
    log.write_text(proc.stdout + proc.stderr)
    return proc.returncode, time.perf_counter() - t0, proc.stdout


def query(db: Path, sql: str) -> list[tuple]:
    """Read the study while a search writes it; None while the database is not there or busy."""
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:  # created but no tables yet, or locked by a writer
        return []


def training_trial(db: Path) -> tuple[int, str] | None:
    """(number, start time) of a trial that has claimed its grid point and trains, if any."""
    rows = query(
        db,
        "SELECT t.number, t.datetime_start FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING' AND a.key = 'grid_point' ORDER BY t.number",
    )
    return rows[0] if rows else None


def wait_for_training(proc: subprocess.Popen, db: Path, min_number: int = 0) -> tuple[int, str] | None:
    """The first trial numbered `min_number` or more seen training; None if the search ended first."""
    while proc.poll() is None:
        trial = training_trial(db)
        if trial is not None and trial[0] >= min_number:
            return trial
        time.sleep(0.01)
    return None


def kill_while_training(cmd: list[str], db: Path, trial: int, delay: float, log: Path) -> dict:
    """Start a search; once trial `trial` (or a later one) trains, wait `delay` s, then SIGKILL the search
    the first moment a trial trains (the same one, or the next if it ended meanwhile)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        t0 = time.perf_counter()
        if wait_for_training(proc, db, trial) is not None:
            time.sleep(delay)
        killed = wait_for_training(proc, db)
        if killed is None:
            return {"killed": False, "exit_code": proc.returncode}
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reap it: an unreaped child would still look alive (a zombie)
        into = datetime.now() - datetime.fromisoformat(killed[1])  # Optuna writes local time
        return {"killed": True, "killed_trial": killed[0], "killed_after_s": round(time.perf_counter() - t0, 2),
                "into_trial_s": round(into.total_seconds(), 2)}


def grid_points(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _same(a: object, b: object) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return str(a) == str(b)


def point_of(params: dict, grid: dict[str, list]) -> int | None:
    """Index of the grid point a trial's params are."""
    for i, point in enumerate(grid_points(grid)):
        if all(k in params and _same(params[k], v) for k, v in point.items()):
            return i
    return None


def study_trials(db: Path) -> list[dict]:
    """Every trial: number, state, user attrs (grid_point, duplicate_of, run_dir...), value."""
    trials = {tid: {"number": n, "state": state, "attrs": {}, "value": None}
              for tid, n, state in query(db, "SELECT trial_id, number, state FROM trials")}
    for tid, key, value in query(db, "SELECT trial_id, key, value_json FROM trial_user_attributes"):
        trials[tid]["attrs"][key] = json.loads(value)
    for tid, value in query(db, "SELECT trial_id, value FROM trial_values"):
        trials[tid]["value"] = value
    return sorted(trials.values(), key=lambda t: t["number"])


def trial_point(trial: dict, grid: dict[str, list]) -> int | None:
    # Optuna stores a categorical param as the index of its choice; the claimed point holds the values
    return point_of(trial["attrs"].get("grid_point", {}), grid)


def check_search(out: Path, grid: dict[str, list], killed_trial: int | None) -> dict:
    """What a rerun left: per grid point its finished trials, and everything that must not be there."""
    trials = study_trials(out / "study.db")
    real = [t for t in trials if "duplicate_of" not in t["attrs"]]  # raced duplicates train nothing
    finished = {i: [t for t in real if t["state"] in SHOWN and trial_point(t, grid) == i] for i in range(len(grid_points(grid)))}
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    row_points = sorted(point_of(r, grid) for r in rows)
    complete = [t for t in real if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t["value"]) if complete else None
    best_yaml = yaml.safe_load((out / "best.yaml").read_text()) if (out / "best.yaml").is_file() else None
    return {
        "missing_points": sum(len(ts) == 0 for ts in finished.values()),
        "duplicate_points": sum(len(ts) > 1 for ts in finished.values()),
        "left_running_or_queued": sum(t["state"] in ("RUNNING", "WAITING") for t in real),
        "failed_trials": sum(t["state"] == "FAIL" for t in trials),
        "killed_trial_failed": killed_trial is None or any(t["number"] == killed_trial and t["state"] == "FAIL" for t in trials),
        "table_ok": row_points == list(range(len(grid_points(grid)))) and all(r["state"] in ("complete", "pruned") for r in rows),
        "best_ok": best is not None and best_yaml is not None and _best_matches(best_yaml, best, grid),
        "scores": {i: [t["value"] for t in ts] for i, ts in finished.items()},
    }


def _best_matches(best_yaml: dict, best: dict, grid: dict[str, list]) -> bool:
    point = grid_points(grid)[trial_point(best, grid)]
    for key, value in point.items():
        section, name = key.split(".", 1)
        if not _same(best_yaml.get(section, {}).get(name), value):
            return False
    return True


def one_round(i: int, cmd_for, grid: dict, work: Path, trial_s: float, rng: random.Random, reference: dict) -> dict:
    """Kill a fresh search in a random trial at a random moment, rerun it, check what the rerun left.

    The moment: a random trial of the grid, a random fraction of a trial's typical time after it starts
    (if it ended by then, the next trial is killed as soon as it trains; if it was the last, the search
    ended unkilled and the round starts again with another moment).
    """
    out = work / f"round-{i:02d}"
    for attempt in range(1, 6):
        shutil.rmtree(out, ignore_errors=True)
        trial, delay = rng.randrange(len(grid_points(grid))), rng.uniform(0.0, trial_s)
        kill = kill_while_training(cmd_for(out), out / "study.db", trial, delay, work / f"round-{i:02d}-killed.log")
        if kill["killed"]:
            break
    else:
        return {"round": i, **kill, "ok": False}
    before = study_trials(out / "study.db")
    code, wall, stdout = run_to_end(cmd_for(out), work / f"round-{i:02d}-rerun.log")
    result = {"round": i, "attempts": attempt, "target_trial": trial, "delay_s": round(delay, 2), **kill, "done_before_kill": sum(t["state"] in SHOWN for t in before),
              "rerun_exit": code, "rerun_s": round(wall, 1),
              "rerun_says": next((line for line in stdout.splitlines() if line.startswith("ran ")), "")}
    if code == 0:
        check = check_search(out, grid, kill["killed_trial"])
        scores = check.pop("scores")
        check["same_scores_as_uninterrupted"] = all(
            len(v) == 1 and len(reference.get(k, [])) == 1 and _same(v[0], reference[k][0]) for k, v in scores.items()
        )
        result.update(check)
    result["ok"] = code == 0 and result.get("missing_points") == 0 and result.get("duplicate_points") == 0 and \
        result.get("left_running_or_queued") == 0 and result.get("table_ok") and result.get("best_ok") and \
        result.get("killed_trial_failed")
    return result


def median_trial_seconds(db: Path) -> float:
    spans = sorted(
        (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        for start, end in query(db, "SELECT datetime_start, datetime_complete FROM trials WHERE datetime_complete IS NOT NULL")
    )
    return spans[len(spans) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "mvsa", help="data set folder (real or synthetic)")
    parser.add_argument("--runs", type=int, default=10, help="kills (each followed by a rerun)")
    parser.add_argument("--grid", type=Path, help="grid file (default: 2x2 train.lr x model.hidden_dim)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "search_kill.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--keep", type=Path, help="keep the search folders and logs here (default: a temp folder, removed)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="mmsent-search-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    grid_file = args.grid or work / "grid.yaml"
    if args.grid is None:
        grid_file.write_text(yaml.safe_dump(DEFAULT_GRID))
    grid = yaml.safe_load(grid_file.read_text())
    overrides = [*args.overrides, "train.epochs=5"] if not any(o.startswith("train.epochs=") for o in args.overrides) else args.overrides

    def cmd_for(out: Path) -> list[str]:
        return search_command(args.data.resolve(), out, grid_file, overrides)

    rng = random.Random(args.seed)
    try:
        code, reference_s, _ = run_to_end(cmd_for(work / "uninterrupted"), work / "uninterrupted.log")
        if code != 0:
            raise SystemExit(f"the uninterrupted search failed (exit {code}): see {work / 'uninterrupted.log'}")
        reference = check_search(work / "uninterrupted", grid, None)["scores"]
        trial_s = median_trial_seconds(work / "uninterrupted" / "study.db")
        rounds = [one_round(i, cmd_for, grid, work, trial_s, rng, reference) for i in range(args.runs)]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python benchmarks/search_kill.py " + " ".join(sys.argv[1:]),
        "data": str(args.data), "grid": grid, "overrides": overrides,
        "feature_cache": os.environ.get("MMSENT_CACHE", "(default)"),
        "uninterrupted_s": round(reference_s, 1), "median_trial_s": round(trial_s, 2),
        "rounds_ok": sum(bool(r.get("ok")) for r in rounds), "rounds": len(rounds),
        "results": rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(f"uninterrupted search: {reference_s:.1f} s (median trial {trial_s:.1f} s); "
          f"{summary['rounds_ok']}/{len(rounds)} rounds ok")
    print("| round | killed trial | s into it | done before | rerun (s) | missing | duplicate | left running | "
          "table | best.yaml | same scores | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        print(f"| {r['round']} | {r.get('killed_trial', '-')} | {r.get('into_trial_s', '-')} | {r.get('done_before_kill', '-')} | "
              f"{r.get('rerun_s', '-')} | {r.get('missing_points', '-')} | {r.get('duplicate_points', '-')} | "
              f"{r.get('left_running_or_queued', '-')} | {r.get('table_ok', '-')} | {r.get('best_ok', '-')} | "
              f"{r.get('same_scores_as_uninterrupted', '-')} | {r.get('ok')} |")
    print(f"json: {args.json}")
    if summary["rounds_ok"] != len(rounds):
        sys.exit(1)


if __name__ == "__main__":
    main()
