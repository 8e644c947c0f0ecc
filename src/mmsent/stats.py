"""Confidence intervals of means over seeds or folds: plain t intervals and the corrected resampled t of CV."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


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
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std * math.sqrt(factor))
    return Interval(mean, std, half)


def cv_interval(values: Sequence[float], test_train_ratio: float, confidence: float = 0.95) -> Interval:
    """The corrected resampled t interval (Nadeau and Bengio, 2003) of a mean over repeated k-fold scores."""
    return t_interval(values, confidence, variance_factor=1.0 / len(values) + test_train_ratio)
