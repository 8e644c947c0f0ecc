"""The library's workflows: train, evaluate, predict and the end-to-end run; the CLI only calls these."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mmsent import LABELS, distributed, heldout
from mmsent.config import Config
from mmsent.data.augmented import load_augmented
from mmsent.data.dataset import record_batches
from mmsent.data.duplicates import duplicate_groups
from mmsent.data.guard import check_no_leak
from mmsent.data.labels import read_label_file, write_label_file
from mmsent.data.posts import Posts, modality_name, read_posts
from mmsent.data.records import (
    TEST_LIST,
    DataSet,
    Record,
    load_dataset,
    load_records,
    raise_on_problems,
    records_for_guids,
    require_data_dir,
)
from mmsent.data.shards import Shard, merge_predictions, write_skipped_companion
from mmsent.data.split_lists import held_out_lists
from mmsent.data.splits import stratified_folds, stratified_split
from mmsent.encoders import Encoder
from mmsent.encoders.features import EncodeStats, encode_records, encode_tokens, token_dim, verified_export_path
from mmsent.encoders.runtime import (
    BULK_POSTS,
    BundledExport,
    available_cores,
    loader_processes,
    note_once,
    onnx_possible,
    torch_threads,
)
from mmsent.engine.decision import fit_decision
from mmsent.engine.losses import make_loss
from mmsent.engine.metrics import compute_metrics, reliability
from mmsent.engine.trainer import (
    EpochCallback,
    FeatureBatches,
    FitResult,
    fit,
    predict_proba,
    seed_everything,
)
from mmsent.errors import MmsentError, Problem
from mmsent.factory import Preprocessing, create_encoders, create_model
from mmsent.files import atomic_write_text, check_output_file
from mmsent.model import FusionClassifier, MultimodalModel, with_auxiliary_losses
from mmsent.run_folder import (
    RunChanged,
    RunFolder,
    RunOrigin,
    RunWriter,
    Split,
    create_run_once,
    encoder_weights_blob,
    predictions_path,
    read_manifest,
)
from mmsent.tables import csv_text

LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}


def encode_labels(records: list[Record]) -> np.ndarray:
    return np.array([LABEL_INDEX[r.tag] for r in records], dtype=np.int64)


def apply_runtime(cfg: Config) -> None:
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)


@contextmanager
def head_threads(cfg: Config):
    """Threads for training a head on cached features: one unless runtime.threads says otherwise.

    The head's matrices are small, so more threads only add synchronisation; on a shared CPU they
    made a frozen training run several times slower (measured: 191 s with 2 threads vs 39 s with 1).
    """
    with torch_threads(cfg.runtime.threads or 1):
        yield


def extract_features(
    encoders: dict[str, Encoder],
    records: list[Record],
    cfg: Config,
    quiet: bool = False,
    use_cache: bool = True,
    token_encoders: list[str] | tuple[str, ...] = (),
    release: bool = False,
) -> tuple[dict[str, np.ndarray], list[EncodeStats]]:
    """{encoder: (N, D)} for records, through the feature cache unless use_cache is False.

    Encoders in token_encoders give (N, T, D_tok) and a mask under "<name>.mask" instead (through the
    token cache: float16 on disk). `release`: each encoder frees its ONNX sessions and torch network as soon
    as its features are done (see release_inference), for a caller that encodes nothing more for a while.
    """
    cache_root = cfg.cache_path() if use_cache else None
    pooled: dict[str, tuple[np.ndarray, EncodeStats]] = {}

    def encode(names: list[str], cfg: Config) -> None:
        for name in names:
            pooled[name] = encode_records(encoders[name], records, cfg, cache_root, quiet=quiet, release=release)

    names = [n for n in encoders if n not in token_encoders]
    images = [n for n in names if encoders[n].modality == "image"]
    others = [n for n in names if n not in images]
    if images and others and overlaps_encoders(cfg):
        # the text encoders' Python (lexicon, VADER, tokenising) runs while ONNX Runtime encodes the images
        # in this worker thread, which leaves the GIL: otherwise one of two cores idles through either
        shared = overlapped_config(cfg, len(records))
        with ThreadPoolExecutor(1, thread_name_prefix="mmsent-images") as pool:
            image_job = pool.submit(encode, images, shared)
            encode(others, shared)
            image_job.result()
    else:
        encode(names, cfg)
    features, stats = {}, []
    for name, encoder in encoders.items():  # in the encoders' order, whichever finished first
        if name in token_encoders:
            features[name], features[f"{name}.mask"], stat = encode_tokens(encoder, records, cfg, cache_root, quiet)
            stats.append(stat)
        else:
            features[name], stat = pooled[name]
            stats.append(stat)
    return features, stats


def overlaps_encoders(cfg: Config) -> bool:
    """Whether image and text encoders may encode at once: not in torch (its OpenMP threads spin-wait, so
    two encoders at once oversubscribe the cores), not under a launcher, and only without image loader
    processes (forking them from a second thread could copy a lock another thread holds)."""
    return cfg.runtime.backend != "torch" and loader_processes(cfg) == 0 and not distributed.launched()


def overlapped_config(cfg: Config, posts: int) -> Config:
    """The config of two encoders encoding `posts` at once: unless runtime.threads says otherwise, each gets
    half the cores when there are many posts, and all of them when there are few.

    Many posts: with all the cores each, they wait on each other's threads (1,000 posts on 2 cores, see
    benchmarks/bench_overlap.py). A few (a service's batch): the text side ends long before the images,
    which then want every core (with half of them, benchmarks/load_test.py served one client fewer posts).
    """
    if cfg.runtime.threads or posts < BULK_POSTS:
        return cfg
    return cfg.with_values({"runtime.threads": max(1, available_cores() // 2)})


def _subset(features: dict[str, np.ndarray], idx: np.ndarray | list[str]) -> dict[str, np.ndarray]:
    """The rows idx of every feature matrix, or (a list of names) those encoders' matrices."""
    if isinstance(idx, list):
        return {k: features[k] for k in idx}
    return {k: v[idx] for k, v in features.items()}


@dataclass
class TrainResult:
    run_dir: Path | None  # None in the other processes of a launch (the main process writes the run)
    metrics: dict
    fit: FitResult
    train_guids: list[str]
    val_guids: list[str]
    timings: dict = field(default_factory=dict)
    model: LoadedRun | None = field(default=None, repr=False)  # the trained model, ready to predict


def probability_rows(records: list[Record], probs: np.ndarray) -> list[dict]:
    """guid, true tag (if any), predicted tag and each class probability."""
    return [
        {"guid": r.guid, "tag": r.tag or "", "pred": LABELS[int(p.argmax())], **{f"p_{lab}": f"{x:.6f}" for lab, x in zip(LABELS, p)}}
        for r, p in zip(records, probs, strict=True)
    ]


def write_run_plots(plots: Path, history: list[dict], best_epoch: int, y: np.ndarray, probs: np.ndarray, metrics: dict) -> None:
    from mmsent.reporting.plots import plot_confusion, plot_history, plot_reliability, plot_roc

    plot_history(history, plots / "curves.png", best_epoch)
    plot_confusion(metrics["confusion_matrix"], LABELS, plots / "confusion.png")
    plot_roc(y, probs, LABELS, plots / "roc.png")
    plot_reliability(reliability(y, probs), metrics["ece"], plots / "reliability.png")


def split_records(records: list[Record], cfg: Config) -> tuple[list[Record], list[Record]]:
    """The stratified train / validation split fixed by data.split_seed; duplicate posts stay on one side."""
    train_idx, val_idx = stratified_split(
        [r.tag for r in records], cfg.data.val_fraction, cfg.data.split_seed, duplicate_groups(records)
    )
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
    overwrite: bool = False,
    origin: RunOrigin | None = None,
) -> TrainResult:
    """Train a model and publish the complete run folder at out_dir (nothing there changes if it fails).

    By default the train list of data_dir is split by data.val_fraction / data.split_seed;
    `split` gives explicit (train, validation) records instead (k-fold mining), and
    `extra_train` and the folders of cfg.data.augment add records (augmented copies) to training.
    The leak guard checks all of it. `callbacks` see each epoch's record (a search pruner, for example).
    An existing run at out_dir is replaced only with `overwrite`, and only once the new one is complete.
    Under `accelerate launch` / `torchrun` every process trains its part and the main one writes the run.
    """
    quiet = quiet or not distributed.is_main_process()
    with create_run_once(out_dir, overwrite) as writer:
        return train_into(writer, data_dir, cfg, quiet, dataset, split, extra_train, callbacks, origin)


