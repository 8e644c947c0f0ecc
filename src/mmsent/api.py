"""The library's workflows: train, evaluate, predict and the end-to-end run; the CLI only calls these."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmsent import LABELS
from mmsent.config import Config
from mmsent.data.guard import check_no_leak
from mmsent.data.labels import write_label_file
from mmsent.data.records import TEST_LIST, DataSet, Record, load_dataset, load_records, require_data_dir
from mmsent.data.splits import stratified_split
from mmsent.encoders import Encoder, create_encoder
from mmsent.encoders.features import EncodeStats, encode_records
from mmsent.engine.checkpoint import build_classifier, load_checkpoint, save_checkpoint
from mmsent.engine.losses import make_loss
from mmsent.engine.metrics import compute_metrics
from mmsent.engine.trainer import EpochCallback, FeatureBatches, FitResult, fit, predict_proba, seed_everything
from mmsent.errors import DataError, MmsentError
from mmsent.model import FusionClassifier

LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}


def encode_labels(records: list[Record]) -> np.ndarray:
    return np.array([LABEL_INDEX[r.tag] for r in records], dtype=np.int64)


def apply_runtime(cfg: Config) -> None:
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)


def build_encoders(cfg: Config) -> dict[str, Encoder]:
    """Create every encoder of the config by name, with its options."""
    return {name: create_encoder(name, **cfg.model.encoder_options.get(name, {})) for name in cfg.model.encoders}


def extract_features(
    encoders: dict[str, Encoder], records: list[Record], cfg: Config, quiet: bool = False, use_cache: bool = True
) -> tuple[dict[str, np.ndarray], list[EncodeStats]]:
    """{encoder: (N, D)} for records, through the feature cache unless use_cache is False."""
    features, stats = {}, []
    cache_root = cfg.cache_path() if use_cache else None
    for name, encoder in encoders.items():
        features[name], stat = encode_records(encoder, records, cfg, cache_root, quiet=quiet)
        stats.append(stat)
    return features, stats


def _subset(features: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in features.items()}


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    fit: FitResult
    train_guids: list[str]
    val_guids: list[str]
    timings: dict = field(default_factory=dict)


def write_history(history: list[dict], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def write_probabilities(records: list[Record], probs: np.ndarray, path: Path) -> None:
    """guid, true tag (if any), predicted tag and each class probability."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["guid", "tag", "pred", *[f"p_{lab}" for lab in LABELS]])
        for record, p in zip(records, probs, strict=True):
            writer.writerow([record.guid, record.tag or "", LABELS[int(p.argmax())], *[f"{x:.6f}" for x in p]])


def write_run_plots(run_dir: Path, history: list[dict], best_epoch: int, y: np.ndarray, probs: np.ndarray, metrics: dict) -> None:
    from mmsent.reporting.plots import plot_confusion, plot_history, plot_roc

    plots = run_dir / "plots"
    plot_history(history, plots / "curves.png", best_epoch)
    plot_confusion(metrics["confusion_matrix"], LABELS, plots / "confusion.png")
    plot_roc(y, probs, LABELS, plots / "roc.png")


def split_records(records: list[Record], cfg: Config) -> tuple[list[Record], list[Record]]:
    """The stratified train / validation split fixed by data.split_seed."""
    train_idx, val_idx = stratified_split([r.tag for r in records], cfg.data.val_fraction, cfg.data.split_seed)
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


def load_training_data(data_dir: Path, cfg: Config) -> DataSet:
    return load_dataset(Path(data_dir), on_error=cfg.data.on_error, max_pixels=cfg.data.max_image_pixels)


