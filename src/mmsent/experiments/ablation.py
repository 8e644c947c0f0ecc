"""Modality ablation of a trained multimodal run: blank one modality at inference, or (--retrain) train without it."""

from __future__ import annotations

from pathlib import Path

from mmsent.api import encode_labels, load_run, load_training_data, train
from mmsent.engine.metrics import compute_metrics
from mmsent.errors import MmsentError
from mmsent.experiments.common import write_manifest, write_table
from mmsent.experiments.runs import (
    METRICS,
    config_with,
    guid_records,
    metric_row,
    run_split,
)

SETTINGS = {"both": frozenset(), "text only": frozenset({"image"}), "image only": frozenset({"text"})}


def run_ablation(
    run_dir: Path, data_dir: Path, out_dir: Path, command: str, retrain: bool = False, quiet: bool = True
) -> list[dict]:
    """Rows for both / text only / image only (blanked, and retrained with --retrain); write table, chart, manifest."""
    run = load_run(run_dir)
    modality_of = {n: e.modality for n, e in run.encoders.items()}
    if not {"text", "image"} <= set(modality_of.values()):
        raise MmsentError(f"{run_dir}: ablation needs a run with text and image encoders (it has {modality_of})")
    split = run_split(run_dir)
    val = guid_records(data_dir, split["val"], run.cfg.data.max_image_pixels)
    y = encode_labels(val)
    feats = run.features(val, quiet=quiet)
    rows = []
    for setting, drop in SETTINGS.items():
        # blanked = the modality's standardised features set to 0, i.e. its training mean
        metrics = compute_metrics(y, run.predict_features(feats, drop=drop))
        rows.append({"setting": setting, "method": "trained on both" if not drop else "blanked at inference",
                     "encoders": ",".join(n for n, m in modality_of.items() if m not in drop), **metric_row(metrics)})
    if retrain:
        rows += _retrained(run, split, data_dir, Path(out_dir), modality_of, quiet)
    write_table(rows, Path(out_dir))
    from mmsent.reporting.experiment_plots import plot_metric_bars

    for row in rows:
        row["label"] = row["setting"] if row["method"] != "retrained" else f"{row['setting']} (retrained)"
    plot_metric_bars(rows, "label", ["accuracy", "macro_f1"], Path(out_dir) / "ablation.png", "Modality ablation (validation)")
    for row in rows:
        del row["label"]
    write_manifest(Path(out_dir), "ablation", command, run=str(run_dir), retrain=retrain, n_val=len(val), metrics=METRICS)
    return rows


def _retrained(run, split: dict, data_dir: Path, out_dir: Path, modality_of: dict[str, str], quiet: bool) -> list[dict]:
    """Text-only and image-only models: the run's config with the encoders of one modality, on the run's split."""
    dataset = load_training_data(Path(data_dir), run.cfg)
    by_guid = {r.guid: r for r in dataset.train}
    train_records = [by_guid[g] for g in split["train"] if g in by_guid]  # augmented copies are not in train.txt
    val_records = [by_guid[g] for g in split["val"] if g in by_guid]
    rows = []
    for modality in ("text", "image"):
        encoders = [n for n, m in modality_of.items() if m == modality]
        cfg = config_with(run.cfg, {"model.encoders": encoders})
        result = train(data_dir, out_dir / f"retrain-{modality}", cfg, quiet=quiet, dataset=dataset,
                       split=(train_records, val_records))
        rows.append({"setting": f"{modality} only", "method": "retrained", "encoders": ",".join(encoders),
                     **metric_row(result.metrics)})
    return rows