def train_into(
    writer: RunWriter | None,
    data_dir: Path,
    cfg: Config,
    quiet: bool = False,
    dataset: DataSet | None = None,
    split: tuple[list[Record], list[Record]] | None = None,
    extra_train: list[Record] | None = None,
    callbacks: list[EpochCallback] | None = None,
    origin: RunOrigin | None = None,
    encode_also: list[Record] | None = None,
) -> TrainResult:
    """Train and write every file of the run through writer (see `train`).

    writer is None in the other processes of a launch: they train with the main process and write nothing.
    `encode_also`: posts the caller predicts next (the test list of `run`), encoded into the feature cache
    in the same pass as the training posts, so that predicting them opens no encoder again.
    """
    t_start = time.perf_counter()
    apply_runtime(cfg)
    encoders = create_encoders(cfg)  # missing weights stop here, before any data work
    dataset = dataset or load_training_data(data_dir, cfg)
    train_records, val_records = split if split is not None else split_records(dataset.train, cfg)
    augmented = load_augmented(cfg.data.augment, cfg.data.max_image_pixels)
    train_records = list(train_records) + list(extra_train or []) + augmented
    check_no_leak(train_records, val_records, [r.guid for r in dataset.test] + dataset.held_out)
    if dataset.skipped and writer is not None:
        writer.write_skipped(dataset.skipped_rows())
    fitted = fit_model(cfg, train_records, val_records, quiet, callbacks, encoders=encoders, data_dir=data_dir,
                       encode_also=encode_also)
    metrics = {**fitted.metrics, "total_seconds": round(time.perf_counter() - t_start, 2)}
    split_guids = Split(
        train=[r.guid for r in train_records if r.source_guid is None],
        val=[r.guid for r in val_records],
        augmented=[r.guid for r in train_records if r.source_guid is not None],
    )
    if writer is not None:
        _write_run(writer, cfg, fitted.model, metrics, split_guids, fitted.result, val_records, fitted.probs, data_dir,
                   origin, fitted.tuned_weights)
    timings = {k: metrics[k] for k in ("encode_seconds", "train_seconds", "total_seconds")}
    run_dir = writer.target if writer is not None else None
    return TrainResult(
        run_dir, metrics, fitted.result, split_guids.train, split_guids.val, timings,
        model=LoadedRun(run_dir, cfg, fitted.model),
    )


