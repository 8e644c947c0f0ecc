"""Hyperparameter search with Optuna: a grid (GridSampler) or TPE over ranges, pruned, resumable, shareable."""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from mmsent.api import load_training_data, train
from mmsent.config import Config, read_yaml_mapping, save_config
from mmsent.engine.metrics import METRICS, metric_row
from mmsent.errors import MmsentError
from mmsent.progress import Progress
from mmsent.run_folder import RunOrigin, write_manifest
from mmsent.tables import write_table

GRID_POINT = "grid_point"  # user attr: the point a running grid trial claims before it looks for rivals
WORKER = "worker"  # user attr: the process that trains the trial (see worker_identity)
HELD = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # a point done or in training
TAKEN = (*HELD, TrialState.WAITING)  # ... or queued
SHOWN = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials of the results table

# Heartbeats find dead workers on other machines (a dead worker on this machine is found at once, by
# its pid). Every running trial writes one row every HEARTBEAT_INTERVAL seconds: 0.1 writes/s per worker,
# nothing for SQLite or PostgreSQL. A trial silent for GRACE_PERIOD seconds (6 missed beats) counts as
# dead: generous, since failing a live trial trains its point twice and stops its worker, while a dead
# remote worker's point only comes back a minute later.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60

logger = logging.getLogger(__name__)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _encode(value: Any) -> Any:
    """Optuna stores scalars only: lists and mappings travel as JSON text."""
    return value if _scalar(value) else json.dumps(value)


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, safe with enqueued trials.

    An enqueued trial (a failed point rerun, or a point two workers raced for) carries `fixed_params`
    and no `grid_id`; Optuna 5.0's `after_trial` reads `grid_id` unconditionally and raises KeyError
    when exactly one grid point is left. Its only job there is `study.stop()`, which this module does
    not rely on: `run_search` decides itself when the grid is done.
    """

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 - Optuna's signature
        if "grid_id" in trial.system_attrs:
            super().after_trial(study, trial, state, values)


def load_grid(path: Path) -> dict[str, list]:
    """A grid file: config key -> list of values."""
    grid = read_yaml_mapping(path, "grid", allow_empty=False)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise MmsentError(f"grid file {path}: {key} must map to a non-empty list of values")
    return grid


def load_space(path: Path) -> dict[str, dict]:
    """A search space file: config key -> {low, high[, log]} or {choices: [...]}."""
    space = read_yaml_mapping(path, "search space", allow_empty=False)
    for key, spec in space.items():
        ok = isinstance(spec, dict) and ("choices" in spec or {"low", "high"} <= set(spec))
        if not ok:
            raise MmsentError(f"search space file {path}: {key} needs {{low, high[, log]}} or {{choices: [...]}}")
    return space


@dataclass
class SearchSpace:
    """What a trial samples: a grid (every combination) or ranges for TPE."""

    grid: dict[str, list] | None = None
    ranges: dict[str, dict] | None = None

    def keys(self) -> list[str]:
        return list(self.grid or self.ranges or {})

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.grid:
            return GridSampler({k: [_encode(v) for v in vs] for k, vs in self.grid.items()}, seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Config values for this trial, decoded back from Optuna's scalars."""
        if self.grid:
            return {k: self._decode(vs, trial.suggest_categorical(k, [_encode(v) for v in vs])) for k, vs in self.grid.items()}
        values = {}
        for key, spec in (self.ranges or {}).items():
            if "choices" in spec:
                values[key] = self._decode(spec["choices"], trial.suggest_categorical(key, [_encode(c) for c in spec["choices"]]))
            elif all(isinstance(spec[b], int) for b in ("low", "high")):
                values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log", False)))
            else:
                values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
        return values

    @staticmethod
    def _decode(options: list, value: Any) -> Any:
        return value if all(_scalar(o) for o in options) else json.loads(value)

    def params_to_values(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.grid:
            return {k: self._decode(self.grid[k], v) for k, v in params.items() if k in self.grid}
        ranges = self.ranges or {}
        return {k: self._decode(ranges[k]["choices"], v) if "choices" in ranges.get(k, {}) else v for k, v in params.items()}

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid as Optuna params (encoded)."""
        keys = list(self.grid or {})
        encoded = [[_encode(v) for v in self.grid[k]] for k in keys]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*encoded)]


def _trial_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's grid point, visible from the moment the trial holds it (queued, or claimed when it started).

    The claimed point comes before the params: params fill in one suggest call at a time, and a
    half-filled point would hide a running trial from a rival worker.
    """
    if "fixed_params" in trial.system_attrs:
        return dict(trial.system_attrs["fixed_params"])
    if GRID_POINT in trial.user_attrs:
        return dict(trial.user_attrs[GRID_POINT])
    return dict(trial.params)


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def remaining_grid(
    trials: list[optuna.trial.FrozenTrial], space: SearchSpace, states: tuple[TrialState, ...] = TAKEN
) -> list[dict[str, Any]]:
    """Grid points no trial in `states` holds: by default none has done, is running or has queued them.

    Failed (interrupted, or left by a dead worker and failed since) points count as remaining.
    """
    taken = {_key(_trial_params(t)) for t in trials if t.state in states and "duplicate_of" not in t.user_attrs}
    return [p for p in space.grid_points() if _key(p) not in taken]


def _next_grid_point_to_enqueue(study: optuna.Study, space: SearchSpace) -> tuple[bool, dict[str, Any] | None]:
    """(grid has points left, a point the sampler will not pick by itself: one whose trial failed or yielded).

    Both answers come from one snapshot of the trials: another worker writes its trial's state between
    two reads, and mixing snapshots made a point that had just started look failed.
    """
    trials = study.get_trials(deepcopy=False)
    # a queued point is work left too: its worker may have died between queueing it and taking it,
    # and this worker's next trial takes it (Optuna hands out queued trials first)
    if not remaining_grid(trials, space, HELD):
        return False, None
    # the sampler counts a point as visited once a trial of it ended, also one that failed or yielded
    # to a rival: such a point must be queued explicitly
    sampled = {_key(_trial_params(t)) for t in trials if "grid_id" in t.system_attrs}
    return True, next((p for p in remaining_grid(trials, space) if _key(p) in sampled), None)


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _this_machine() -> dict[str, str | None]:
    """What tells this machine's processes apart from others': host name, boot and pid namespace.

    Two machines (or containers) may share a host name; the boot id and the pid namespace make a pid
    comparable only with pids of the same running kernel and namespace.
    """
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"host": socket.gethostname(), "boot": _read_text("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def _process_start(pid: int) -> tuple[str, str] | None:
    """(start time, state) of a visible process, or None when it does not exist or cannot be seen.

    The start time (clock ticks since boot, /proc/PID/stat field 22) tells a reused pid from the
    original process.
    """
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is not None:
        fields = stat.rsplit(")", 1)[-1].split()  # the command name in (...) may hold spaces
        return fields[19], fields[0]
    try:
        import psutil  # not a dependency: systems without /proc (macOS) may have it
    except ImportError:
        return None
    try:
        proc = psutil.Process(pid)
        return str(proc.create_time()), "Z" if proc.status() == psutil.STATUS_ZOMBIE else "R"
    except psutil.Error:
        return None


def worker_identity() -> dict[str, Any]:
    """This process, as recorded on each trial it trains: enough for a later run to see it is gone."""
    start = _process_start(os.getpid())
    return {**_this_machine(), "pid": os.getpid(), "started": start[0] if start else None}


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 checks only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def worker_is_dead(worker: dict[str, Any]) -> bool | None:
    """Whether a recorded worker process is gone: True/False on this machine, None (unknown) elsewhere."""
    if any(worker.get(k) != v for k, v in _this_machine().items()):
        return None
    pid = worker.get("pid")
    if not isinstance(pid, int) or pid <= 0:  # os.kill(0, ...) would mean the process group
        return None
    now = _process_start(pid)
    if now is None:
        # gone, or hidden from us (/proc mounted with hidepid): only a missing pid proves it dead
        return not _pid_exists(pid)
    started, state = now
    if state in ("Z", "X"):
        return True  # killed, not yet reaped by its parent
    return worker.get("started") is not None and started != worker["started"]  # the pid was reused


def _dead_reason(trial: optuna.trial.FrozenTrial, stale: set[int], now: datetime) -> str | None:
    """Why a running trial's worker is known to be dead, or None while it may be alive."""
    worker = trial.user_attrs.get(WORKER)
    dead = worker_is_dead(worker) if isinstance(worker, dict) else None
    if dead:
        return f"process {worker.get('pid')} on {worker.get('host')} is gone"
    if dead is False:
        return None  # alive on this machine: missed heartbeats mean a busy database, not a dead worker
    if trial._trial_id in stale:
        return f"no heartbeat for {GRACE_PERIOD} s"
    # a worker records itself within milliseconds of taking a trial; a trial with no worker and no
    # params long after it started lost its worker in between (before any heartbeat could be written)
    started = trial.datetime_start
    if worker is None and not trial.params and started is not None and now - started > timedelta(seconds=2 * GRACE_PERIOD):
        return "its worker never recorded itself"
    return None


def _stale_trial_ids(study: optuna.Study) -> set[int]:
    """Running trials whose heartbeat stopped more than the grace period ago (workers on any machine)."""
    storage = study._storage
    # the storage query behind optuna.storages.fail_stale_trials, which fails them without saying which
    # (Optuna's heartbeat classes are private: a storage with heartbeats has these two methods)
    get_stale = getattr(storage, "_get_stale_trial_ids", None)
    if get_stale is None or not storage.get_heartbeat_interval():
        return set()
    return set(get_stale(study._study_id))


def fail_dead_trials(study: optuna.Study) -> list[str]:
    """Mark the running trials of dead workers failed, so their points are queued again; one note each.

    A killed worker leaves its trial RUNNING: it would hold its grid point forever.
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not trials:
        return []
    stale, now, notes = _stale_trial_ids(study), datetime.now(), []
    for trial in trials:
        reason = _dead_reason(trial, stale, now)
        if reason is None:
            continue
        try:
            failed = study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            failed = False  # another worker failed it (or it finished) first
        if failed:
            point = _trial_params(trial)
            notes.append(f"trial {trial.number}{f' {point}' if point else ''} marked failed: {reason}")
    return notes


class _Storage(optuna.storages.RDBStorage):
    """RDBStorage whose heartbeats survive a database hiccup.

    Optuna's heartbeat thread ends at the first error: a live trial would then look dead after the
    grace period and be failed and trained again. A missed beat is only logged.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            logger.warning("mmsent search: heartbeat of trial id %s not recorded (%s); retrying", trial_id, exc)


def shown_storage(storage: str) -> str:
    """A storage URL fit to print and record: its password masked."""
    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:
        return storage  # not a URL: nothing to hide, and the error says so


def open_study(storage: str, name: str, space: SearchSpace, prune: bool, seed: int, attempts: int = 5) -> optuna.Study:
    """Create the study or load it to resume (several workers may share it).

    A storage that cannot be used (a malformed URL, a missing database driver, a server that does not
    answer or refuses the login) is a clear error naming it, without its password.
    """
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=5) if prune else optuna.pruners.NopPruner()
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # heartbeats let a later worker mark trials of a killed worker as failed (and so redo them)
                rdb = _Storage(storage, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD)
            return optuna.create_study(
                storage=rdb, study_name=name, direction="maximize", sampler=space.sampler(seed), pruner=pruner,
                load_if_exists=True,
            )
        except ImportError:
            raise MmsentError(_missing_driver(storage)) from None
        except ArgumentError as exc:
            raise MmsentError(f"--storage {shown_storage(storage)} is not a database URL SQLAlchemy can open ({exc}); "
                              "give postgresql://USER:PASSWORD@HOST:5432/DATABASE or sqlite:///PATH/study.db") from None
        except (optuna.exceptions.DuplicatedStudyError, OperationalError, IntegrityError, ProgrammingError) as exc:
            # two workers starting at once race to create the schema or the study: the loser retries and loads it;
            # a server that is down or refuses the login fails every time
            if attempt == attempts - 1:
                raise MmsentError(f"cannot open the study {name!r} in {shown_storage(storage)}: {_first_line(exc)}") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _missing_driver(storage: str) -> str:
    """How to install the database driver a storage URL needs."""
    url, shown = make_url(storage), shown_storage(storage)
    if url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg":
        return f"--storage {shown} needs the PostgreSQL driver psycopg: pip install 'mmsent[postgres]'"
    return (f"--storage {shown} needs the database driver {url.get_driver_name()!r}, which is not installed: install "
            "it with pip (for PostgreSQL, a postgresql:// URL with pip install 'mmsent[postgres]')")


def _first_line(exc: Exception) -> str:
    """The database's own words (connection refused, password authentication failed), without SQLAlchemy's trailer."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rival(trial: optuna.Trial) -> int | None:
    """The number of another trial that holds this trial's grid point (done, or running and not yielding).

    Every trial's point is visible (queued or claimed) before the trial looks for rivals, so of two
    trials racing for one point at least one sees the other and at most one trains. Both may yield:
    the point then stays open, and the worker that finishes last queues it again.
    """
    key = _key(trial.params)  # complete here: the objective has suggested every key
    for other in trial.study.get_trials(deepcopy=False, states=HELD):
        if other.number != trial.number and "duplicate_of" not in other.user_attrs and _key(_trial_params(other)) == key:
            return other.number
    return None


def _objective_fn(data_dir: Path, out_dir: Path, cfg: Config, space: SearchSpace, objective: str, quiet: bool, dataset):
    identity = worker_identity()

    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER, identity)  # first: a later run checks this process to see the trial is orphaned
        values = space.suggest(trial)
        rival = None
        if space.grid:
            trial.set_user_attr(GRID_POINT, dict(trial.params))  # claim first, then look: see _rival
            rival = _rival(trial)
        if rival is not None:
            # two workers raced for one grid point: this trial trains nothing
            trial.set_user_attr("duplicate_of", rival)
            raise optuna.TrialPruned(f"grid point already taken by trial {rival}")
        trial_cfg = cfg.with_values(values)
        run_dir = out_dir / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        epoch_key = f"val_{objective}"

        def report(record: dict) -> None:
            # per-epoch validation score -> the pruner; a hopeless trial stops here
            trial.report(float(record.get(epoch_key, record["val_macro_f1"])), record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {record['epoch']}")

        result = train(data_dir, run_dir, trial_cfg, quiet=quiet, dataset=dataset, callbacks=[report], overwrite=True,
                       origin=RunOrigin(f"mmsent search trial {trial.number}", facts={"params": values}))
        row = metric_row(result.metrics)
        for name, value in {**row, **result.timings, "best_epoch": result.metrics["best_epoch"]}.items():
            trial.set_user_attr(name, value)
        if row.get(objective) is None:
            raise MmsentError(f"unknown objective {objective!r}; use one of {', '.join(row)}")
        return float(row[objective])

    return run_trial


@dataclass
class SearchResult:
    rows: list[dict]
    best_config: Config | None
    best_value: float | None
    ran: int
    study_name: str
    storage: str  # as shown: the password masked
    dead: list[str] = field(default_factory=list)  # trials of dead workers this run marked failed
    requeued: int = 0  # failed (or yielded) grid points this run queued again
    running_elsewhere: int = 0  # trials other workers still train (their points are not in rows yet)


def trial_rows(study: optuna.Study, objective: str) -> list[dict]:
    """One row per finished or pruned trial, best objective first, pruned trials last.

    Running, queued and failed trials are left out (a failed point is trained again by a later trial),
    and so are raced duplicates, which trained nothing.
    """
    rows = []
    for t in study.get_trials(deepcopy=False, states=SHOWN):
        if "duplicate_of" in t.user_attrs:
            continue
        # Optuna gives a pruned trial its last epoch's score as value: keep that apart from finished runs
        value = t.value if t.state == TrialState.COMPLETE else None
        row = {"trial": t.number, "state": t.state.name.lower(), objective: value}
        row.update({k: v for k, v in t.params.items()})
        row.update({m: t.user_attrs.get(m) for m in METRICS if m != objective})
        for extra in ("best_epoch", "train_seconds", "total_seconds", "run_dir"):
            row[extra] = t.user_attrs.get(extra)
        if t.state == TrialState.PRUNED and t.intermediate_values:
            row["pruned_at_epoch"] = max(t.intermediate_values)
            row[f"pruned_{objective}"] = t.intermediate_values[row["pruned_at_epoch"]]
        rows.append(row)
    rows.sort(key=lambda r: (r[objective] is None, -(r[objective] or 0.0), r["trial"]))
    return rows


def run_search(
    data_dir: Path,
    out_dir: Path,
    cfg: Config,
    space: SearchSpace,
    command: str,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str = "mmsent-search",
    objective: str = "macro_f1",
    prune: bool = True,
    quiet: bool = True,
    show_progress: bool = False,
) -> SearchResult:
    """Run (or resume) a search; write trials/, results.csv/.md, search plots, best.yaml and experiment.json.

    A grid runs until every combination is done or in training (by this or another worker) or `trials`
    trials ran here; TPE needs `trials`. Trials left running by dead workers are failed first (see
    fail_dead_trials) and their points trained again, so a rerun after a kill completes the grid.
    show_progress: one outer line or bar per trial (quiet hides each trial's own bars).
    """
    if objective not in metric_row({}):
        raise MmsentError(f"unknown objective {objective!r}; use one of {', '.join(metric_row({}))}")
    if not space.grid and not trials:
        raise MmsentError("a search over ranges needs --trials N (a grid runs every combination)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    optuna.logging.set_verbosity(logging.WARNING)
    study = open_study(storage, study_name, space, prune, cfg.train.seed)
    dataset = load_training_data(Path(data_dir), cfg)
    run_trial = _objective_fn(Path(data_dir), out_dir, cfg, space, objective, quiet, dataset)
    ran, requeued, dead = 0, 0, []
    with Progress("trial", _trials_to_run(study, space, trials), quiet=not show_progress) as progress:
        while trials is None or ran < trials:
            # before the grid is read: a dead worker's trial holds its point until it is failed
            dead += fail_dead_trials(study)
            if space.grid:
                points_left, failed_point = _next_grid_point_to_enqueue(study, space)
                if not points_left:
                    break  # the grid is exhausted: completed trials are never rerun
                if failed_point is not None:
                    study.enqueue_trial(failed_point)
                    requeued += 1
            progress.step(f"#{len(study.trials)} of the study {study_name}")
            study.optimize(run_trial, n_trials=1, catch=())
            ran += 1
    rows = trial_rows(study, objective)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    running_elsewhere = sum("duplicate_of" not in t.user_attrs for t in running)
    best_cfg, best_value = None, None
    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if finished:
        best = max(finished, key=lambda t: t.value)
        best_cfg, best_value = cfg.with_values(space.params_to_values(best.params)), best.value
        save_config(best_cfg, out_dir / "best.yaml")
    write_table(rows, out_dir)
    _plots(rows, objective, space.keys(), out_dir)
    write_manifest(
        out_dir, "search", command, storage=shown_storage(storage), study_name=study_name, objective=objective,
        sampler="grid" if space.grid else "tpe", pruning=prune, trials=len(rows), best_value=best_value,
        space=space.grid or space.ranges,
    )
    return SearchResult(rows, best_cfg, best_value, ran, study_name, shown_storage(storage), dead, requeued,
                        running_elsewhere)


def _trials_to_run(study: optuna.Study, space: SearchSpace, trials: int | None) -> int | None:
    """How many trials this call will run at most: the grid points left, or --trials."""
    if not space.grid:
        return trials
    left = len(remaining_grid(study.get_trials(deepcopy=False), space, HELD))
    return left if trials is None else min(left, trials)


def _plots(rows: list[dict], objective: str, keys: list[str], out_dir: Path) -> None:
    from mmsent.reporting.experiment_plots import plot_search

    plot_search(rows, objective, keys, out_dir / "search_trials.png", out_dir / "search_params.png")
