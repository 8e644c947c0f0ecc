"""Late fusion of two `mmsent cv` candidates from their stored out-of-fold probabilities: would B help A?

Usage: python benchmarks/blend_oof.py --data ../shared/mvsa --a runs/cv-models/candidates/best
       --b runs/cv-finetune/candidates/minilm_top2_finetuned [--weights 0.1,0.2,0.3,0.5]

Both cv runs must have used the same folds (folds and seed in their experiment.json, and the same data);
with different repeats, the repeats both ran are compared. For each weight w the held-out probabilities
are blended, (1 - w) * A + w * B, and each fold is scored by argmax; differences to A alone are paired
by fold, with the corrected resampled t interval of `mmsent cv`. No model is trained: it costs seconds, and says whether building the blend is worth it.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from mmsent import LABELS
from mmsent.api import encode_labels, load_training_data
from mmsent.config import Config
from mmsent.experiments.cv import make_folds
from mmsent.stats import cv_interval


def oof_probabilities(candidate: Path) -> dict[tuple[int, str], np.ndarray]:
    """{(repeat, guid): class probabilities} of a candidate's oof_predictions.csv."""
    with (candidate / "oof_predictions.csv").open(newline="") as f:
        return {(int(r["repeat"]), r["guid"]): np.array([float(r[f"p_{label}"]) for label in LABELS])
                for r in csv.DictReader(f)}


def fold_settings(candidate: Path) -> tuple[int, int, int]:
    """(folds, repeats, seed) of the cv run the candidate folder belongs to."""
    experiment = json.loads((candidate.parent.parent / "experiment.json").read_text())
    return experiment["folds"], experiment["repeats"], experiment["seed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--a", type=Path, required=True, help="the reference candidate folder of a cv run")
    parser.add_argument("--b", type=Path, required=True, help="the candidate blended in")
    parser.add_argument("--weights", default="0.1,0.2,0.3,0.5")
    args = parser.parse_args()

    (k, repeats_a, seed), (k_b, repeats_b, seed_b) = fold_settings(args.a), fold_settings(args.b)
    if (k, seed) != (k_b, seed_b):
        raise SystemExit(f"the two cv runs used other folds: {k} folds from seed {seed}, and {k_b} from seed {seed_b}")
    # repeat r's folds come from seed + r alone, so runs with more and fewer repeats share their first ones
    repeats = min(repeats_a, repeats_b)
    records = load_training_data(args.data, Config()).train
    folds = make_folds(records, k, repeats, seed)
    a, b = oof_probabilities(args.a), oof_probabilities(args.b)
    ratio = len(folds[0].held_out) / len(folds[0].train)

    y = encode_labels(records)

    def scores(w: float) -> list[tuple[float, float]]:
        out = []
        for fold in folds:
            keys = [(fold.repeat, records[i].guid) for i in fold.held_out]
            truth = y[fold.held_out]
            pred = np.stack([(1 - w) * a[k] + w * b[k] for k in keys]).argmax(1)
            out.append((f1_score(truth, pred, average="macro"), accuracy_score(truth, pred)))
        return out

    reference = scores(0.0)
    print(f"A = {args.a}, B = {args.b}, {len(folds)} folds ({k} x {repeats} repeats)\n")
    print("| weight of B | macro-F1 [95% CI] | accuracy [95% CI] | Δ macro-F1 vs A [95% CI] | Δ accuracy vs A [95% CI] |")
    print("|---|---|---|---|---|")
    for w in [0.0] + [float(x) for x in args.weights.split(",")]:
        s = scores(w)
        cells = [cv_interval([x[i] for x in s], ratio).text() for i in (0, 1)]
        deltas = [cv_interval([x[i] - r[i] for x, r in zip(s, reference)], ratio) for i in (0, 1)]
        diff = ["reference"] * 2 if w == 0 else [d.signed_text() for d in deltas]
        print(f"| {w:g} | {cells[0]} | {cells[1]} | {diff[0]} | {diff[1]} |")


if __name__ == "__main__":
    main()