@dataclass
class Fitted:
    """A model trained in memory, with its validation probabilities and metrics (nothing written)."""

    model: MultimodalModel
    result: FitResult
    probs: np.ndarray  # (N_val, C)
    metrics: dict
    tuned_weights: bytes | None = None  # fine-tune mode: the tuned encoders' weights, serialised


def fit_model(
    cfg: Config,
    train_records: list[Record],
    val_records: list[Record],
    quiet: bool = False,
    callbacks: list[EpochCallback] | None = None,
    encoders: dict[str, Encoder] | None = None,
    data_dir: Path | str = "the data set",
    encode_also: list[Record] | None = None,
) -> Fitted:
    """Train the model cfg describes on train_records, early-stopping on val_records; nothing is written.

    Frozen mode trains the head on cached features; fine-tune mode trains encoders and head end to end.
    An ensemble (train.ensemble >= 2) early-stops each head on its own fold of train_records, so
    val_records only measure it and may be empty. `encode_also`: more posts encoded into the cache in the
    same pass (see train_into); encode_seconds counts them too.
    """
    if len({r.tag for r in train_records}) < 2:
        raise MmsentError(f"{data_dir}: training needs at least two classes in train.txt")
    if not val_records and (cfg.train.mode == "finetune" or cfg.train.ensemble == 1):
        raise MmsentError("a single head early-stops on a validation split: give validation records")
    seed_everything(cfg.train.seed)
    encoders = encoders if encoders is not None else create_encoders(cfg)
    t_enc = time.perf_counter()
    # stateful encoders (TF-IDF) learn from the training split only
    model, preprocessing = create_model(cfg, encoders=encoders, fit_records=train_records)
    classifier = model.classifier
    parameters = count_parameters(classifier) + sum(count_parameters(e) for e in encoders.values())
    # frozen training encodes nothing more: the heads train on these features (predictions open sessions again)
    feats, stats = extract_features(encoders, train_records + val_records + list(encode_also or []), cfg, quiet,
                                    token_encoders=classifier.token_encoders, release=cfg.train.mode == "frozen")
    encode_seconds = time.perf_counter() - t_enc
    n_train, n_val = len(train_records), len(val_records)
    train_feats = {k: v[:n_train] for k, v in feats.items()}  # views of the rows: no copies
    val_feats = {k: v[n_train:n_train + n_val] for k, v in feats.items()}
    y_train, y_val = encode_labels(train_records), encode_labels(val_records)

    seed_everything(cfg.train.seed)
    classifier.fit_scaler(train_feats)  # from the (frozen) training features, in both modes
    loss_fn = make_loss(cfg.train.class_weights, y_train, len(LABELS), cfg.train.label_smoothing)
    oof, tuned_blob = None, None
    if cfg.train.mode == "finetune":
        cached = (_subset(train_feats, model.cached), _subset(val_feats, model.cached))
        result, probs = _fit_finetune(model, preprocessing, train_records, val_records, y_train, y_val, loss_fn, cfg,
                                      quiet, callbacks, cached)
        tuned_blob, digest = encoder_weights_blob({n: model.encoders[n] for n in cfg.tuned_encoders()})
        for name in cfg.tuned_encoders():
            model.encoders[name].tuned_digest = digest  # their features are no longer those of the named weights
    else:
        with head_threads(cfg):
            result, probs, oof = _fit_heads(classifier, train_records, train_feats, y_train, val_feats, y_val, loss_fn,
                                            cfg, quiet, callbacks)
    model.eval()
    metrics = compute_metrics(y_val, probs) if val_records else {"n": 0}
    if oof is not None:
        oof_metrics = compute_metrics(y_train, oof)
        metrics["out_of_fold"] = {k: oof_metrics[k] for k in ("n", "accuracy", "macro_f1", "weighted_f1", "ece")}
    tuned_parameters = sum(p.numel() for p in model.backbone_parameters()) if cfg.train.mode == "finetune" else 0
    metrics.update(
        decision={"rule": cfg.train.decision if oof is not None else "argmax",
                  "offsets": dict(zip(LABELS, classifier.offsets.tolist())),
                  "temperature": float(classifier.temperature), "heads": len(classifier.heads)},
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        n_train=n_train,
        n_val=len(val_records),
        parameters=parameters,
        trainable_parameters=count_parameters(classifier) + tuned_parameters,
        encoder_cache={s.encoder: {"cached": s.cached, "computed": s.computed} for s in stats},
        encode_seconds=round(encode_seconds, 2),
        train_seconds=round(result.seconds, 2),
        processes=distributed.process_count(),
        # what each process did (one entry for a plain command): a launch shares the encoding and the batches
        work_per_process=distributed.gather({"encoded": sum(s.computed for s in stats), "train_batches": result.batches,
                                             "optimizer_steps": result.steps}),
    )
    return Fitted(model, result, probs, metrics, tuned_blob)


