"""Does the text inside the images help? OCR of every training image, probed on the folds of `mmsent cv`.

Usage: python benchmarks/ocr_text.py --data ../shared/mvsa [--ocr-cache FILE] [--processes 2]

Reads the text in each image of train.txt with RapidOCR (`pip install rapidocr-onnxruntime`; about 0.3 s per
image on one core, so 15-20 minutes for 3,600 images; the result is kept in --ocr-cache, outside the
repository, and reused), then compares, on the 5x2 folds `mmsent cv` uses (duplicate groups kept together),
logistic regressions (class-balanced, argmax) on the `best` preset's cached frozen features:

- `best_features`: the features of `best` (MiniLM, e5, EfficientNet-Lite0, VADER, lexicon);
- `plus_ocr`: those and a block for the OCR text (MiniLM embedding, VADER scores, has-text flag; zeros for
  images without text), at weight 1.0 and 0.4;
- `ocr_in_minilm`: MiniLM reads the tweet and the OCR text joined, in place of the tweet alone.

This is a probe of the features, not a `mmsent cv` run of a model (OCR is not an encoder of the toolkit):
the point is whether the OCR text carries anything the features miss. Results: a Markdown table on stdout
and benchmarks/results/ocr_text.json (means with the corrected resampled t interval, paired differences).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mmsent.api import encode_labels, extract_features, load_training_data
from mmsent.config import load_config
from mmsent.encoders import create_encoder
from mmsent.encoders.features import encode_records
from mmsent.experiments.cv import make_folds
from mmsent.stats import cv_interval

MIN_CONFIDENCE = 0.5  # RapidOCR's score below which a read box is dropped


def has_text(text: str) -> bool:
    """Whether OCR read anything worth a word (shorter reads are noise)."""
    return len(text.strip()) >= 3
OUT = Path(__file__).resolve().parent / "results" / "ocr_text.json"


def read_images(paths: list[str]) -> list[str]:
    """The text RapidOCR reads in each image (boxes joined by spaces), in a worker process."""
    from rapidocr_onnxruntime import RapidOCR

    # one thread per process, detection at 480 px (736 by default: 0.47 s per image instead of 0.3, the same words)
    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1, det_limit_side_len=480)
    texts = []
    for path in paths:
        boxes, _ = engine(path, use_cls=False)
        texts.append(" ".join(text for _, text, score in boxes or [] if float(score) >= MIN_CONFIDENCE))
    return texts


def ocr_texts(records, cache: Path, processes: int) -> dict[str, str]:
    """{guid: OCR text} for every record, reading only what the cache file lacks."""
    known = {}
    if cache.exists():
        known = {row["guid"]: row["text"] for row in map(json.loads, cache.read_text().splitlines())}
    todo = [r for r in records if r.guid not in known]
    if todo:
        chunks = [todo[i::processes * 8] for i in range(processes * 8)]
        cache.parent.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(processes) as pool, cache.open("a") as f:
            for chunk, texts in zip(chunks, pool.map(read_images, [[str(r.image_path) for r in c] for c in chunks])):
                for record, text in zip(chunk, texts):
                    known[record.guid] = text
                    f.write(json.dumps({"guid": record.guid, "text": text}) + "\n")
    return {r.guid: known[r.guid] for r in records}


def ocr_blocks(records, texts: dict[str, str], cfg) -> dict[str, np.ndarray]:
    """The OCR block (MiniLM of the OCR text, VADER, flag) and MiniLM of the tweet joined with its OCR text."""
    has = np.array([has_text(texts[r.guid]) for r in records], np.float32)[:, None]  # (N, 1)
    alone = [dataclasses.replace(r, text=texts[r.guid]) for r in records]
    joined = [dataclasses.replace(r, text=f"{r.text} | {texts[r.guid]}" if has[i, 0] else r.text)
              for i, r in enumerate(records)]
    minilm, vader = create_encoder("minilm"), create_encoder("vader")
    embedded = encode_records(minilm, alone, cfg, None, quiet=True)[0] * has  # (N, 384)
    scored = encode_records(vader, alone, cfg, None, quiet=True)[0] * has  # (N, 4)
    return {"ocr": np.hstack([embedded, scored, has]), "minilm_joined": encode_records(minilm, joined, cfg, None, quiet=True)[0]}


def probe(features: dict[str, np.ndarray], blocks: list[str], weights: dict[str, float], y: np.ndarray, fold) -> dict:
    """Class-balanced logistic regression on the standardised, weighted blocks: held-out scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    def design(rows_fit, rows):
        parts = []
        for b in blocks:
            scaler = StandardScaler().fit(features[b][rows_fit])
            parts.append(scaler.transform(features[b][rows]) * weights.get(b, 1.0))
        return np.hstack(parts)

    model = LogisticRegression(C=1.0 / (0.3 * len(fold.train)), class_weight="balanced", max_iter=300)
    model.fit(design(fold.train, fold.train), y[fold.train])
    pred = model.predict(design(fold.train, fold.held_out))
    truth = y[fold.held_out]
    return {"macro_f1": f1_score(truth, pred, average="macro"), "accuracy": accuracy_score(truth, pred),
            "weighted_f1": f1_score(truth, pred, average="weighted")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/mvsa"))
    parser.add_argument("--ocr-cache", type=Path, help="OCR texts (jsonl); default: the feature cache folder's ocr/")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    cfg = load_config(preset="best")
    records = load_training_data(args.data, cfg).train
    y = encode_labels(records)
    names = list(cfg.model.encoders)
    features, _ = extract_features({n: create_encoder(n) for n in names}, records, cfg, quiet=True)
    cache = args.ocr_cache or cfg.cache_path() / "ocr" / "train.jsonl"
    texts = ocr_texts(records, cache, args.processes)
    features.update(ocr_blocks(records, texts, cfg))
    weights = dict(cfg.model.feature_scale)
    candidates = {
        "best_features": (names, weights),
        "plus_ocr": (names + ["ocr"], weights),
        "plus_ocr_x0.4": (names + ["ocr"], {**weights, "ocr": 0.4}),
        "ocr_in_minilm": ([("minilm_joined" if n == "minilm" else n) for n in names],
                          {**weights, "minilm_joined": weights.get("minilm", 1.0)}),
    }
    folds = make_folds(records, 5, 2, 0)  # `mmsent cv`'s folds (its --seed defaults to 0)
    ratio = len(folds[0].held_out) / len(folds[0].train)
    scores = {name: [probe(features, blocks, w, y, f) for f in folds] for name, (blocks, w) in candidates.items()}
    rows = []
    with_text = sum(map(has_text, texts.values()))
    print(f"images with OCR text: {with_text} of {len(records)}\n")
    print("| candidate | macro-F1 [95% CI] | accuracy [95% CI] | weighted F1 [95% CI] | Δ macro-F1 vs best_features |")
    print("|---|---|---|---|---|")
    for name, folds_scores in scores.items():
        row = {"candidate": name}
        for score in ("macro_f1", "accuracy", "weighted_f1"):
            row[score] = cv_interval([s[score] for s in folds_scores], ratio)
        diff = cv_interval([s["macro_f1"] - r["macro_f1"] for s, r in zip(folds_scores, scores["best_features"])], ratio)
        delta = "reference" if name == "best_features" else diff.signed_text()
        print(f"| {name} | {row['macro_f1'].text()} | {row['accuracy'].text()} | {row['weighted_f1'].text()} | {delta} |")
        rows.append({"candidate": name, **{k: dataclasses.asdict(v) for k, v in row.items() if k != "candidate"},
                     "delta_macro_f1": dataclasses.asdict(diff)})
    args.out.write_text(json.dumps({"folds": len(folds), "n": len(records), "ocr_images": with_text, "rows": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
