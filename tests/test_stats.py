"""The statistics of comparisons: the paired bootstrap over posts against scikit-learn's scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from mmsent.stats import bootstrap_se, confusion_counts, paired_bootstrap, resample_rows, scores_of


def predictions(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    wrong = rng.random(n) > accuracy
    return y, np.where(wrong, (y + rng.integers(1, 3, n)) % 3, y)


def test_scores_match_scikit_learn_including_an_absent_class():
    y, pred = predictions(200, 0.7, 0)
    pred[pred == 2] = 1  # class 2 is never predicted: its F1 is 0 and still counts in the mean
    matrix = confusion_counts(y, pred, 3)
    assert scores_of(matrix, "accuracy")[0] == pytest.approx(accuracy_score(y, pred))
    assert scores_of(matrix, "macro_f1")[0] == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro"))
    rows = resample_rows(len(y), 5, seed=1)
    for r, idx in enumerate(rows):  # each resample's matrix is that of its posts
        expected = f1_score(y[idx], pred[idx], labels=[0, 1, 2], average="macro", zero_division=0)
        assert scores_of(confusion_counts(y, pred, 3, rows), "macro_f1")[r] == pytest.approx(expected)


def test_identical_predictions_differ_by_exactly_nothing():
    y, pred = predictions(300, 0.7, 1)
    diff = paired_bootstrap(y, pred, pred.copy(), 3)
    assert (diff.difference, diff.low, diff.high) == (0.0, 0.0, 0.0) and diff.verdict() == "within noise"


def test_a_clearly_better_model_is_beyond_noise_and_a_tiny_change_is_not():
    y, weak = predictions(400, 0.55, 2)
    _, strong = predictions(400, 0.9, 2)  # same posts (same seed, same y), far more right
    diff = paired_bootstrap(y, weak, strong, 3, "accuracy")
    assert diff.difference == pytest.approx(accuracy_score(y, strong) - accuracy_score(y, weak))
    assert diff.low <= diff.difference <= diff.high and diff.verdict() == "better"
    assert paired_bootstrap(y, strong, weak, 3, "accuracy").verdict() == "worse"
    nudged = strong.copy()
    nudged[0] = (nudged[0] + 1) % 3  # one post changed: not a finding
    assert paired_bootstrap(y, strong, nudged, 3).verdict() == "within noise"


def test_bootstrap_is_seeded_and_pairing_narrows_the_interval():
    y, a = predictions(360, 0.7, 3)
    b = a.copy()
    flip = np.random.default_rng(4).random(len(y)) < 0.05
    b[flip] = y[flip]  # b fixes some of a's mistakes and nothing else
    first, again = paired_bootstrap(y, a, b, 3, seed=7), paired_bootstrap(y, a, b, 3, seed=7)
    assert first == again and first.resamples == 2000
    # the paired interval is much narrower than the spread of either score alone
    assert first.high - first.low < 2 * 1.96 * bootstrap_se(y, a, 3)
    assert bootstrap_se(y, a, 3, "accuracy") == pytest.approx(np.sqrt(0.7 * 0.3 / 360), rel=0.25)


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError):
        paired_bootstrap(np.array([0, 1]), np.array([0, 1]), np.array([0]), 3)
