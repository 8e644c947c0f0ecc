"""Whether a row of a comparison differs from its reference row beyond noise, on the same validation posts.

Every row of compare, variants, ablation and retrain is scored on the same validation posts, so the
difference to the reference row has a paired bootstrap interval: resample the posts, score both
models on each resample (seeded, `stats.BOOTSTRAP_RESAMPLES` times), keep the middle 95% of the
differences. A difference is beyond noise when its interval excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsent import LABELS
from mmsent.data.records import Record
from mmsent.run_folder import RunFolder
from mmsent.stats import BOOTSTRAP_RESAMPLES, PairedDifference, paired_bootstrap

SEED = 0
SCORES = (("macro_f1", "macro-F1"), ("accuracy", "accuracy"))
DELTA_COLUMNS = ["delta_macro_f1", "delta_macro_f1_ci", "delta_accuracy", "delta_accuracy_ci", "vs_reference"]


@dataclass(frozen=True)
class Predictions:
    """One model's predicted classes for labelled posts (indices into LABELS)."""

    guids: tuple[str, ...]
    y: np.ndarray
    pred: np.ndarray


def from_probs(records: list[Record], probs: np.ndarray) -> Predictions:
    y = np.array([LABELS.index(r.tag) for r in records], dtype=np.int64)
    return Predictions(tuple(r.guid for r in records), y, np.asarray(probs).argmax(axis=1))


def from_run(run_dir: Path) -> Predictions:
    """The run's predictions on its validation split, from its val_predictions.csv."""
    rows = RunFolder.open(run_dir).val_prediction_rows()
    return Predictions(tuple(r["guid"] for r in rows), np.array([LABELS.index(r["tag"]) for r in rows], dtype=np.int64),
                       np.array([LABELS.index(r["pred"]) for r in rows], dtype=np.int64))


def differences(reference: Predictions, other: Predictions) -> list[PairedDifference] | None:
    """other - reference per score, or None when they were not scored on the same posts (not paired)."""
    if reference.guids != other.guids or not np.array_equal(reference.y, other.y) or not reference.guids:
        return None
    return [paired_bootstrap(reference.y, reference.pred, other.pred, len(LABELS), score, BOOTSTRAP_RESAMPLES, SEED)
            for score, _ in SCORES]


def verdict(diffs: list[PairedDifference]) -> str:
    """Within noise, or which scores differ and how (e.g. "macro-F1 worse, accuracy worse")."""
    beyond = [f"{label} {d.verdict()}" for d, (_, label) in zip(diffs, SCORES, strict=True) if d.verdict() != "within noise"]
    return ", ".join(beyond) or "within noise"


def delta_columns(reference: Predictions | None, other: Predictions | None, is_reference: bool = False) -> dict:
    """The difference columns of one row against the reference row (DELTA_COLUMNS)."""
    if is_reference:
        return {"vs_reference": "reference"}
    diffs = differences(reference, other) if reference is not None and other is not None else None
    if diffs is None:
        return {"vs_reference": "not paired (other validation posts)"}
    columns: dict = {}
    for d in diffs:
        columns[f"delta_{d.score}"] = d.difference
        columns[f"delta_{d.score}_ci"] = d.interval_text()
    return {**columns, "vs_reference": verdict(diffs)}


def drop_columns(clean: Predictions, perturbed: Predictions) -> dict:
    """Robustness: the interval of the drop in macro-F1 (clean - perturbed) and whether it is beyond noise."""
    diff = differences(clean, perturbed)[0]
    return {"drop_macro_f1_ci": f"[{-diff.high:+.4f}, {-diff.low:+.4f}]", "vs_clean": diff.verdict()}


def note(reference: str, n: int) -> str:
    """What the difference columns mean, for results.md and the manifest."""
    return (f"Differences to {reference} are on the same {n} validation posts, each with its 95% paired bootstrap "
            f"interval ({BOOTSTRAP_RESAMPLES:,} resamples of the posts, seed {SEED}); a difference is beyond noise "
            "when its interval excludes 0.")
