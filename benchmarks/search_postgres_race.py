"""Race check of a grid search shared on PostgreSQL: workers started at once must train each grid point once.

Usage: python benchmarks/search_postgres_race.py [--repetitions 10] [--workers 2] [--stub-training]
       [--data DIR] [--grid GRID.yaml] [--set key=value ...] [--json FILE]

Starts a throwaway PostgreSQL server (tests/postgres_cluster.py: initdb in a temp folder, 127.0.0.1, a
free port), then N times: a fresh database, `--workers` search processes started together on one study
of the grid. By default they are `mmsent search` commands (3x3 grid of train.lr x model.hidden_dim, tiny
trials on the synthetic data set of the tests unless --data says otherwise). Real workers seldom sample
within the same milliseconds, so `--stub-training` makes the race hard: every worker is still the
`mmsent search` command (mmsent.cli.main: the real study, claim protocol and table on the real server),
but its training of a trial is replaced by one that takes 0 to 20 ms and only records which point it
trained, all workers sample their first point at one agreed moment, and the grid is 4x4. Each
repetition counts grid points trained more than once
(duplicates: must be 0), points not finished (must be 0), and the trials that found their point taken
by a rival and yielded (the races the claim protocol settled). Prints a Markdown table; writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the throwaway server and the synthetic data set of the tests

from conftest import make_dataset  # noqa: E402
from postgres_cluster import throwaway_cluster  # noqa: E402

DEFAULT_GRID = {"train.lr": [1.0e-3, 3.0e-3, 1.0e-2], "model.hidden_dim": [8, 16, 32]}
STUB_GRID = {"train.lr": [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3], "model.hidden_dim": [8, 16, 32, 64]}
TRAINED_LOG = "trained.jsonl"  # a stub worker's record of the points it trained, one line each
TINY = ["model.encoders=[vader]", "train.epochs=3"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def child_env() -> dict[str, str]:
    """The checkout's own code: this script checks the search of the tree it lives in."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def worker_command(data: Path, out: Path, grid: Path, storage: str, overrides: list[str], start_at: float | None) -> list[str]:
    """An `mmsent search` worker; with start_at, one whose training is a stub and whose sampling starts then."""
    if start_at is None:
        cmd = [sys.executable, "-m", "mmsent.cli", "search"]
    else:
        cmd = [sys.executable, __file__, "--stub-worker", "--start-at", repr(start_at), "--"]
    cmd += ["--data", str(data), "--out", str(out), "--grid", str(grid), "--storage", storage]
    for item in overrides:
        cmd += ["--set", item]
    return cmd + ["--study-name", "race", "--quiet"]


def stub_worker(search_args: list[str], start_at: float) -> int:
    """`mmsent search SEARCH_ARGS` in this process, its training replaced by a few milliseconds that record the point."""
    import random
    from types import SimpleNamespace

    import mmsent.experiments.search as search
    from mmsent.cli import main as mmsent_main

    out = Path(search_args[search_args.index("--out") + 1])
    grid = yaml.safe_load(Path(search_args[search_args.index("--grid") + 1]).read_text())
    rng = random.Random()
    load_training_data = search.load_training_data

    def loaded_then_wait(*args, **kwargs):  # noqa: ANN002, ANN003 - api.load_training_data's signature
        dataset = load_training_data(*args, **kwargs)
        time.sleep(max(0.0, start_at - time.time()))  # every worker samples its first point at the same moment
        return dataset

    def train(data_dir, run_dir, cfg, **kwargs):  # noqa: ANN001, ANN003 - api.train's signature
        point = {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in grid}
        with (out / TRAINED_LOG).open("a") as log:
            log.write(json.dumps(point, sort_keys=True) + "\n")
        time.sleep(rng.uniform(0.0, 0.02))
        score = rng.random()
        return SimpleNamespace(metrics={"accuracy": score, "macro_f1": score, "best_epoch": 1}, timings={})

    search.load_training_data, search.train = loaded_then_wait, train
    return mmsent_main(["search", *search_args])


def run_workers(commands: list[list[str]], logs: list[Path]) -> tuple[list[int], float]:
    """Start every worker at once; (exit codes, wall seconds until the last ended)."""
    t0 = time.perf_counter()
    procs = []
    for cmd, log in zip(commands, logs, strict=True):
        with log.open("w") as sink:
            procs.append(subprocess.Popen(cmd, env=child_env(), stdout=sink, stderr=subprocess.STDOUT))
    codes = [proc.wait() for proc in procs]
    return codes, time.perf_counter() - t0


def grid_size(grid: dict[str, list]) -> int:
    return len(list(itertools.product(*grid.values())))


def trainings(outs: list[Path], stub: bool) -> list[list[str]]:
    """Per worker, what it trained: the points a stub worker recorded, or the trial run folders a real one published."""
    if stub:
        return [(out / TRAINED_LOG).read_text().splitlines() if (out / TRAINED_LOG).is_file() else [] for out in outs]
    return [[run.name for run in (out / "trials").glob("trial-*") if (run / "complete.json").is_file()] for out in outs]


