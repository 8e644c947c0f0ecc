"""Out-of-fold bad-case mining on a run's training split, and the error analysis of the mistakes."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmsent import LABELS
from mmsent.config import Config
from mmsent.data.duplicates import duplicate_groups
from mmsent.data.guard import LeakError, find_leaks
from mmsent.data.records import DataSet, Record
from mmsent.data.splits import stratified_folds, stratified_split
from mmsent.data.text import text_attributes
from mmsent.engine.metrics import compute_metrics
from mmsent.errors import MmsentError
from mmsent.progress import Progress
from mmsent.run_folder import RunFolder, RunOrigin, experiment_folder, write_manifest
from mmsent.tables import write_table

PROB_COLUMNS = [f"p_{lab}" for lab in LABELS]
CASE_COLUMNS = [
    "guid", "tag", "pred", "correct", "confidence", *PROB_COLUMNS, "fold",
    "n_tokens", "has_emoji", "has_url", "is_retweet", "n_hashtags",
    "image_width", "image_height", "image_bytes", "text_fallback", "image_path", "text",
]
EMOTICON_RE = re.compile(r"(?:^|\s)[:;=8][-'^]?[)(\]\[DPpOo/\\|*]")  # :) ;-( :D ... (MVSA has no Unicode emoji)
TOKEN_BUCKETS = [(0, 5), (6, 10), (11, 15), (16, 20), (21, 10**9)]


@dataclass
class BadCaseResult:
    out_dir: Path
    n_train: int
    n_bad: int
    metrics: dict  # out-of-fold metrics over the whole training split
    fold_seconds: list[float]
    seconds: float


def mining_records(run: RunFolder, dataset: DataSet) -> tuple[list[Record], set[str]]:
    """The run's training records (original guids only) and the guids mining must never touch."""
    split = run.split()
    by_guid = {r.guid: r for r in dataset.train}
    # copies the run trained on (data.augment) are not mined: their guids are not in train.txt
    records = [by_guid[g] for g in split.train if g in by_guid]
    forbidden = set(split.val) | {r.guid for r in dataset.test}
    touched = sorted({r.guid for r in records} & forbidden)
    if touched:
        raise LeakError(f"{run.path}: training guids also in the validation split or test list: {touched[:10]}")
    if not records:
        raise MmsentError(f"{run.path}: none of its training guids is in {dataset.root}/train.txt (wrong --data?)")
    return records, forbidden


def inner_split(records: list[Record], cfg: Config, seed: int) -> tuple[list[Record], list[Record]]:
    """A stratified early-stopping split of a fold's training part (at least one guid per class)."""
    tags = [r.tag for r in records]
    fraction = max(cfg.data.val_fraction, len(set(tags)) / len(records))
    fit_idx, stop_idx = stratified_split(tags, fraction, seed, duplicate_groups(records))
    return [records[i] for i in fit_idx], [records[i] for i in stop_idx]


