"""Decisions tuned for an objective and calibrated probabilities, fitted on out-of-fold predictions.

The classifier's output is (log p + offsets) / temperature: offsets move the decision towards the
objective (macro-F1 lifts a rare class such as neutral; accuracy favours the frequent one), then one
temperature makes the resulting probabilities calibrated (lowest negative log-likelihood). Both are
fitted on predictions of posts the predicting model did not train on, never on the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmsent.engine.metrics import accuracy_and_macro_f1

OFFSET_GRID = np.round(np.arange(-2.0, 2.0001, 0.05), 4)


@dataclass(frozen=True)
class Decision:
    offsets: np.ndarray  # (C,), added to log-probabilities
    temperature: float
    objective: str
    fitted_on: int  # out-of-fold predictions used (0: not fitted)


def fit_offsets(y: np.ndarray, log_p: np.ndarray, objective: str, bootstraps: int = 0, seed: int = 0) -> np.ndarray:
    """Per-class offsets for the objective: one fit on (y, log p), or the mean of fits on bootstrap resamples.

    Bagging the fit (Breiman, 1996) steadies offsets whose objective is flat near its best.
    """
    if bootstraps == 0 or objective == "argmax":
        return fit_offsets_once(y, log_p, objective)
    rng = np.random.default_rng(seed)
    resamples = (rng.integers(0, len(y), len(y)) for _ in range(bootstraps))
    return np.mean([fit_offsets_once(y[idx], log_p[idx], objective) for idx in resamples], axis=0)


def fit_offsets_once(y: np.ndarray, log_p: np.ndarray, objective: str, passes: int = 3) -> np.ndarray:
    """Per-class offsets maximising the objective on (y, log p) by coordinate ascent on a fixed grid.

    The first class's offset stays 0 (only differences matter); ties keep the smaller move, so an
    objective that argmax already serves best leaves the offsets at 0.
    """
    n_classes = log_p.shape[1]
    offsets = np.zeros(n_classes)
    if objective == "argmax":
        return offsets

    def score(b: np.ndarray) -> float:
        accuracy, macro_f1 = accuracy_and_macro_f1(y, (log_p + b).argmax(axis=1), n_classes)
        return accuracy if objective == "accuracy" else macro_f1

    best = score(offsets)
    for _ in range(passes):
        improved = False
        for c in range(1, n_classes):
            for value in sorted(OFFSET_GRID, key=abs):
                trial = offsets.copy()
                trial[c] = value
                s = score(trial)
                if s > best + 1e-12:
                    best, offsets, improved = s, trial, True
        if not improved:
            break
    return offsets


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T)."""

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(y)), y].mean())

    # imported here, not at the top: only fitting needs it (see mmsent.engine.metrics)
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def fit_decision(
    y: np.ndarray, probs: np.ndarray, objective: str, calibrate: bool, bootstraps: int = 0, seed: int = 0
) -> Decision:
    """Offsets for the objective, then the temperature, from out-of-fold probabilities (N, C)."""
    log_p = np.log(np.clip(probs, 1e-12, 1.0))
    offsets = fit_offsets(y, log_p, objective, bootstraps, seed)
    temperature = fit_temperature(y, log_p + offsets) if calibrate else 1.0
    return Decision(offsets, temperature, objective, len(y))
