"""One grid search shared by worker processes through a real PostgreSQL server (a throwaway one on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from postgres_cluster import Cluster, server_binaries, throwaway_cluster

import mmsent
from mmsent.experiments.search import GRID_POINT, WORKER
from mmsent.run_folder import RunFolder
from mmsent.tables import read_table

TINY = ["--set", "model.encoders=[vader]", "--set", "train.epochs=3", "--set", "model.hidden_dim=8", "--quiet"]
SLOW = ["--set", "train.epochs=500", "--set", "train.patience=500"]  # still training when the kill lands
POINTS = {("0.001", "8"), ("0.001", "16"), ("0.003", "8"), ("0.003", "16")}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    if server_binaries() is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    with throwaway_cluster() as cluster:
        yield cluster


def worker(dataset: Path, out: Path, grid: Path, storage: str, study: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmsent.cli", "search", "--data", str(dataset), "--out", str(out), "--grid", str(grid),
            "--storage", storage, "--study-name", study, *TINY, *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A worker process of this checkout's code (as on another machine), its output into log."""
    src = str(Path(mmsent.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    with log.open("w") as sink:
        return subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    assert proc.wait(timeout=timeout) == 0, log.read_text()
    return log.read_text()


def finished_by_point(storage: str, study: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """The finished (complete or pruned) trials of each grid point, raced duplicates (which train nothing) left out."""
    trials = optuna.load_study(study_name=study, storage=storage).trials
    by_point: dict[str, list] = {}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "duplicate_of" not in t.user_attrs:
            by_point.setdefault(json.dumps(t.user_attrs[GRID_POINT], sort_keys=True), []).append(t)
    return by_point


def trained_runs(*outs: Path) -> list[Path]:
    """The trial run folders the workers published: one per trained grid point."""
    return sorted(run for out in outs for run in (out / "trials").glob("trial-*") if RunFolder.is_complete(run))


def assert_grid_done_once(storage: str, study: str, table: Path) -> dict[str, list]:
    by_point = finished_by_point(storage, study)
    assert len(by_point) == 4 and all(len(ts) == 1 for ts in by_point.values()), by_point
    trials = optuna.load_study(study_name=study, storage=storage).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    rows = read_table(table)
    assert {(r["train.lr"], r["model.hidden_dim"]) for r in rows} == POINTS and len(rows) == 4
    return by_point


def claimed_by(storage: str, study: str, pid: int) -> int | None:
    """The number of a running trial that worker process pid has claimed a grid point for, if any."""
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.RUNNING,))
    except KeyError:  # no study yet: the workers are still starting
        return None
    return next((t.number for t in trials if GRID_POINT in t.user_attrs and t.user_attrs[WORKER]["pid"] == pid), None)


def test_workers_share_a_grid_on_postgresql_and_a_killed_one_reruns(dataset: Path, tmp_path: Path, postgres: Cluster):
    """Two workers (as on two machines) race for one grid; one is killed mid-trial, the other stops after two trials.

    Rerunning the killed one finishes the grid: every point trained to the end once, the trials that
    had finished untouched, the killed trial failed, the table complete.
    """
    grid = tmp_path / "grid.yaml"
    grid.write_text("train.lr: [1.0e-3, 3.0e-3]\nmodel.hidden_dim: [8, 16]\n")
    postgres.create_database("shared")
    url, outs = postgres.url("shared", password="secret"), [tmp_path / "machine1", tmp_path / "machine2"]
    logs = [tmp_path / name for name in ("fast.log", "killed.log", "rerun.log")]
    fast = start(worker(dataset, outs[0], grid, url, "shared", "--trials", "2"), logs[0])
    slow = start(worker(dataset, outs[1], grid, url, "shared", *SLOW), logs[1])
    deadline = time.monotonic() + 120
    while (killed := claimed_by(url, "shared", slow.pid)) is None and slow.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed is not None and slow.poll() is None, logs[1].read_text()
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    said = finish(fast, logs[0])
    before = {t.number: t.value for ts in finished_by_point(url, "shared").values() for t in ts}
    runs_before = {run: RunFolder.open(run).run_id for run in trained_runs(*outs)}
    assert len(before) == len(runs_before) >= 1

    said += finish(start(worker(dataset, outs[1], grid, url, "shared"), logs[2]), logs[2])
    assert f"dead worker: trial {killed}" in said
    by_point = assert_grid_done_once(url, "shared", outs[1] / "results.csv")
    after = {t.number: t.value for ts in by_point.values() for t in ts}
    assert {n: after[n] for n in before} == before  # the finished trials stayed as they were, none trained again
    assert {run: RunFolder.open(run).run_id for run in runs_before} == runs_before
    assert len(trained_runs(*outs)) == 4
    assert optuna.load_study(study_name="shared", storage=url).trials[killed].state == TrialState.FAIL
    # the database password is neither printed nor recorded
    assert "secret" not in said + (outs[1] / "experiment.json").read_text()
    assert "postgresql://mmsent:***@" in (outs[1] / "experiment.json").read_text()
