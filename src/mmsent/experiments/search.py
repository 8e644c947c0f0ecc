"""Hyperparameter search with Optuna: a grid (GridSampler) or TPE over ranges, pruned, resumable, shareable."""

from __future__ import annotations

import itertools
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from mmsent.api import load_training_data, train
from mmsent.config import Config, read_yaml_mapping, save_config
from mmsent.engine.metrics import METRICS, metric_row
from mmsent.errors import MmsentError
from mmsent.run_folder import RunOrigin, write_manifest
from mmsent.tables import write_table

GRID_POINT = "grid_point"  # user attr: the point a running grid trial claims before it looks for rivals
HELD = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # a point done or in training
TAKEN = (*HELD, TrialState.WAITING)  # ... or queued


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


def remaining_grid(trials: list[optuna.trial.FrozenTrial], space: SearchSpace) -> list[dict[str, Any]]:
    """Grid points no trial has done, is running or has queued; failed (interrupted) points count as remaining."""
    taken = {_key(_trial_params(t)) for t in trials if t.state in TAKEN and "duplicate_of" not in t.user_attrs}
    return [p for p in space.grid_points() if _key(p) not in taken]


def _next_grid_point_to_enqueue(study: optuna.Study, space: SearchSpace) -> tuple[bool, dict[str, Any] | None]:
    """(grid has points left, a point the sampler will not pick by itself: one whose trial failed or yielded).

    Both answers come from one snapshot of the trials: another worker writes its trial's state between
    two reads, and mixing snapshots made a point that had just started look failed.
    """
    trials = study.get_trials(deepcopy=False)
    todo = remaining_grid(trials, space)
    if not todo:
        return False, None
    # the sampler counts a point as visited once a trial of it ended, also one that failed or yielded
    # to a rival: such a point must be queued explicitly
    sampled = {_key(_trial_params(t)) for t in trials if "grid_id" in t.system_attrs}
    return True, next((p for p in todo if _key(p) in sampled), None)


def open_study(storage: str, name: str, space: SearchSpace, prune: bool, seed: int, attempts: int = 5) -> optuna.Study:
    """Create the study or load it to resume (several workers may share it)."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=5) if prune else optuna.pruners.NopPruner()
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # heartbeats let a later worker mark trials of a killed worker as failed (and so redo them)
                rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180)
            return optuna.create_study(
                storage=rdb, study_name=name, direction="maximize", sampler=space.sampler(seed), pruner=pruner,
                load_if_exists=True,
            )
        except (optuna.exceptions.DuplicatedStudyError, OperationalError, IntegrityError):
            # two workers starting at once race to create the schema or the study: the loser retries and loads it
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


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
    def run_trial(trial: optuna.Trial) -> float:
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
    storage: str


def trial_rows(study: optuna.Study, objective: str) -> list[dict]:
    """One row per trial, best objective first, unfinished trials last."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs:
            continue  # a raced duplicate that trained nothing
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
) -> SearchResult:
    """Run (or resume) a search; write trials/, results.csv/.md, search plots, best.yaml and experiment.json.

    A grid runs until every combination is done (by this or another worker) or `trials` trials ran here;
    TPE needs `trials`.
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
    ran = 0
    while trials is None or ran < trials:
        if space.grid:
            points_left, failed_point = _next_grid_point_to_enqueue(study, space)
            if not points_left:
                break  # the grid is exhausted: completed trials are never rerun
            if failed_point is not None:
                study.enqueue_trial(failed_point)
        study.optimize(run_trial, n_trials=1, catch=())
        ran += 1
    rows = trial_rows(study, objective)
    best_cfg, best_value = None, None
    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if finished:
        best = max(finished, key=lambda t: t.value)
        best_cfg, best_value = cfg.with_values(space.params_to_values(best.params)), best.value
        save_config(best_cfg, out_dir / "best.yaml")
    write_table(rows, out_dir)
    _plots(rows, objective, space.keys(), out_dir)
    write_manifest(
        out_dir, "search", command, storage=storage, study_name=study_name, objective=objective,
        sampler="grid" if space.grid else "tpe", pruning=prune, trials=len(rows), best_value=best_value,
        space=space.grid or space.ranges,
    )
    return SearchResult(rows, best_cfg, best_value, ran, study_name, storage)


def _plots(rows: list[dict], objective: str, keys: list[str], out_dir: Path) -> None:
    from mmsent.reporting.experiment_plots import plot_search

    plot_search(rows, objective, keys, out_dir / "search_trials.png", out_dir / "search_params.png")
