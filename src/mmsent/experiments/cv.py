"""`mmsent cv`: repeated stratified k-fold cross-validation on train.txt, the same folds for every candidate.

Folds keep duplicate groups (the same normalised text or image) on one side. In each fold a candidate
trains on the other folds, early-stopping on a split carved from its own training part, and predicts
the held-out fold: the held-out fold, the validation split of `mmsent train` and the test list play
no part in training. Means come with the corrected resampled t interval (Nadeau and Bengio, 2003),
which accounts for folds sharing their training data; every candidate after the first is also
compared with the first, fold by fold (paired differences).

Each finished fold's held-out probabilities are saved at once (candidates/NAME/folds/r0f1.npz, keyed by
the candidate's config and the fold's posts), so a run that was killed resumes where it stopped: run the
same command again. A fold whose key no longer matches is computed again.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsent import LABELS
from mmsent.config import Config, config_yaml
from mmsent.data.duplicates import duplicate_groups
from mmsent.data.guard import LeakError, find_leaks
from mmsent.data.records import DataSet, Record
from mmsent.data.splits import stratified_folds, stratified_split
from mmsent.engine.metrics import compute_metrics
from mmsent.errors import MmsentError
from mmsent.files import atomic_write_bytes, remove_tree
from mmsent.progress import Progress
from mmsent.run_folder import experiment_folder, write_manifest
from mmsent.stats import Interval, cv_interval
from mmsent.tables import markdown_table, write_table

# the scores of every fold, in table order: per-class F1 of each label, then the calibration error
SCORES = ["accuracy", "macro_f1", "weighted_f1"] + [f"f1_{label}" for label in LABELS] + ["ece"]
LOWER_IS_BETTER = {"ece"}


@dataclass(frozen=True)
class Fold:
    """One fold of one repeat: indices into the labelled records."""

    repeat: int
    fold: int
    train: np.ndarray
    held_out: np.ndarray

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.fold}"


@dataclass
class CVResult:
    out_dir: Path
    summary: list[dict]  # one row per candidate: mean and interval of each score
    folds: list[dict]  # one row per candidate and fold
    paired: list[dict]  # one row per candidate after the first and score: the paired difference
    markdown: str
    reused_folds: int = 0  # folds of an interrupted run of the same command, taken from their saved files


def make_folds(records: list[Record], k: int, repeats: int, seed: int) -> list[Fold]:
    """k stratified folds per repeat (seeds seed, seed + 1, ...); duplicate groups never straddle a fold."""
    if k < 2 or repeats < 1:
        raise MmsentError(f"cross-validation needs --folds >= 2 and --repeats >= 1 (got {k} and {repeats})")
    tags = [r.tag for r in records]
    smallest = min(tags.count(t) for t in set(tags))
    if smallest < k:
        raise MmsentError(f"{k} folds need at least {k} labelled posts per class; the smallest class has {smallest}")
    groups = duplicate_groups(records)
    return [
        Fold(r, f, train, held)
        for r in range(repeats)
        for f, (train, held) in enumerate(stratified_folds(tags, k, seed + r, groups))
    ]


def fold_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    metrics = compute_metrics(y, probs)
    return {
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "weighted_f1": metrics["weighted_f1"],
        **{f"f1_{label}": metrics["per_class"][label]["f1"] for label in LABELS}, "ece": metrics["ece"],
    }


def held_out_proba(cfg: Config, records: list[Record], fold: Fold, test_guids: list[str]) -> np.ndarray:
    """Probabilities (N_held_out, C) of the fold's held-out posts from a model that never saw them."""
    from mmsent.api import LoadedRun, fit_model

    part = [records[i] for i in fold.train]
    held = [records[i] for i in fold.held_out]
    if cfg.train.ensemble > 1:
        fit_part, stop_part = part, []  # each head early-stops on its own fold of the training part
    else:
        # early stopping on a split of the fold's training part (seeded by the fold, the same for every candidate)
        fit_idx, stop_idx = stratified_split([r.tag for r in part], cfg.data.val_fraction,
                                             1000 * fold.repeat + fold.fold, duplicate_groups(part))
        fit_part, stop_part = [part[i] for i in fit_idx], [part[i] for i in stop_idx]
    leaks = find_leaks(fit_part + stop_part, {"held-out fold": [r.guid for r in held], "test list": test_guids})
    if leaks:
        raise LeakError("cross-validation would leak:\n  " + "\n  ".join(leaks[:20]))
    fitted = fit_model(cfg, fit_part, stop_part, quiet=True)
    return LoadedRun(None, cfg, fitted.model).predict_proba(held, quiet=True)


