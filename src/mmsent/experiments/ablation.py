"""Modality ablation of a trained multimodal run: blank one modality at inference, or (--retrain) train without it."""

from __future__ import annotations

from pathlib import Path

from mmsent.api import encode_labels, load_run, load_training_data, train
from mmsent.data.records import records_for_guids
from mmsent.engine.metrics import METRICS, compute_metrics, metric_row
from mmsent.errors import MmsentError
from mmsent.experiments.significance import delta_columns, from_probs, from_run, note
from mmsent.progress import Progress
from mmsent.run_folder import RunFolder, RunOrigin, Split, experiment_folder, write_manifest
from mmsent.tables import write_table

SETTINGS = {"both": frozenset(), "text only": frozenset({"image"}), "image only": frozenset({"text"})}


def run_ablation(
    run_dir: Path, data_dir: Path, out_dir: Path, command: str, retrain: bool = False, quiet: bool = True,
    overwrite: bool = False,
) -> list[dict]:
    """Rows for both / text only / image only (blanked, and retrained with --retrain); write table, chart, manifest."""
    run = load_run(run_dir)
    modality_of = {n: e.modality for n, e in run.encoders.items()}
    if not {"text", "image"} <= set(modality_of.values()):
        raise MmsentError(f"{run_dir}: ablation needs a run with text and image encoders (it has {modality_of})")
    split = RunFolder.open(run_dir).split()
    with experiment_folder(Path(out_dir), "ablation", overwrite) as out_dir:
        val = records_for_guids(data_dir, split.val, run.cfg.data.max_image_pixels)
        y = encode_labels(val)
        feats = run.features(val, quiet=quiet)
        rows, predictions = [], []
        for setting, drop in SETTINGS.items():
            # blanked = the modality's standardised features set to 0, i.e. its training mean
            probs = run.predict_features(feats, drop=drop)
            predictions.append(from_probs(val, probs))
            rows.append({"setting": setting, "method": "trained on both" if not drop else "blanked at inference",
                         "encoders": ",".join(n for n, m in modality_of.items() if m not in drop),
                         **metric_row(compute_metrics(y, probs))})
        if retrain:
            retrained = _retrained(run, split, data_dir, out_dir, modality_of, quiet, command)
            rows += retrained
            predictions += [from_run(out_dir / f"retrain-{r['setting'].split()[0]}") for r in retrained]
        for i, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
            row.update(delta_columns(predictions[0], prediction, is_reference=i == 0))
        write_table(rows, out_dir, note=note("both", len(val)))
        from mmsent.reporting.experiment_plots import plot_metric_bars

        labels = [r["setting"] if r["method"] != "retrained" else f"{r['setting']} (retrained)" for r in rows]
        plot_metric_bars([{**r, "label": label} for r, label in zip(rows, labels)], "label", ["accuracy", "macro_f1"],
                         out_dir / "ablation.png", "Modality ablation (validation)")
        write_manifest(out_dir, "ablation", command, run=str(run_dir), retrain=retrain, n_val=len(val), metrics=METRICS,
                       significance=note("both", len(val)))
    return rows


def _retrained(run, split: Split, data_dir: Path, out_dir: Path, modality_of: dict[str, str], quiet: bool,
               command: str) -> list[dict]:
    """Text-only and image-only models: the run's config with the encoders of one modality, on the run's split."""
    dataset = load_training_data(Path(data_dir), run.cfg)
    by_guid = {r.guid: r for r in dataset.train}
    train_records = [by_guid[g] for g in split.train if g in by_guid]  # augmented copies are not in train.txt
    val_records = [by_guid[g] for g in split.val if g in by_guid]
    rows = []
    with Progress("retraining", 2, quiet) as progress:
        for modality in ("text", "image"):
            encoders = [n for n, m in modality_of.items() if m == modality]
            progress.step(f"{modality} only ({', '.join(encoders)})")
            cfg = run.cfg.with_values({"model.encoders": encoders})
            result = train(data_dir, out_dir / f"retrain-{modality}", cfg, quiet=quiet, dataset=dataset,
                           split=(train_records, val_records), overwrite=True, origin=RunOrigin(command))
            rows.append({"setting": f"{modality} only", "method": "retrained", "encoders": ",".join(encoders),
                         **metric_row(result.metrics)})
    return rows