def train(
    data_dir: Path,
    out_dir: Path,
    cfg: Config,
    quiet: bool = False,
    dataset: DataSet | None = None,
    split: tuple[list[Record], list[Record]] | None = None,
    extra_train: list[Record] | None = None,
    callbacks: list[EpochCallback] | None = None,
) -> TrainResult:
    """Train a model and write the complete run folder to out_dir.

    By default the train list of data_dir is split by data.val_fraction / data.split_seed;
    `split` gives explicit (train, validation) records instead (k-fold mining), and
    `extra_train` adds records (augmented copies) to training. The leak guard checks all of it.
    `callbacks` see each epoch's record (a search's pruner raises from one to stop a trial).
    """
    t_start = time.perf_counter()
    apply_runtime(cfg)
    seed_everything(cfg.train.seed)
    dataset = dataset or load_training_data(data_dir, cfg)
    train_records, val_records = split if split is not None else split_records(dataset.train, cfg)
    train_records = list(train_records) + list(extra_train or [])
    check_no_leak(train_records, val_records, [r.guid for r in dataset.test])
    if len({r.tag for r in train_records}) < 2:
        raise MmsentError(f"{data_dir}: training needs at least two classes in train.txt")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dataset.skipped:
        dataset.write_skipped(out_dir / "skipped.json")

    t_enc = time.perf_counter()
    encoders = build_encoders(cfg)
    for encoder in encoders.values():
        encoder.fit(train_records, cfg)  # stateful encoders learn from the training split only
    feats, stats = extract_features(encoders, train_records + val_records, cfg, quiet)
    encode_seconds = time.perf_counter() - t_enc
    n_train = len(train_records)
    train_feats = _subset(feats, np.arange(n_train))
    val_feats = _subset(feats, np.arange(n_train, n_train + len(val_records)))
    y_train, y_val = encode_labels(train_records), encode_labels(val_records)

    seed_everything(cfg.train.seed)
    classifier = build_classifier(
        cfg, {n: e.dim for n, e in encoders.items()}, {n: e.modality for n, e in encoders.items()}
    )
    classifier.fit_scaler(train_feats)
    loss_fn = make_loss(cfg.train.class_weights, y_train, len(LABELS), cfg.train.label_smoothing)
    train_batches = FeatureBatches(train_feats, y_train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed)
    val_batches = FeatureBatches(val_feats, y_val, 1024, shuffle=False)
    result = fit(classifier, train_batches, val_batches, loss_fn, cfg.train, callbacks=callbacks, quiet=quiet)

    probs, _, _ = predict_proba(classifier, val_batches)
    metrics = compute_metrics(y_val, probs)
    timings = {
        "encode_seconds": round(encode_seconds, 2),
        "train_seconds": round(result.seconds, 2),
        "total_seconds": round(time.perf_counter() - t_start, 2),
    }
    metrics.update(
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        n_train=n_train,
        n_val=len(val_records),
        parameters=sum(p.numel() for p in classifier.parameters()),
        encoder_cache={s.encoder: {"cached": s.cached, "computed": s.computed} for s in stats},
        **timings,
    )
    encoder_state = {n: e.extra_state_dict() for n, e in encoders.items() if e.extra_state_dict()}
    save_checkpoint(out_dir, cfg, classifier, encoder_state)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (out_dir / "split.json").write_text(
        json.dumps({"train": [r.guid for r in train_records], "val": [r.guid for r in val_records]}), encoding="utf-8"
    )
    write_history(result.history, out_dir / "history.csv")
    write_probabilities(val_records, probs, out_dir / "val_predictions.csv")
    write_run_plots(out_dir, result.history, result.best_epoch, y_val, probs, metrics)
    return TrainResult(out_dir, metrics, result, [r.guid for r in train_records], [r.guid for r in val_records], timings)


@dataclass
class LoadedRun:
    """A trained run ready to predict: its config, encoders and fusion classifier."""

    run_dir: Path
    cfg: Config
    classifier: FusionClassifier
    encoders: dict[str, Encoder]

    def features(self, records: list[Record], quiet: bool = False, use_cache: bool = True) -> dict[str, np.ndarray]:
        """{encoder: (N, D)} for records (cached unless use_cache is False, e.g. for perturbed inputs)."""
        feats, _ = extract_features(self.encoders, records, self.cfg, quiet, use_cache)
        return feats

    def predict_features(self, feats: dict[str, np.ndarray], drop: frozenset[str] = frozenset()) -> np.ndarray:
        """Probabilities (N, C) from features; modalities in `drop` are blanked (set to the training mean)."""
        n = len(next(iter(feats.values())))
        if n == 0:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        self.classifier.drop_modalities = frozenset(drop)
        try:
            probs, _, _ = predict_proba(self.classifier, FeatureBatches(feats, np.full(n, -1), 1024, shuffle=False))
        finally:
            self.classifier.drop_modalities = frozenset()
        return probs

    def predict_proba(self, records: list[Record], quiet: bool = False, drop: frozenset[str] = frozenset()) -> np.ndarray:
        """Class probabilities (N, C) in LABELS order."""
        if not records:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        return self.predict_features(self.features(records, quiet), drop)