def fold_key(cfg: Config, records: list[Record], fold: Fold) -> str:
    """What a fold's held-out probabilities depend on: the candidate's config and the fold's posts, both sides
    (guid, tag, text, image file size and time). The code is not in it: after changing it, pass --overwrite."""
    digest = hashlib.sha256(config_yaml(cfg).encode())
    for side, rows in (("train", fold.train), ("held_out", fold.held_out)):
        digest.update(f"\n{side}\n".encode())
        for i in rows:
            record = records[i]
            digest.update(f"{record.guid}\t{record.tag}\t{record.text}\t{_image_stamp(record)}\n".encode())
    return digest.hexdigest()


def _image_stamp(record: Record) -> str:
    if record.image_bytes is not None:
        return hashlib.sha256(record.image_bytes).hexdigest()
    try:
        stat = os.stat(record.image_path)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def save_fold(path: Path, key: str, probs: np.ndarray, seconds: float) -> None:
    """One finished fold's held-out probabilities (N_held_out, C), written whole or not at all."""
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), probs=probs.astype(np.float32), seconds=np.array(seconds))
    atomic_write_bytes(path, buffer.getvalue())


def load_fold(path: Path, key: str, n_held_out: int) -> tuple[np.ndarray, float] | None:
    """A saved fold's probabilities and seconds if it was made with this key; None if absent, stale or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) != key or saved["probs"].shape != (n_held_out, len(LABELS)):
                return None
            return saved["probs"], float(saved["seconds"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def cross_validate(
    name: str, cfg: Config, dataset: DataSet, folds: list[Fold], quiet: bool = True, progress: Progress | None = None,
    *, saved: Path,
) -> tuple[list[dict], np.ndarray, int]:
    """One row of scores per fold, the out-of-fold probabilities of every repeat (R, N, C), and how many folds
    were taken from `saved` (the folder where each fold is saved as soon as it is done)."""
    progress = progress or Progress("fold", len(folds), quiet=True)
    from mmsent.api import encode_labels

    records = dataset.train
    y = encode_labels(records)
    repeats = max(f.repeat for f in folds) + 1
    oof = np.full((repeats, len(records), len(LABELS)), np.nan, dtype=np.float32)
    rows = []
    reused = 0
    test_guids = [r.guid for r in dataset.test]
    for fold in folds:
        progress.step(f"{name}, {fold.name} (repeat {fold.repeat + 1}, fold {fold.fold + 1})")
        key, path = fold_key(cfg, records, fold), saved / f"{fold.name}.npz"
        earlier = load_fold(path, key, len(fold.held_out))
        if earlier is not None:
            probs, seconds = earlier
            reused += 1
        else:
            t0 = time.perf_counter()
            probs = held_out_proba(cfg, records, fold, test_guids)
            seconds = time.perf_counter() - t0
            save_fold(path, key, probs, seconds)
        oof[fold.repeat, fold.held_out] = probs
        rows.append({"candidate": name, "repeat": fold.repeat, "fold": fold.fold, "n_train": len(fold.train),
                     "n_held_out": len(fold.held_out), **fold_scores(y[fold.held_out], probs),
                     "seconds": round(seconds, 2)})
        how = "taken from the interrupted run" if earlier is not None else f"in {seconds:.1f} s"
        progress.note(f"cv {name} {fold.name}: macro-F1 {rows[-1]['macro_f1']:.4f}, "
                      f"accuracy {rows[-1]['accuracy']:.4f} {how}")
    return rows, oof, reused


def summary_row(name: str, rows: list[dict], ratio: float) -> dict:
    """Mean and corrected 95% interval of each score over the folds."""
    out: dict = {"candidate": name, "folds": len(rows)}
    for score in SCORES:
        interval = cv_interval([r[score] for r in rows], ratio)
        out[score] = interval.mean
        out[f"{score}_ci"] = f"[{interval.low:.4f}, {interval.high:.4f}]"
    out["seconds_per_fold"] = round(float(np.mean([r["seconds"] for r in rows])), 2)
    return out


def paired_rows(reference: str, name: str, ref_rows: list[dict], rows: list[dict], ratio: float) -> list[dict]:
    """candidate - reference, fold by fold, per score: mean difference, its corrected 95% interval, a verdict."""
    out = []
    for score in SCORES:
        diffs = [b[score] - a[score] for a, b in zip(ref_rows, rows, strict=True)]
        interval: Interval = cv_interval(diffs, ratio)
        higher, lower = ("better", "worse") if score not in LOWER_IS_BETTER else ("worse", "better")
        verdict = higher if interval.low > 0 else lower if interval.high < 0 else "within noise"
        out.append({"candidate": name, "reference": reference, "score": score, "difference": interval.mean,
                    "ci_low": interval.low, "ci_high": interval.high, "verdict": verdict})
    return out


def run_cv(
    data_dir: Path,
    out_dir: Path,
    candidates: dict[str, Config],
    command: str = "",
    folds: int = 5,
    repeats: int = 2,
    seed: int = 0,
    quiet: bool = True,
    overwrite: bool = False,
) -> CVResult:
    """Cross-validate every candidate on the same folds; write results, per-fold scores, paired differences, figure.

    An unfinished folder (a run that was killed) is resumed: its saved folds are reused where their config
    and posts are the same; overwrite starts from nothing.
    """
    from mmsent.api import load_training_data

    if not candidates:
        raise MmsentError("no candidate to cross-validate")
    first = next(iter(candidates.values()))
    with experiment_folder(Path(out_dir), "cv", overwrite) as out_dir:
        if overwrite:
            remove_tree(out_dir / "candidates")  # nothing of an earlier run is reused
        dataset = load_training_data(Path(data_dir), first)
        fold_list = make_folds(dataset.train, folds, repeats, seed)
        ratio = 1.0 / (folds - 1)  # n_held_out / n_train of a k-fold split
        fold_rows: dict[str, list[dict]] = {}
        reused = 0
        with Progress("fold", len(candidates) * len(fold_list), quiet) as progress:
            for name, cfg in candidates.items():
                folder = out_dir / "candidates" / name
                fold_rows[name], oof, taken = cross_validate(name, cfg, dataset, fold_list, quiet, progress,
                                                             saved=folder / "folds")
                reused += taken
                _write_candidate(folder, cfg, dataset.train, oof)
        names = list(candidates)
        _remove_other_candidates(out_dir / "candidates", names)
        summary = [summary_row(n, fold_rows[n], ratio) for n in names]
        paired = [row for n in names[1:] for row in paired_rows(names[0], n, fold_rows[names[0]], fold_rows[n], ratio)]
        all_folds = [row for n in names for row in fold_rows[n]]
        write_table(summary, out_dir)
        write_table(all_folds, out_dir, name="folds")
        if paired:
            write_table(paired, out_dir, name="paired")
        from mmsent.reporting.experiment_plots import plot_cv

        plot_cv(all_folds, paired, ["macro_f1", "accuracy", "weighted_f1", "f1_neutral"], out_dir / "cv.png")
        write_manifest(
            out_dir, "cv", command, folds=folds, repeats=repeats, seed=seed, n=len(dataset.train),
            duplicate_groups=int(len(set(duplicate_groups(dataset.train).tolist()))),
            candidates=list(candidates), reference=names[0], reused_folds=reused,
            interval="corrected resampled t (Nadeau and Bengio, 2003), 95%",
            fold_guids={f.name: [dataset.train[i].guid for i in f.held_out] for f in fold_list},
        )
    text = markdown_table(summary, ["candidate", "macro_f1", "macro_f1_ci", "accuracy", "accuracy_ci", "weighted_f1",
                                    "weighted_f1_ci", "f1_neutral", "f1_neutral_ci", "seconds_per_fold"])
    if paired:
        text += "\n" + markdown_table(paired, ["candidate", "reference", "score", "difference", "ci_low", "ci_high",
                                               "verdict"])
    return CVResult(out_dir, summary, all_folds, paired, text, reused)


def _remove_other_candidates(folder: Path, names: list[str]) -> None:
    """Candidate folders of an earlier, unfinished run of this experiment that this run does not have."""
    import shutil

    for path in folder.iterdir():
        if path.is_dir() and path.name not in names:
            shutil.rmtree(path)


def _write_candidate(folder: Path, cfg: Config, records: list[Record], oof: np.ndarray) -> None:
    """The candidate's config and its out-of-fold probabilities (one block of rows per repeat)."""
    from mmsent.config import save_config
    from mmsent.files import atomic_write_text
    from mmsent.tables import csv_text

    save_config(cfg, folder / "candidate.yaml")
    rows = [
        {"repeat": r, "guid": rec.guid, "tag": rec.tag, **{f"p_{lab}": f"{p:.6f}" for lab, p in zip(LABELS, oof[r, i])}}
        for r in range(oof.shape[0])
        for i, rec in enumerate(records)
    ]
    atomic_write_text(folder / "oof_predictions.csv", csv_text(rows))