def _write_run(
    writer: RunWriter, cfg: Config, model: MultimodalModel, metrics: dict, split: Split, result: FitResult,
    val_records: list[Record], probs: np.ndarray, data_dir: Path, origin: RunOrigin | None,
    tuned_weights: bytes | None = None,
) -> None:
    """Every file of a trained run, through its writer."""
    classifier = model.classifier
    encoder_state = {n: state for n, e in model.encoders.items() if (state := e.extra_state_dict())}
    writer.write_config(cfg)
    writer.write_classifier(classifier.state_dict(), {"labels": list(LABELS), **classifier.spec(), "encoder_state": encoder_state})
    if tuned_weights is not None:
        writer.write_encoder_weights(tuned_weights)
    if cfg.runtime.bundle_exports:
        writer.write_exports(verified_exports(model, cfg))
    writer.write_metrics(metrics)
    writer.write_split(split)
    writer.write_history(result.history)
    writer.write_val_predictions(probability_rows(val_records, probs))
    writer.write_val_list([(r.guid, r.tag) for r in val_records])
    write_run_plots(writer.plots_dir, result.history, result.best_epoch, encode_labels(val_records), probs, metrics)
    writer.write_manifest(origin or RunOrigin(), data=str(Path(data_dir).resolve()),
                          validation={k: metrics[k] for k in ("accuracy", "macro_f1")})


def verified_exports(model: MultimodalModel, cfg: Config) -> dict[str, tuple[str, Path]]:
    """{encoder: (export key, file)} of the frozen encoders that ONNX Runtime runs under cfg, exported and checked
    against torch now if no encoding did it yet (a warm run); token-level inputs stay in torch."""
    if not onnx_possible(cfg):
        return {}
    from mmsent.encoders.onnx_export import export_key

    exports = {}
    for name, encoder in model.encoders.items():
        if encoder.exportable and name not in model.classifier.token_encoders:
            path = verified_export_path(encoder, cfg)
            if path is not None:
                exports[name] = (export_key(encoder), path)
    return exports


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _fit_heads(
    classifier: FusionClassifier,
    train_records: list[Record],
    train_feats: dict[str, np.ndarray],
    y_train: np.ndarray,
    val_feats: dict[str, np.ndarray],
    y_val: np.ndarray,
    loss_fn: torch.nn.Module,
    cfg: Config,
    quiet: bool,
    callbacks: list[EpochCallback] | None,
) -> tuple[FitResult, np.ndarray, np.ndarray | None]:
    """Frozen mode: the head (or the cross-fitted heads) on cached features; validation and out-of-fold probabilities."""
    val_batches = FeatureBatches(val_feats, y_val, 1024, shuffle=False)
    oof = None
    if len(classifier.heads) == 1:
        train_batches = FeatureBatches(train_feats, y_train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed)
        result = fit(auxiliary(classifier, classifier, cfg), train_batches, val_batches, loss_fn, cfg.train,
                     callbacks=callbacks, quiet=quiet)
    else:
        result, oof = _fit_cross_fitted(classifier, train_records, train_feats, y_train, loss_fn, cfg, quiet, callbacks)
    probs = predict_proba(classifier, val_batches)[0] if len(y_val) else np.zeros((0, len(LABELS)), np.float32)
    return result, probs, oof


def auxiliary(trained: torch.nn.Module, classifier: FusionClassifier, cfg: Config) -> torch.nn.Module:
    """What trains: the head, wrapped with the auxiliary losses the config asks for (train.unimodal_loss, supcon_loss)."""
    t = cfg.train
    return with_auxiliary_losses(trained, classifier, t.unimodal_loss, t.supcon_loss, t.supcon_temperature)


def _fit_cross_fitted(
    classifier: FusionClassifier,
    train_records: list[Record],
    train_feats: dict[str, np.ndarray],
    y_train: np.ndarray,
    loss_fn: torch.nn.Module,
    cfg: Config,
    quiet: bool,
    callbacks: list[EpochCallback] | None,
) -> tuple[FitResult, np.ndarray]:
    """Train each head on all folds of the training split but its own, early-stopping on its own fold.

    Every training post is then predicted by the one head that did not train on it: these out-of-fold
    probabilities (N_train, C) fit the decision offsets and the temperature. Callbacks (a search pruner)
    see the first head's epochs.
    """
    k = len(classifier.heads)
    tags = [r.tag for r in train_records]
    if min(tags.count(t) for t in set(tags)) < k:
        raise MmsentError(f"train.ensemble={k} needs at least {k} training posts of each class; lower train.ensemble")
    folds = stratified_folds(tags, k, cfg.train.seed, duplicate_groups(train_records))
    oof = np.zeros((len(train_records), len(LABELS)), dtype=np.float32)
    results = []
    for index, (fit_idx, stop_idx) in enumerate(folds):
        seed_everything(cfg.train.seed + index)
        member = classifier.member(index)
        fit_batches = FeatureBatches(train_feats, y_train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed + index,
                                     rows=fit_idx)
        stop_batches = FeatureBatches(train_feats, y_train, 1024, shuffle=False, rows=stop_idx)
        results.append(fit(auxiliary(member, classifier, cfg), fit_batches, stop_batches, loss_fn, cfg.train,
                           callbacks=callbacks if index == 0 else None, quiet=quiet, desc=f"train head {index + 1}/{k}"))
        oof[stop_idx] = predict_proba(member, stop_batches)[0]
    decision = fit_decision(y_train, oof, cfg.train.decision, cfg.train.calibrate, cfg.train.decision_bootstraps,
                            cfg.train.seed)
    classifier.set_decision(decision.offsets, decision.temperature)
    history = [{**record, "member": index} for index, r in enumerate(results) for record in r.history]
    merged = FitResult(history, int(np.median([r.best_epoch for r in results])),
                       float(np.mean([r.best_score for r in results])), any(r.stopped_early for r in results),
                       sum(r.seconds for r in results), batches=sum(r.batches for r in results),
                       steps=sum(r.steps for r in results))
    return merged, oof