def out_of_fold_proba(
    records: list[Record], forbidden: set[str], cfg: Config, data_dir: Path, dataset: DataSet,
    folds_dir: Path, k: int, seed: int, quiet: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Probabilities (N, C) of each record from the fold model that never saw it, its fold (N,), seconds per fold."""
    from mmsent.api import train

    if k < 2:
        raise MmsentError(f"--folds must be at least 2 (got {k})")
    tags = [r.tag for r in records]
    smallest = min(tags.count(t) for t in set(tags))
    if smallest < k:
        raise MmsentError(f"{k} folds need at least {k} training guids per class; the smallest class has {smallest}")
    probs = np.zeros((len(records), len(LABELS)), dtype=np.float32)
    fold_of = np.full(len(records), -1, dtype=np.int64)
    seconds = []
    with Progress("fold", k, quiet) as progress:
        for fold, (fit_idx, out_idx) in enumerate(stratified_folds(tags, k, seed, duplicate_groups(records))):
            t0 = time.perf_counter()
            held_out = [records[i] for i in out_idx]
            fit_part, stop_part = inner_split([records[i] for i in fit_idx], cfg, seed + fold)
            progress.step(f"train on {len(fit_part)} (+{len(stop_part)} for early stopping), predict {len(held_out)}")
            # the fold model neither trains nor early-stops on what it will judge, nor on validation / test
            leaks = find_leaks(fit_part + stop_part,
                               {"held-out fold": [r.guid for r in held_out], "run's held-out data": forbidden})
            if leaks:
                raise LeakError("out-of-fold mining would leak:\n  " + "\n  ".join(leaks[:20]))
            result = train(data_dir, folds_dir / f"fold{fold}", cfg, quiet=True, dataset=dataset,
                           split=(fit_part, stop_part), overwrite=True,
                           origin=RunOrigin(f"mmsent badcases fold {fold + 1}/{k}"))
            probs[out_idx] = result.model.predict_proba(held_out, quiet=True)
            fold_of[out_idx] = fold
            seconds.append(time.perf_counter() - t0)
    return probs, fold_of, seconds


def image_info(path: Path) -> tuple[int, int, int]:
    """(width, height, file bytes) from the image header."""
    with Image.open(path) as img:
        width, height = img.size
    return width, height, path.stat().st_size


def case_rows(records: list[Record], probs: np.ndarray, fold_of: np.ndarray) -> list[dict]:
    """One row per record: prediction, probabilities, fold and the attributes of the error analysis."""
    rows = []
    for record, p, fold in zip(records, probs, fold_of, strict=True):
        width, height, size = image_info(record.image_path)
        pred = LABELS[int(p.argmax())]
        rows.append({
            "guid": record.guid, "tag": record.tag, "pred": pred, "correct": pred == record.tag,
            "confidence": round(float(p.max()), 6), **{c: round(float(x), 6) for c, x in zip(PROB_COLUMNS, p)},
            "fold": int(fold), **text_attributes(record.text),
            "image_width": width, "image_height": height, "image_bytes": size,
            # absolute: the path resolves wherever the table is read from (the report, another folder)
            "text_fallback": record.text_fallback, "image_path": str(Path(record.image_path).resolve()),
            "text": " ".join(record.text.split()),
        })
    return rows


def wilson(errors: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of an error rate, so that small buckets show their uncertainty."""
    if n == 0:
        return 0.0, 0.0
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the interval always holds p; at p = 0 or 1 rounding would put the bound a hair past it
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def token_bucket(row: dict) -> str:
    for lo, hi in TOKEN_BUCKETS:
        if lo <= int(row["n_tokens"]) <= hi:
            return f"{lo}-{hi} tokens" if hi < 10**9 else f">={lo} tokens"
    return "?"


def quartile_buckets(values: list[float], unit: str) -> tuple[Callable[[float], str], list[str]]:
    """Buckets at the quartiles of the values (edges from the data) and their labels in order."""
    edges = [int(e) for e in np.unique(np.quantile(values, [0.25, 0.5, 0.75]))] if values else []
    lows = [0] + [e + 1 for e in edges]
    labels = [f"{hi} {unit}" if lo == hi else f"{lo}-{hi} {unit}" for lo, hi in zip(lows, edges)]
    labels.append(f">={lows[-1]} {unit}")

    def bucket(value: float) -> str:
        return labels[int(np.searchsorted(edges, value, side="left"))]

    return bucket, labels


def long_side(row: dict) -> int:
    return max(int(row["image_width"]), int(row["image_height"]))


def file_kb(row: dict) -> int:
    return int(row["image_bytes"]) // 1024


def error_table(rows: list[dict]) -> list[dict]:
    """Error rate, count and 95% interval per bucket of each analysed attribute."""
    side_bucket, side_labels = quartile_buckets([long_side(r) for r in rows], "px")
    kb_bucket, kb_labels = quartile_buckets([file_kb(r) for r in rows], "KB")
    factors: list[tuple[str, Callable[[dict], str], list[str]]] = [
        ("text length", token_bucket, [token_bucket({"n_tokens": lo}) for lo, _ in TOKEN_BUCKETS]),
        ("emoji", lambda r: "emoji" if r["has_emoji"] else "no emoji", ["no emoji", "emoji"]),
        ("url", lambda r: "url" if r["has_url"] else "no url", ["no url", "url"]),
        ("retweet", lambda r: "retweet" if r["is_retweet"] else "not retweet", ["not retweet", "retweet"]),
        ("gb18030 fallback", lambda r: "fallback" if r["text_fallback"] else "utf-8", ["utf-8", "fallback"]),
        ("emoticon", lambda r: "emoticon" if EMOTICON_RE.search(r["text"]) else "no emoticon",
         ["no emoticon", "emoticon"]),
        ("image size", lambda r: side_bucket(long_side(r)), side_labels),
        ("image file size", lambda r: kb_bucket(file_kb(r)), kb_labels),
        ("true class", lambda r: r["tag"], list(LABELS)),
    ]
    table = []
    for factor, bucket_of, order in factors:
        groups: dict[str, list[bool]] = {}
        for row in rows:
            groups.setdefault(bucket_of(row), []).append(not row["correct"])
        for bucket in [b for b in order if b in groups]:
            n, errors = len(groups[bucket]), sum(groups[bucket])
            low, high = wilson(errors, n)
            table.append({"factor": factor, "bucket": bucket, "n": n, "errors": errors,
                          "error_rate": errors / n, "ci_low": low, "ci_high": high})
    return table


def confusion_rows(rows: list[dict]) -> tuple[list[dict], list[list[int]]]:
    """Per true class: count, error rate and where its guids were predicted; and the matrix."""
    matrix = [[sum(1 for r in rows if r["tag"] == t and r["pred"] == p) for p in LABELS] for t in LABELS]
    table = []
    for t, counts in zip(LABELS, matrix):
        n = sum(counts)
        table.append({"true": t, "n": n, "errors": n - counts[LABELS.index(t)],
                      "error_rate": (n - counts[LABELS.index(t)]) / n if n else 0.0,
                      **{f"pred_{p}": c for p, c in zip(LABELS, counts)}})
    return table, matrix


def write_analysis(rows: list[dict], out_dir: Path) -> tuple[list[dict], list[str]]:
    """results.csv/md (error rate by bucket), confusion.csv/md and the figures; the sentences of figures left out."""
    from mmsent.reporting.error_plots import plot_error_rates
    from mmsent.reporting.plots import plot_confusion

    table = error_table(rows)
    write_table(table, out_dir)
    conf_table, matrix = confusion_rows(rows)
    write_table(conf_table, out_dir, name="confusion")
    overall = sum(not r["correct"] for r in rows) / max(len(rows), 1)
    skipped = []
    for factor, name in [("text length", "text_length"), ("emoji", "emoji"), ("emoticon", "emoticon"),
                         ("image size", "image_size"), ("image file size", "image_file_size"), ("true class", "true_class")]:
        buckets = [r for r in table if r["factor"] == factor]
        if len(buckets) < 2:  # one bar compares nothing
            only = f" ({buckets[0]['bucket']}, n={buckets[0]['n']})" if buckets else ""
            skipped.append(f"No figure of the error rate by {factor}: every post falls in one bucket{only}.")
            continue
        plot_error_rates(buckets, f"Error rate by {factor}", out_dir / f"error_by_{name}.png", overall)
    plot_confusion(matrix, LABELS, out_dir / "confusion.png")
    return table, skipped


def mine_bad_cases(
    run_dir: Path, data_dir: Path, out_dir: Path, folds: int = 5, seed: int | None = None,
    quiet: bool = False, command: str = "", overwrite: bool = False,
) -> BadCaseResult:
    """Mine the mistakes of out-of-fold models on the run's training split; validation and test stay untouched."""
    from mmsent.api import encode_labels, load_training_data

    t0 = time.perf_counter()
    run = RunFolder.open(run_dir)
    # fold models see original guids only: a copy of a held-out guid would leak
    cfg = run.config().with_values({"data.augment": []})
    seed = cfg.data.split_seed if seed is None else seed
    with experiment_folder(Path(out_dir), "badcases", overwrite) as out_dir:
        dataset = load_training_data(Path(data_dir), cfg)
        records, forbidden = mining_records(run, dataset)
        probs, fold_of, fold_seconds = out_of_fold_proba(
            records, forbidden, cfg, Path(data_dir), dataset, out_dir / "folds", folds, seed, quiet
        )
        rows = case_rows(records, probs, fold_of)
        bad = sorted((r for r in rows if not r["correct"]), key=lambda r: -r["confidence"])  # most confident first
        write_table(rows, out_dir, name="oof_predictions", columns=CASE_COLUMNS)
        write_table(bad, out_dir, name="bad_cases", columns=CASE_COLUMNS)
        _, skipped_figures = write_analysis(rows, out_dir)
        metrics = compute_metrics(encode_labels(records), probs)
        seconds = time.perf_counter() - t0
        write_manifest(
            out_dir, "badcases", command, run=str(run_dir), data=str(Path(data_dir).resolve()), folds=folds, seed=seed,
            n_train=len(records), n_bad=len(bad), oof_accuracy=metrics["accuracy"], oof_macro_f1=metrics["macro_f1"],
            fold_seconds=[round(s, 2) for s in fold_seconds], seconds=round(seconds, 2), notes=skipped_figures,
        )
    return BadCaseResult(out_dir, len(records), len(bad), metrics, fold_seconds, seconds)