def check_study(storage: str, outs: list[Path], grid: dict[str, list], stub: bool) -> dict:
    """Duplicates, missing points, trainings and yielded races of one repetition."""
    trials = optuna.load_study(study_name="race", storage=storage).trials
    per_point: dict[str, int] = {}
    for t in trials:
        if t.state in FINISHED and "duplicate_of" not in t.user_attrs:
            key = json.dumps(t.user_attrs.get("grid_point"), sort_keys=True)
            per_point[key] = per_point.get(key, 0) + 1
    done = trainings(outs, stub)
    trained = [item for items in done for item in items]
    return {
        "trials": len(trials),
        "duplicate_points": sum(n > 1 for n in per_point.values()),
        "trained_twice": len(trained) - len(set(trained)) if stub else max(0, len(trained) - grid_size(grid)),
        "missing_points": grid_size(grid) - len(per_point),
        "trainings": len(trained),
        "yielded_to_a_rival": sum("duplicate_of" in t.user_attrs for t in trials),
        "trained_by_worker": [len(items) for items in done],
        "left_running_or_failed": sum(t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL) for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stub-training", action="store_true", help="workers whose training takes milliseconds")
    parser.add_argument("--stub-worker", action="store_true", help=argparse.SUPPRESS)  # one such worker (internal)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, help="data set folder (default: the tests' synthetic one, made in a temp folder)")
    parser.add_argument("--grid", type=Path, help="grid file (default: 3x3 train.lr x model.hidden_dim)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/search_postgres_race[_stub].json")
    if "--stub-worker" in sys.argv:  # a worker: its own arguments are those of `mmsent search`, after --
        args = parser.parse_args(sys.argv[1:sys.argv.index("--")])
        sys.exit(stub_worker(sys.argv[sys.argv.index("--") + 1:], args.start_at))
    args = parser.parse_args()
    stub = args.stub_training
    json_path = args.json or REPO / "benchmarks" / "results" / f"search_postgres_race{'_stub' if stub else ''}.json"
    work = Path(tempfile.mkdtemp(prefix="mmsent-pg-race-"))
    grid = yaml.safe_load(args.grid.read_text()) if args.grid else (STUB_GRID if stub else DEFAULT_GRID)
    grid_file = work / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    data = args.data or make_dataset(work / "data")
    overrides = [*TINY, *args.overrides] if args.data is None else args.overrides
    rows = []
    try:
        with throwaway_cluster() as cluster:
            for i in range(args.repetitions):
                storage = cluster.create_database(f"race{i}")
                outs = [work / f"rep{i:02d}" / f"worker{w}" for w in range(args.workers)]
                logs = [out.with_suffix(".log") for out in outs]
                outs[0].parent.mkdir(parents=True)
                start_at = time.time() + 25 if stub else None  # time enough for every worker to import and load the data
                commands = [worker_command(data, out, grid_file, storage, overrides, start_at) for out in outs]
                codes, seconds = run_workers(commands, logs)
                row = {"repetition": i, "exit_codes": codes, "seconds": round(seconds, 1),
                       **check_study(storage, outs, grid, stub)}
                row["ok"] = (all(c == 0 for c in codes) and row["duplicate_points"] == 0 and row["trained_twice"] == 0
                             and row["missing_points"] == 0 and row["trainings"] == grid_size(grid)
                             and row["left_running_or_failed"] == 0)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python benchmarks/search_postgres_race.py " + " ".join(sys.argv[1:]),
        "data": str(args.data or "synthetic (tests/conftest.make_dataset)"), "grid": grid, "overrides": overrides,
        "workers": args.workers, "stub_training": stub, "repetitions_ok": sum(r["ok"] for r in rows),
        "repetitions": len(rows), "duplicate_points": sum(r["duplicate_points"] for r in rows),
        "trained_twice": sum(r["trained_twice"] for r in rows),
        "yielded_to_a_rival": sum(r["yielded_to_a_rival"] for r in rows),
        "results": rows,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2))
    print(f"{summary['repetitions_ok']}/{len(rows)} repetitions ok; {summary['duplicate_points']} duplicate grid points, "
          f"{summary['trained_twice']} trained twice; {summary['yielded_to_a_rival']} races settled by a yielding trial")
    print("| repetition | seconds | trials | duplicate points | trained twice | missing points | trainings | yielded | "
          "per worker | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['repetition']} | {r['seconds']} | {r['trials']} | {r['duplicate_points']} | {r['trained_twice']} | "
              f"{r['missing_points']} | {r['trainings']} | {r['yielded_to_a_rival']} | {r['trained_by_worker']} | {r['ok']} |")
    print(f"json: {json_path}")
    if summary["repetitions_ok"] != len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