def _fit_finetune(
    model: MultimodalModel,
    preprocessing: Preprocessing,
    train_records: list[Record],
    val_records: list[Record],
    y_train: np.ndarray,
    y_val: np.ndarray,
    loss_fn: torch.nn.Module,
    cfg: Config,
    quiet: bool,
    callbacks: list | None = None,
    cached: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {}),
) -> tuple[FitResult, np.ndarray]:
    """Train encoders and head end to end through Accelerate; backbones frozen for freeze_epochs.

    Encoders outside train.finetune stay frozen: `cached` holds their (train, validation) features, which
    the batches carry instead of images or texts. Under a launcher each process trains on its share of
    the batches (data parallel) and the validation predictions of all are gathered.
    """
    t = cfg.train
    accelerator = _accelerator(cfg)
    workers = loader_processes(cfg)
    train_batches = record_batches(train_records, y_train, preprocessing.train, preprocessing.collate, t.batch_size,
                                   shuffle=True, num_workers=workers, seed=t.seed, features=cached[0])
    val_batches = record_batches(val_records, y_val, preprocessing.eval, preprocessing.collate,
                                 cfg.runtime.encode_batch_size, shuffle=False, num_workers=workers, features=cached[1])
    for name in model.cached:
        model.encoders[name].requires_grad_(False)  # their features come from the cache: nothing of theirs trains
    backbone = model.backbone_parameters()
    groups = [{"params": list(model.classifier.parameters()), "lr": t.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": t.backbone_lr})

    def freeze_backbones_early(epoch: int) -> None:
        # after the model is prepared: a process group's wrapper must see every weight that will ever train
        for p in backbone:
            p.requires_grad_(epoch > t.freeze_epochs)

    result = fit(model, train_batches, val_batches, loss_fn, t, param_groups=groups, callbacks=callbacks, quiet=quiet,
                 accelerator=accelerator, on_epoch_start=freeze_backbones_early)
    for p in backbone:
        p.requires_grad_(True)
    model.to("cpu")
    return result, result.best_probs


def _accelerator(cfg: Config):
    """Accelerate for fine-tuning: device, mixed precision, accumulation, and the processes of a launch."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # a weight without a gradient in a step (frozen backbones of the first epochs, a pooler the model never
    # uses) would stall the gradient exchange of several processes, unless the wrapper looks for such weights
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if distributed.launched() else []
    return Accelerator(mixed_precision=cfg.train.mixed_precision, gradient_accumulation_steps=cfg.train.grad_accum_steps,
                       cpu=not torch.accelerator.is_available(), kwargs_handlers=handlers)


@dataclass
class LoadedRun:
    """A trained run ready to predict: its config and its model (encoders + fusion classifier)."""

    run_dir: Path
    cfg: Config
    model: MultimodalModel

    @property
    def encoders(self) -> dict[str, Encoder]:
        return dict(self.model.encoders.items())

    @property
    def classifier(self) -> FusionClassifier:
        return self.model.classifier

    def features(self, records: list[Record], quiet: bool = False, use_cache: bool = True) -> dict[str, np.ndarray]:
        """{encoder: (N, D)} for records (cached unless use_cache is False, e.g. for perturbed inputs)."""
        feats, _ = extract_features(
            self.encoders, records, self.cfg, quiet, use_cache, token_encoders=self.classifier.token_encoders
        )
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

    def predict_blanked(self, feats: dict[str, np.ndarray], drops: list[frozenset[str]]) -> list[np.ndarray]:
        """predict_features(feats, drop) for each drop in drops, in one pass of the head over the stacked features.

        A blanked modality's features are set to their training mean, which standardises to exactly 0, as
        drop_modalities does; one pass instead of one per drop keeps a request's extra views cheap.
        """
        n = len(next(iter(feats.values())))
        modality_of = self.classifier.encoder_modalities
        stacked = {
            name: np.concatenate([
                np.broadcast_to(self.classifier.training_mean(name), values.shape)
                if modality_of.get(name) in drop else values  # masks ("name.mask") are kept as they are
                for drop in drops
            ])
            for name, values in feats.items()
        }
        probs = self.predict_features(stacked)
        return [probs[k * n:(k + 1) * n] for k in range(len(drops))]

    def predict_proba(
        self, records: list[Record], quiet: bool = False, drop: frozenset[str] = frozenset(), use_cache: bool = True
    ) -> np.ndarray:
        """Class probabilities (N, C) in LABELS order; use_cache=False keeps one-off inputs (uploads) off disk."""
        if not records:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        return self.predict_features(self.features(records, quiet, use_cache), drop)


def load_run(run_dir: Path, attempts: int = 3, backend: str | None = None) -> LoadedRun:
    """Rebuild a trained run from its folder; nothing else is needed. Incomplete or damaged runs are refused.

    backend (auto, torch, onnx) replaces the run's runtime.backend: how its frozen encoders run, not what
    they compute (an ONNX export is used only where it matches torch), so any backend predicts for any run.
    """
    for attempt in range(attempts):
        try:
            return _load_run(RunFolder.open(run_dir), backend)
        except RunChanged:
            if attempt == attempts - 1:
                raise  # replaced again and again while being read: say so
    raise AssertionError("unreachable")


def _load_run(folder: RunFolder, backend: str | None = None) -> LoadedRun:
    cfg = folder.config()
    if backend is not None:
        cfg = cfg.with_values({"runtime.backend": backend})
    spec = folder.spec()
    if tuple(spec.get("labels", LABELS)) != LABELS:
        raise MmsentError(f"{folder.path}: checkpoint labels {spec['labels']} differ from {list(LABELS)}")
    tuned = folder.encoder_weights()
    apply_runtime(cfg)
    exports = folder.exports() if onnx_possible(cfg) else {}
    # fine-tuned weights replace the named ones, so those need not be available again; encoders whose export
    # the run carries build their torch network only if something needs it (a fine-tuned one needs its weights)
    model, _ = create_model(cfg, encoder_state=spec.get("encoder_state", {}),
                            architecture_only=frozenset(cfg.tuned_encoders()) if tuned is not None else frozenset(),
                            deferred=frozenset(exports) - frozenset(cfg.tuned_encoders()))
    classifier = model.classifier
    for name, dim in classifier.encoder_dims.items():
        if spec["encoder_dims"].get(name) != dim:
            raise MmsentError(
                f"{folder.path}: encoder {name!r} gives {dim}-d features, the checkpoint expects "
                f"{spec['encoder_dims'].get(name)}; the encoder's options or package changed since training"
            )
    if classifier.token_encoders != list(spec.get("token_encoders", [])):
        raise MmsentError(f"{folder.path}: the checkpoint's token encoders {spec.get('token_encoders')} differ from "
                          f"the ones its config gives ({classifier.token_encoders})")
    try:
        classifier.load_state_dict(folder.classifier_state(), strict=True)
        if tuned is not None:
            for name in cfg.tuned_encoders():
                encoder, prefix = model.encoders[name], f"{name}."
                encoder.load_state_dict({k[len(prefix):]: v for k, v in tuned.items() if k.startswith(prefix)}, strict=True)
                encoder.tuned_digest = folder.encoder_weights_digest()
    except RuntimeError as exc:  # a state dict that does not fit the model the config describes
        raise MmsentError(f"{folder.path}: the saved weights do not fit the model its config describes ({exc})") from None
    model.eval()
    attach_exports(folder, model, exports)
    return LoadedRun(folder.path, cfg, model)


def attach_exports(folder: RunFolder, model: MultimodalModel, exports: dict[str, dict[str, str]]) -> None:
    """Give each encoder the export the run carries for it, if it is an export of this very encoder (same
    weights, preprocessing and recipe) and its bytes are those the run recorded."""
    from mmsent.encoders.onnx_export import export_key

    for name, entry in exports.items():
        encoder = model.encoders[name] if name in model.encoders else None
        if encoder is None or entry.get("key") != export_key(encoder):
            continue  # exported from other weights or by another torch: the encoder is exported anew if needed
        try:
            encoder.bundled_export = BundledExport(entry["key"], folder.verified_file(entry["file"]))
        except PermissionError:
            note_once(f"{folder.path / entry['file']} cannot be read; encoder {name!r} is exported anew")


def _load_list(
    data_dir: Path, list_file: Path, labelled: bool, on_error: str, max_pixels: int, shard: Shard | None = None
) -> tuple[list[Record], list]:
    records, problems = load_records(require_data_dir(Path(data_dir)), Path(list_file), labelled, max_pixels, shard)
    raise_on_problems(problems, on_error)
    return records, problems


def _run_dirs(run_dirs: Path | Sequence[Path]) -> list[Path]:
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not dirs:
        raise MmsentError("no run folder given")
    return [Path(d) for d in dirs]


def load_runs(run_dirs: Path | Sequence[Path], backend: str | None = None) -> list[LoadedRun]:
    """One run folder, or several for an ensemble."""
    return [load_run(d, backend=backend) for d in _run_dirs(run_dirs)]


def first_run_config(run_dirs: Path | Sequence[Path]) -> Config:
    """The config of the (first) run, read without building its model: input files are checked before loading."""
    return RunFolder.open(_run_dirs(run_dirs)[0]).config()


def ensemble_proba(runs: list[LoadedRun], records: list[Record], quiet: bool = False) -> np.ndarray:
    """Class probabilities (N, C) averaged over runs; each run extracts its own features."""
    if len(runs) == 1:
        return runs[0].predict_proba(records, quiet)  # a single run stays exactly as it was
    return np.mean([run.predict_proba(records, quiet) for run in runs], axis=0, dtype=np.float64).astype(np.float32)


def evaluate(
    run_dir: Path | Sequence[Path], data_dir: Path | None, labels_file: Path | None, quiet: bool = False,
    on_error: str = "fail", split: str | None = None, backend: str | None = None,
) -> dict:
    """Metrics of a trained run on the labelled guids of labels_file, or of one of its own splits (`split="val"`).

    data_dir None: the data folder the (first) run recorded. The metrics say how many of the labelled
    guids the runs trained on (`in_training`): those scores are not held out. backend: see load_run.
    """
    run_dirs = _run_dirs(run_dir)
    max_pixels = first_run_config(run_dirs).data.max_image_pixels
    data_dir = data_dir if data_dir is not None else heldout.recorded_data_dir(run_dirs[0])
    # the labelled posts first: a mistake in them is reported before the encoders load
    if split is not None:
        guids = heldout.split_guids(run_dirs[0], split)
        records, problems = records_for_guids(data_dir, guids, max_pixels), []
    elif labels_file is not None:
        records, problems = _load_list(data_dir, labels_file, True, on_error, max_pixels)
    else:
        raise MmsentError("give a label file (--labels FILE) or one of the run's splits (--split val)")
    if not records:
        raise MmsentError(f"{labels_file}: no labelled guid to evaluate")
    runs = load_runs(run_dirs, backend)
    probs = ensemble_proba(runs, records, quiet)
    metrics = compute_metrics(encode_labels(records), probs)
    metrics["in_training"] = {"guids": len(heldout.trained_on(run_dirs, [r.guid for r in records])), "of": len(records)}
    if problems:
        metrics["skipped"] = [p.line() for p in problems]
    return metrics


def predict(
    run_dir: Path | Sequence[Path], data_dir: Path, guids_file: Path, out_file: Path, quiet: bool = False,
    on_error: str = "fail", shard: Shard | None = None, proba: bool = False, backend: str | None = None,
) -> list[tuple[str, str]]:
    """Write `guid,tag` for every guid of guids_file (or of its `shard`), in its order, atomically.

    proba adds a `p_LABEL` column per class. Guids skipped with on_error="skip" are listed beside the
    file, which `merge_predictions` reads. Under a launcher the processes share the encoding and the main
    one writes. backend: see load_run.
    """
    out_file = check_output_file(Path(out_file), "the predictions")  # before any work
    quiet = quiet or not distributed.is_main_process()
    # the list first: a mistake in it is reported in a second, not after the encoders have loaded
    records, problems = _load_list(data_dir, guids_file, False, on_error,
                                   first_run_config(run_dir).data.max_image_pixels, shard)
    runs = load_runs(run_dir, backend)
    probs = ensemble_proba(runs, records, quiet)
    rows = [(r.guid, LABELS[int(p.argmax())]) for r, p in zip(records, probs, strict=True)]
    if distributed.is_main_process():
        write_label_file(out_file, rows, {f"p_{lab}": probs[:, k] for k, lab in enumerate(LABELS)} if proba else None)
        write_skipped_companion(out_file, problems)
    return rows


@dataclass
class RunSummary:
    run_dir: Path
    metrics: dict
    predictions: Path
    n_predictions: int
    seconds: float


def run(
    data_dir: Path, out_dir: Path, cfg: Config, quiet: bool = False, overwrite: bool = False, origin: RunOrigin | None = None
) -> RunSummary:
    """Train, evaluate on the validation split and predict the test list; one complete run folder with predictions.txt."""
    t0 = time.perf_counter()
    quiet = quiet or not distributed.is_main_process()
    with create_run_once(out_dir, overwrite) as writer:
        dataset = load_training_data(Path(data_dir), cfg)
        # the test list is encoded with the training posts (one pass, encoders freed after it), then read back
        result = train_into(writer, Path(data_dir), cfg, quiet, dataset=dataset, origin=origin or RunOrigin(kind="run"),
                            encode_also=dataset.test)
        # every process of a launch: they share the encoding of the test list
        probs = result.model.predict_proba(dataset.test, quiet)  # the trained model in memory: no reload
        rows = [(r.guid, LABELS[int(p.argmax())]) for r, p in zip(dataset.test, probs, strict=True)]
        if writer is not None:
            writer.write_predictions(rows)
    return RunSummary(Path(out_dir), result.metrics, predictions_path(out_dir), len(rows), time.perf_counter() - t0)


def read_guids(list_file: Path) -> list[str]:
    """The guids of a `guid,tag` list, its tags ignored; a missing or malformed list is an error."""
    entries, problems = read_label_file(Path(list_file), labelled=False)
    raise_on_problems(problems, "fail")
    return [e.guid for e in entries]


def held_out_files(data_dir: Path, train_list: Path, test_lists: Sequence[Path] = ()) -> list[Path]:
    """The lists never to train on: those given, the test list of the split folder train_list is in
    (`mmsent split`), and a course folder's test_without_label.txt."""
    folder = Path(train_list).parent
    files = [Path(f) for f in test_lists] + held_out_lists(read_manifest(folder), folder)
    if (Path(data_dir) / TEST_LIST).is_file():
        files.append(Path(data_dir) / TEST_LIST)
    return list(dict.fromkeys(files))


def train_on_lists(
    data_dir: Path,
    out_dir: Path,
    cfg: Config,
    train_list: Path,
    val_list: Path | None = None,
    test_lists: Sequence[Path] = (),
    quiet: bool = False,
    overwrite: bool = False,
    origin: RunOrigin | None = None,
) -> TrainResult:
    """Train on the posts of train_list (`guid,tag`), measured on val_list; the leak guard holds out held_out_files.

    Without val_list the validation split is cut from train_list by data.val_fraction, as `train` does.
    The default model's heads early-stop on folds of the training list, so the validation list only measures
    the run (a single-head model early-stops on it).
    """
    root = require_data_dir(Path(data_dir))
    max_pixels = cfg.data.max_image_pixels
    train_records, problems = load_records(root, Path(train_list), True, max_pixels)
    val_records, val_problems = load_records(root, Path(val_list), True, max_pixels) if val_list else ([], [])
    raise_on_problems(problems + val_problems, cfg.data.on_error)
    if val_list is not None and not val_records:
        raise MmsentError(f"{val_list}: the validation list holds no post to measure the run on")
    held_out = held_out_files(root, Path(train_list), test_lists)
    held_out_guids = [g for f in held_out for g in read_guids(f)]
    if val_list is None:
        train_records, val_records = split_records(train_records, cfg)
    dataset = DataSet(root, train_records, [], skipped=problems + val_problems, held_out=held_out_guids)
    origin = origin or RunOrigin()
    lists = {"train_list": str(Path(train_list).resolve()), "val_list": str(Path(val_list).resolve()) if val_list else None,
             "held_out_lists": [str(f.resolve()) for f in held_out]}
    return train(root, out_dir, cfg, quiet, dataset=dataset, split=(train_records, val_records), overwrite=overwrite,
                 origin=replace(origin, facts={**origin.facts, **lists}))


@dataclass
class PostPredictions:
    """What `predict_posts` wrote: (id, tag, modalities) rows, the posts skipped, the columns it did not read."""

    rows: list[tuple[str, str, str]]
    skipped: list[Problem]
    ignored: list[str]
    skipped_file: Path | None = None


def run_modalities(run: LoadedRun) -> frozenset[str]:
    return frozenset(run.classifier.encoder_modalities.values())


def modality_features(run: LoadedRun, records: list[Record], present: frozenset[str], quiet: bool) -> dict[str, np.ndarray]:
    """{encoder: features} of posts that have only the modalities `present`: the encoders of a missing modality
    do not run; zeros stand in for their features, which predict_features blanks."""
    encoders = {n: e for n, e in run.encoders.items() if e.modality in present}
    tokens = [n for n in run.classifier.token_encoders if n in encoders]
    feats, _ = extract_features(encoders, records, run.cfg, quiet, token_encoders=tokens)
    for name in run.encoders.keys() - encoders.keys():
        if name in run.classifier.token_encoders:
            feats[name] = np.zeros((len(records), 1, token_dim(run.encoders[name])), np.float32)  # (N, 1, D_tok)
            feats[f"{name}.mask"] = np.ones((len(records), 1), bool)
        else:
            feats[name] = np.zeros((len(records), run.classifier.encoder_dims[name]), np.float32)  # (N, D)
    return feats


def posts_proba(run: LoadedRun, records: list[Record], modalities: list[frozenset[str]], quiet: bool = False) -> np.ndarray:
    """Probabilities (N, C) of posts with one or both modalities; a missing modality is blanked (set to its
    training mean), as `mmsent ablate` blanks one. Posts with both are predicted exactly as predict_proba does."""
    probs = np.zeros((len(records), len(LABELS)), np.float32)
    needed = run_modalities(run)
    for present in sorted(set(modalities), key=modality_name):
        idx = np.array([i for i, m in enumerate(modalities) if m == present])
        feats = modality_features(run, [records[i] for i in idx], present & needed, quiet)
        probs[idx] = run.predict_features(feats, drop=needed - present)
    return probs


def unreadable_posts(runs: list[LoadedRun], posts: Posts) -> list[Problem]:
    """A problem per post that has none of the modalities some run reads (a text-only post for an image-only run)."""
    problems = []
    for run in runs:
        needed = run_modalities(run)
        for record, present in zip(posts.records, posts.modalities, strict=True):
            if not present & needed:
                problems.append(Problem(record.guid, str(run.run_dir), f"the run reads only {modality_name(needed)}; "
                                        f"this post has only {modality_name(present)}"))
    return problems


def predict_posts(
    run_dir: Path | Sequence[Path], source: Path, out_file: Path, quiet: bool = False, on_error: str = "fail"
) -> PostPredictions:
    """Write `id,tag,modalities` for every post of a CSV / JSONL file or a folder (see data.posts), atomically."""
    out_file = check_output_file(Path(out_file), "the predictions")  # before any work
    runs = load_runs(run_dir)
    posts = read_posts(Path(source), runs[0].cfg.data.max_image_pixels)
    unreadable = unreadable_posts(runs, posts)
    problems = posts.problems + unreadable
    raise_on_problems(problems, on_error)
    skip = {p.guid for p in unreadable}
    kept = [i for i, r in enumerate(posts.records) if r.guid not in skip]
    records, modalities = [posts.records[i] for i in kept], [posts.modalities[i] for i in kept]
    if len(runs) == 1:
        probs = posts_proba(runs[0], records, modalities, quiet)
    else:
        probs = np.mean([posts_proba(run, records, modalities, quiet) for run in runs], axis=0)
    rows = [(r.guid, LABELS[int(p.argmax())], modality_name(m)) for r, p, m in zip(records, probs, modalities, strict=True)]
    columns = ["id", "tag", "modalities"]
    atomic_write_text(out_file, csv_text([dict(zip(columns, row)) for row in rows], columns))
    skipped_file = write_skipped_companion(out_file, problems, key="id")
    return PostPredictions(rows, problems, posts.ignored, skipped_file)


__all__ = [
    "LoadedRun", "RunOrigin", "RunSummary", "Shard", "TrainResult", "ensemble_proba", "evaluate", "load_run", "load_runs",
    "merge_predictions", "predict", "predict_posts", "run", "train", "train_on_lists", "TEST_LIST",
]
