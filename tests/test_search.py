"""A search whose worker dies mid-trial: the next run fails the orphaned trial and completes the grid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

import mmsent
import mmsent.experiments.search as search
from mmsent.cli import main
from mmsent.config import load_config
from mmsent.experiments.search import GRID_POINT, WORKER, fail_dead_trials, worker_identity, worker_is_dead
from mmsent.tables import read_table

TINY = ["--set", "model.encoders=[vader]", "--set", "train.epochs=3", "--set", "model.hidden_dim=8"]
POINTS = {("0.001", "8"), ("0.001", "16"), ("0.003", "8"), ("0.003", "16")}


def _grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text("train.lr: [1.0e-3, 3.0e-3]\nmodel.hidden_dim: [8, 16]\n")
    return path


def _search_args(dataset: Path, out: Path, grid: Path, *extra: str) -> list[str]:
    return ["search", "--data", str(dataset), "--out", str(out), "--grid", str(grid), *TINY, *extra]


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _assert_grid_done_once(out: Path) -> optuna.Study:
    """Every grid point has exactly one finished trial; the table lists those and nothing else."""
    study = optuna.load_study(study_name="mmsent-search", storage=f"sqlite:///{out / 'study.db'}")
    real = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    finished = [t for t in real if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    points = [json.dumps(t.user_attrs[GRID_POINT], sort_keys=True) for t in finished]
    assert len(points) == 4 and len(set(points)) == 4, points
    assert not [t for t in real if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    rows = read_table(out / "results.csv")
    assert {(r["train.lr"], r["model.hidden_dim"]) for r in rows} == POINTS and len(rows) == 4
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    best = max((t for t in finished if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    best_cfg = load_config(out / "best.yaml")
    assert (best_cfg.train.lr, best_cfg.model.hidden_dim) == (best.params["train.lr"], best.params["model.hidden_dim"])
    return study


def test_worker_identity_tells_live_dead_and_reused_pids():
    me = worker_identity()
    assert worker_is_dead(me) is False
    assert worker_is_dead({**me, "pid": _exited_pid()}) is True
    assert worker_is_dead({**me, "started": "1"}) is True  # this pid, but not the process that started then
    assert worker_is_dead({**me, "host": "elsewhere"}) is None  # another machine: only heartbeats can tell
    assert worker_is_dead({**me, "pid": 0}) is None


def _running_trial(storage, study_id: int, started: datetime, user_attrs: dict, params: dict | None = None) -> int:
    dists = {k: CategoricalDistribution([v]) for k, v in (params or {}).items()}
    template = FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=started, datetime_complete=None,
        params=params or {}, distributions=dists, user_attrs=user_attrs, system_attrs={},
        intermediate_values={}, trial_id=-1,
    )
    return storage.create_new_trial(study_id, template_trial=template)


def test_fail_dead_trials_fails_only_trials_whose_worker_is_known_dead():
    study = optuna.create_study()
    storage, sid, now = study._storage, study._study_id, datetime.now()
    me = worker_identity()
    ids = {
        "dead pid": _running_trial(storage, sid, now, {WORKER: {**me, "pid": _exited_pid()}}),
        "reused pid": _running_trial(storage, sid, now, {WORKER: {**me, "started": "1"}}),
        "never recorded": _running_trial(storage, sid, now - timedelta(hours=1), {}),
        "alive": _running_trial(storage, sid, now, {WORKER: me}),
        "other host": _running_trial(storage, sid, now, {WORKER: {**me, "host": "elsewhere"}}),
        "older mmsent": _running_trial(storage, sid, now - timedelta(hours=1), {}, {"x": 1}),  # heartbeats decide
        "just started": _running_trial(storage, sid, now, {}),
    }
    notes = fail_dead_trials(study)
    states = {name: storage.get_trial(tid).state for name, tid in ids.items()}
    assert {n for n, s in states.items() if s == TrialState.FAIL} == {"dead pid", "reused pid", "never recorded"}
    assert len(notes) == 3 and "is gone" in notes[0]
    assert fail_dead_trials(study) == []  # nothing twice


def test_a_trial_without_heartbeat_for_the_grace_period_is_failed(tmp_path):
    space = search.SearchSpace(grid={"x": [0, 1]})
    study = search.open_study(f"sqlite:///{tmp_path / 'hb.db'}", "hb", space, prune=False, seed=0)
    elsewhere = {**worker_identity(), "host": "elsewhere"}
    tid = _running_trial(study._storage, study._study_id, datetime.now(), {WORKER: elsewhere})
    here = _running_trial(study._storage, study._study_id, datetime.now(), {WORKER: worker_identity()})
    for trial_id in (tid, here):
        study._storage.record_heartbeat(trial_id)
    assert fail_dead_trials(study) == []  # fresh heartbeats: alive
    study._storage._backend.grace_period = 0  # as if GRACE_PERIOD had passed since their last beat
    time.sleep(1.1)  # SQLite's CURRENT_TIMESTAMP has whole seconds
    notes = fail_dead_trials(study)
    assert len(notes) == 1 and "no heartbeat" in notes[0]
    assert study._storage.get_trial(tid).state == TrialState.FAIL
    assert study._storage.get_trial(here).state == TrialState.RUNNING  # its process is seen alive


def test_rerun_after_a_worker_died_mid_trial_completes_the_grid(dataset, tmp_path, monkeypatch, capsys):
    """The user's report: the dead worker's trial stayed RUNNING and reruns said 'ran 0 trial(s)'."""
    out, grid = tmp_path / "search", _grid(tmp_path)
    real_train, calls = search.train, []

    def dies_in_third_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise SystemExit("killed")  # Optuna catches Exception and KeyboardInterrupt only: the trial stays RUNNING
        return real_train(*args, **kwargs)

    monkeypatch.setattr(search, "train", dies_in_third_trial)
    monkeypatch.setattr(search, "worker_identity", lambda: {**worker_identity(), "pid": _exited_pid()})
    with pytest.raises(SystemExit):
        main(_search_args(dataset, out, grid))
    monkeypatch.undo()
    study = optuna.load_study(study_name="mmsent-search", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    capsys.readouterr()

    assert main(_search_args(dataset, out, grid)) == 0
    printed = capsys.readouterr().out
    assert "dead worker: trial 2" in printed and "ran 2 trial(s) here, 1 failed or yielded point(s) re-queued" in printed
    study = _assert_grid_done_once(out)
    assert study.trials[2].state == TrialState.FAIL
    assert main(_search_args(dataset, out, grid)) == 0  # done: nothing runs, nothing changes
    assert "ran 0 trial(s)" in capsys.readouterr().out


def test_a_point_queued_by_a_worker_that_died_before_taking_it_is_run(dataset, tmp_path):
    out, grid = tmp_path / "search", _grid(tmp_path)
    assert main(_search_args(dataset, out, grid, "--trials", "3")) == 0
    study = optuna.load_study(study_name="mmsent-search", storage=f"sqlite:///{out / 'study.db'}")
    done = {json.dumps(t.params, sort_keys=True) for t in study.trials}
    left = next(p for p in search.SearchSpace(grid={"train.lr": [1e-3, 3e-3], "model.hidden_dim": [8, 16]}).grid_points()
                if json.dumps(p, sort_keys=True) not in done)
    study.enqueue_trial(left)  # and then the worker died: nobody takes the queued trial
    assert main(_search_args(dataset, out, grid)) == 0
    _assert_grid_done_once(out)


def _training_trial(db: Path) -> bool:
    import sqlite3

    if not db.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as conn:
            return bool(conn.execute(
                "SELECT 1 FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = ?", (GRID_POINT,)
            ).fetchall())
    except sqlite3.Error:  # not created yet, or locked by the writer
        return False


def test_sigkill_mid_trial_then_rerun_completes_the_grid(dataset, tmp_path, capsys):
    """A real worker process, killed with SIGKILL while its first trial trains."""
    out, grid = tmp_path / "search", _grid(tmp_path)
    src = str(Path(mmsent.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    # many epochs: the first trial is still training when the kill lands (the rerun uses few)
    args = [*_search_args(dataset, out, grid), "--set", "train.epochs=500"]
    log = tmp_path / "killed.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "mmsent.cli", *args], env=env, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not _training_trial(out / "study.db") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    study = optuna.load_study(study_name="mmsent-search", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.RUNNING]

    assert main(_search_args(dataset, out, grid)) == 0
    assert "dead worker: trial 0" in capsys.readouterr().out
    study = _assert_grid_done_once(out)
    assert study.trials[0].state == TrialState.FAIL


@pytest.mark.parametrize(("storage", "needle"), [
    ("postgresql://mmsent:secret@127.0.0.1:1/nowhere", "cannot open the study 'mmsent-search' in postgresql://mmsent:***@127.0.0.1:1/nowhere"),
    ("not a url", "is not a database URL"),
    ("postgresql+nosuchdriver://mmsent:secret@127.0.0.1:1/x", "is not a database URL"),
])
def test_a_storage_that_cannot_be_opened_is_a_message(dataset, tmp_path, capsys, storage: str, needle: str):
    assert main(_search_args(dataset, tmp_path / "s", _grid(tmp_path), "--storage", storage)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmsent: error:") and needle in err and "secret" not in err and "Traceback" not in err


def test_a_missing_postgresql_driver_says_how_to_install_it(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if `pip install 'mmsent[postgres]'` had not been run
    storage = "postgresql://mmsent:secret@127.0.0.1:1/x"
    assert main(_search_args(dataset, tmp_path / "s", _grid(tmp_path), "--storage", storage)) == 2
    err = capsys.readouterr().err
    assert "pip install 'mmsent[postgres]'" in err and "secret" not in err