def load_run(run_dir: Path) -> LoadedRun:
    """Rebuild a trained run from its folder; nothing else is needed."""
    cfg, classifier, encoder_state = load_checkpoint(Path(run_dir))
    apply_runtime(cfg)
    encoders = build_encoders(cfg)
    for name, state in encoder_state.items():
        encoders[name].load_extra_state_dict(state)
    for name, encoder in encoders.items():
        if encoder.dim != classifier.encoder_dims.get(name):
            raise MmsentError(
                f"{run_dir}: encoder {name!r} gives {encoder.dim}-d features, the checkpoint expects "
                f"{classifier.encoder_dims.get(name)}"
            )
    return LoadedRun(Path(run_dir), cfg, classifier, encoders)


def _load_list(data_dir: Path, list_file: Path, labelled: bool, on_error: str, max_pixels: int) -> tuple[list[Record], list]:
    records, problems = load_records(require_data_dir(Path(data_dir)), Path(list_file), labelled, max_pixels)
    fatal = [p for p in problems if p.guid is None]
    if fatal or (problems and on_error != "skip"):
        raise DataError(problems, "" if fatal else "Fix these files, or pass --on-error skip to leave these guids out.")
    return records, problems


def evaluate(run_dir: Path, data_dir: Path, labels_file: Path, quiet: bool = False, on_error: str = "fail") -> dict:
    """Metrics of a trained run on the labelled guids of labels_file."""
    run = load_run(run_dir)
    records, problems = _load_list(data_dir, labels_file, True, on_error, run.cfg.data.max_image_pixels)
    if not records:
        raise MmsentError(f"{labels_file}: no labelled guid to evaluate")
    probs = run.predict_proba(records, quiet)
    metrics = compute_metrics(encode_labels(records), probs)
    if problems:
        metrics["skipped"] = [p.line() for p in problems]
    return metrics


def predict(
    run_dir: Path, data_dir: Path, guids_file: Path, out_file: Path, quiet: bool = False, on_error: str = "fail"
) -> list[tuple[str, str]]:
    """Write `guid,tag` for every guid of guids_file, in its order, atomically."""
    run = load_run(run_dir)
    records, problems = _load_list(data_dir, guids_file, False, on_error, run.cfg.data.max_image_pixels)
    probs = run.predict_proba(records, quiet)
    rows = [(r.guid, LABELS[int(p.argmax())]) for r, p in zip(records, probs, strict=True)]
    write_label_file(Path(out_file), rows)
    if problems:
        skipped = Path(out_file).with_suffix(".skipped.json")
        skipped.write_text(json.dumps([{"guid": p.guid, "path": p.path, "reason": p.reason} for p in problems], indent=2))
    return rows


@dataclass
class RunSummary:
    run_dir: Path
    metrics: dict
    predictions: Path
    n_predictions: int
    seconds: float


def run(data_dir: Path, out_dir: Path, cfg: Config, quiet: bool = False) -> RunSummary:
    """Train, evaluate on the validation split and predict the test list into out_dir/predictions.txt."""
    t0 = time.perf_counter()
    dataset = load_training_data(Path(data_dir), cfg)
    result = train(Path(data_dir), Path(out_dir), cfg, quiet, dataset=dataset)
    loaded = load_run(result.run_dir)
    probs = loaded.predict_proba(dataset.test, quiet)
    rows = [(r.guid, LABELS[int(p.argmax())]) for r, p in zip(dataset.test, probs, strict=True)]
    predictions = Path(out_dir) / "predictions.txt"
    write_label_file(predictions, rows)
    return RunSummary(Path(out_dir), result.metrics, predictions, len(rows), time.perf_counter() - t0)


__all__ = ["LoadedRun", "RunSummary", "TrainResult", "evaluate", "load_run", "predict", "run", "train", "TEST_LIST"]
