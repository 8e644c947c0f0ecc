"""Ensembles of heads, cross-fitted: one run folder, one predict call; decisions and temperature from out-of-fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mmsent.api import load_run
from mmsent.cli import main
from mmsent.config import load_config
from mmsent.data.records import load_dataset
from mmsent.engine.decision import fit_decision, fit_offsets, fit_temperature
from mmsent.engine.metrics import expected_calibration_error
from mmsent.errors import ConfigError

FAST = ["--quiet", "--set", "model.encoders=[vader,efficientnet_lite0]", "--set", "train.epochs=8",
        "--set", "data.val_fraction=0.25"]


def test_offsets_lift_a_class_that_argmax_starves():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=600, p=[0.3, 0.1, 0.6])
    logits = rng.normal(size=(600, 3))
    logits[np.arange(600), y] += 1.0
    logits[:, 1] -= 1.5  # the rare class is under-predicted
    before = f1_score(y, logits.argmax(1), average="macro")
    offsets = fit_offsets(y, logits, "macro_f1")
    after = f1_score(y, (logits + offsets).argmax(1), average="macro")
    assert offsets[0] == 0 and offsets[1] > 0.5 and after > before + 0.05
    assert np.all(fit_offsets(y, logits, "argmax") == 0)



def test_bagged_offsets_are_seeded_and_steadier_than_one_fit():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=1500, p=[0.3, 0.1, 0.6])
    logits = rng.normal(size=(1500, 3))
    logits[np.arange(1500), y] += 1.0
    logits[:, 1] -= 1.5
    bagged = fit_offsets(y, logits, "macro_f1", bootstraps=16, seed=3)
    assert np.array_equal(bagged, fit_offsets(y, logits, "macro_f1", bootstraps=16, seed=3))
    assert bagged[0] == 0 and bagged[1] > 0.5  # lifts the starved class like a single fit
    # the same posts predicted by slightly different models (another training seed): bagged offsets move less
    jittered = [logits + np.random.default_rng(100 + s).normal(scale=0.1, size=logits.shape) for s in range(8)]
    single = np.std([fit_offsets(y, x, "macro_f1") for x in jittered], axis=0)
    steadier = np.std([fit_offsets(y, x, "macro_f1", bootstraps=16, seed=s) for s, x in enumerate(jittered)], axis=0)
    assert steadier[1] < single[1] / 1.5 and steadier[2] < single[2] / 1.5

def test_temperature_calibrates_overconfident_probabilities():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=2000)
    logits = rng.normal(size=(2000, 3))
    logits[np.arange(2000), y] += 1.0
    sharp = 4.0 * logits  # overconfident
    temperature = fit_temperature(y, sharp)
    assert 3.0 < temperature < 5.5

    def softmax(z):
        z = z - z.max(1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)

    assert expected_calibration_error(y, softmax(sharp / temperature)) < expected_calibration_error(y, softmax(sharp)) / 2
    decision = fit_decision(y, softmax(sharp), "argmax", calibrate=True)
    assert np.all(decision.offsets == 0) and decision.temperature == pytest.approx(temperature, rel=0.05)


def test_an_ensemble_needs_frozen_mode():
    with pytest.raises(ConfigError, match="it needs train.ensemble=1"):
        load_config(None, ["train.ensemble=3", "train.mode=finetune", "train.optimizer=adamw"])


def test_a_cross_fitted_ensemble_is_one_run(dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(dataset), "--out", str(run), "--set", "train.ensemble=3", *FAST]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["decision"]["heads"] == 3 and metrics["decision"]["rule"] == "macro_f1"
    assert metrics["decision"]["temperature"] > 0 and metrics["out_of_fold"]["n"] == metrics["n_train"]
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].endswith(",member") and {line.rsplit(",", 1)[1] for line in history[1:]} == {"0", "1", "2"}
    loaded = load_run(run)
    assert len(loaded.classifier.heads) == 3
    records = load_dataset(dataset).test
    probs = loaded.predict_proba(records, quiet=True)
    assert probs.shape == (len(records), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    out = tmp_path / "p.txt"
    assert main(["predict", "--run", str(run), "--data", str(dataset), "--guids",
                 str(dataset / "test_without_label.txt"), "--out", str(out), "--quiet"]) == 0
    tags = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    assert tags == [("negative", "neutral", "positive")[i] for i in probs.argmax(1)]  # the tag is the top probability


def test_accuracy_and_macro_f1_match_scikit_learn():
    from sklearn.metrics import accuracy_score

    from mmsent.engine.metrics import accuracy_and_macro_f1

    rng = np.random.default_rng(0)
    for n, classes in [(50, 3), (7, 3), (200, 4)]:
        y = rng.integers(0, classes, n)
        pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 2, n))  # class 2+ sometimes never predicted
        accuracy, macro_f1 = accuracy_and_macro_f1(y, pred, classes)
        assert accuracy == pytest.approx(accuracy_score(y, pred))
        assert macro_f1 == pytest.approx(f1_score(y, pred, labels=list(range(classes)), average="macro", zero_division=0))
