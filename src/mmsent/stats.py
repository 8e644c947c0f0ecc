"""Confidence intervals: t intervals of means over seeds or folds (corrected for CV) and paired bootstraps over posts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean with its standard deviation and the half-width of its confidence interval."""

    mean: float
    std: float
    half_width: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 4) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def signed_text(self, digits: int = 4) -> str:
        """A difference: "+0.0011 [-0.0095, +0.0116]"."""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def t_interval(values: Sequence[float], confidence: float = 0.95, variance_factor: float | None = None) -> Interval:
    """Mean, sample std and the t-distribution confidence interval of the mean.

    variance_factor replaces 1/n in the variance of the mean (the corrected resampled t uses
    1/n + n_test/n_train, because cross-validation folds share training data and are not independent).
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, 0.0, float("nan"))
    std = float(x.std(ddof=1))
    factor = 1.0 / n if variance_factor is None else variance_factor
    from scipy import stats  # here, not at the top: importing it takes most of a second (see mmsent.engine.metrics)

    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std * math.sqrt(factor))
    return Interval(mean, std, half)


def cv_interval(values: Sequence[float], test_train_ratio: float, confidence: float = 0.95) -> Interval:
    """The corrected resampled t interval (Nadeau and Bengio, 2003) of a mean over repeated k-fold scores."""
    return t_interval(values, confidence, variance_factor=1.0 / len(values) + test_train_ratio)


# ---- paired bootstrap over posts: two models scored on the same labelled posts ----

BOOTSTRAP_RESAMPLES = 2000
SCORES = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class PairedDifference:
    """score(b) - score(a) on the same posts, with its percentile bootstrap interval."""

    score: str
    difference: float
    low: float
    high: float
    resamples: int

    def verdict(self) -> str:
        """Better or worse when the interval excludes zero, else within noise (higher scores are better)."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "within noise"

    def interval_text(self, digits: int = 4) -> str:
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def confusion_counts(y: np.ndarray, pred: np.ndarray, n_classes: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Confusion matrices (R, C, C) of the resamples `rows` (R, n) of the posts; one matrix of all posts if None."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    rows = np.arange(len(y))[None, :] if rows is None else rows
    codes = y[rows] * n_classes + pred[rows] + (np.arange(len(rows)) * n_classes * n_classes)[:, None]
    counts = np.bincount(codes.ravel(), minlength=len(rows) * n_classes * n_classes)
    return counts.reshape(len(rows), n_classes, n_classes)


def scores_of(confusion: np.ndarray, score: str) -> np.ndarray:
    """Accuracy or macro-F1 (every class counted, 0 for a class never true nor predicted) per matrix (R, C, C)."""
    tp = np.diagonal(confusion, axis1=1, axis2=2).astype(float)
    total = confusion.sum(axis=(1, 2))
    if score == "accuracy":
        return tp.sum(axis=1) / np.maximum(total, 1)
    if score == "macro_f1":
        true, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
        f1 = np.divide(2 * tp, true + predicted, out=np.zeros_like(tp), where=(true + predicted) > 0)
        return f1.mean(axis=1)
    raise ValueError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")


def resample_rows(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Indices (resamples, n) of posts drawn with replacement, the same for every pair compared with this seed."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def paired_bootstrap(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int, score: str = "macro_f1",
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, confidence: float = 0.95,
) -> PairedDifference:
    """score(pred_b) - score(pred_a) with a percentile interval from resampling the posts (the pairs kept together).

    Both models are scored on each resample of the same posts, so what they share (easy and hard posts)
    cancels: the interval is that of the difference, narrower than comparing two separate intervals.
    """
    y = np.asarray(y)
    if not len(y) == len(pred_a) == len(pred_b) or not len(y):
        raise ValueError("a paired bootstrap needs the same, non-empty posts for both models")
    rows = resample_rows(len(y), resamples, seed)
    a = scores_of(confusion_counts(y, pred_a, n_classes, rows), score)
    b = scores_of(confusion_counts(y, pred_b, n_classes, rows), score)
    full = scores_of(confusion_counts(y, pred_b, n_classes), score) - scores_of(confusion_counts(y, pred_a, n_classes), score)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(b - a, [tail, 100 - tail])
    return PairedDifference(score, float(full[0]), float(low), float(high), resamples)


def bootstrap_se(y: np.ndarray, pred: np.ndarray, n_classes: int, score: str = "macro_f1",
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """The standard error of one model's score on these posts: the spread of its score over resamples."""
    rows = resample_rows(len(y), resamples, seed)
    return float(scores_of(confusion_counts(y, pred, n_classes, rows), score).std(ddof=1))
