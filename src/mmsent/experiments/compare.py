"""`mmsent compare`: several presets trained on one split, seed and metric set, tabulated and plotted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmsent.api import load_training_data, train
from mmsent.config import Config, load_config
from mmsent.errors import MmsentError, WeightsNotFoundError
from mmsent.experiments.significance import DELTA_COLUMNS, delta_columns, from_run, note
from mmsent.presets import PRESETS
from mmsent.progress import Progress
from mmsent.run_folder import ERROR_FILE, RunFolder, RunOrigin, experiment_folder, write_error, write_manifest
from mmsent.tables import markdown_table, write_table

COLUMNS = [
    "preset", "modalities", "mode", "params_m", "trainable_params_m", "accuracy", "macro_f1", *DELTA_COLUMNS,
    "weighted_f1", "f1_neutral", "macro_precision", "macro_recall", "train_seconds", "encode_seconds", "encode_cache",
    "epochs_run", "status",
]
DEFAULT_ABLATION = ("tfidf_resnet18",)


@dataclass
class CompareResult:
    out_dir: Path
    rows: list[dict]
    markdown: str


def modality_config(cfg: Config, modality: str, encoder_modalities: dict[str, str]) -> Config:
    """The same config with only the encoders of one modality."""
    kept = [e for e in cfg.model.encoders if encoder_modalities.get(e) == modality]
    if not kept:
        raise MmsentError(f"no {modality} encoder among {cfg.model.encoders}")
    return cfg.with_values({"model.encoders": kept})


def _row(name: str, modalities: str, cfg: Config, metrics: dict) -> dict:
    return {
        "preset": name,
        "modalities": modalities,
        "mode": cfg.train.mode,
        "params_m": round(metrics["parameters"] / 1e6, 3),
        "trainable_params_m": round(metrics["trainable_parameters"] / 1e6, 3),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "weighted_f1": metrics["weighted_f1"],
        "f1_neutral": metrics["per_class"]["neutral"]["f1"],
        "macro_precision": metrics["macro_precision"],
        "macro_recall": metrics["macro_recall"],
        "train_seconds": metrics["train_seconds"],
        "encode_seconds": metrics["encode_seconds"],
        "encode_cache": cache_state(metrics.get("encoder_cache", {})),
        "epochs_run": metrics["epochs_run"],
        "status": "ok",
    }


def cache_state(encoder_cache: dict[str, dict[str, int]]) -> str:
    """Cold when every feature was computed, cached when none was, else partly cached: their encoding times differ."""
    computed = sum(e.get("computed", 0) for e in encoder_cache.values())
    total = computed + sum(e.get("cached", 0) for e in encoder_cache.values())
    return "cached" if computed == 0 else "cold" if computed == total else "partly cached"


def _failed_row(name: str, modalities: str, reason: str, run_dir: Path) -> dict:
    """A row that says in one line why the preset could not run; the full message goes to run_dir/error.txt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_error(run_dir, reason)
    short = reason.splitlines()[0].split(": looked in")[0]
    if len(short) > 140:
        short = short[:137] + "..."
    return {"preset": name, "modalities": modalities, "status": f"{short} (see runs/{run_dir.name}/{ERROR_FILE})"}


def compare(
    data_dir: Path,
    out_dir: Path,
    presets: list[str],
    config_path: Path | None = None,
    overrides: list[str] | None = None,
    ablate: list[str] | None = None,
    quiet: bool = False,
    command: str = "",
    overwrite: bool = False,
) -> CompareResult:
    """Train each preset with the same shared config; a preset that cannot run gets a row saying why."""
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise MmsentError(f"unknown preset(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(PRESETS)}")
    ablate = [p for p in (DEFAULT_ABLATION if ablate is None else ablate) if p in presets]
    configs = {name: load_config(config_path, overrides, preset=name) for name in presets}  # validate all first
    with experiment_folder(Path(out_dir), "compare", overwrite) as out_dir:
        first = configs[presets[0]]
        dataset = load_training_data(Path(data_dir), first)  # one load, one split for every preset
        rows: list[dict] = []
        histories: dict[str, list[dict]] = {}
        with Progress("preset", len(presets) + 2 * len(ablate), quiet) as progress:
            for name in presets:
                rows += _preset_rows(name, configs[name], name in ablate, Path(data_dir), out_dir, dataset, quiet,
                                     command, histories, progress)
        significance = add_deltas(rows)
        write_table(rows, out_dir, columns=COLUMNS, note=significance)
        _plots(rows, histories, out_dir)
        write_manifest(out_dir, "compare", command, presets=presets, ablated=ablate, significance=significance)
    return CompareResult(out_dir, rows, markdown_table(rows, COLUMNS))


def add_deltas(rows: list[dict]) -> str | None:
    """Each trained row's paired difference to the first trained row; the note that says what they mean."""
    trained = [r for r in rows if r["status"] == "ok"]
    if len(trained) < 2:
        return None
    reference = from_run(trained[0]["run_dir"])
    trained[0].update(delta_columns(reference, reference, is_reference=True))
    for row in trained[1:]:
        row.update(delta_columns(reference, from_run(row["run_dir"])))
    return note(trained[0]["preset"], len(reference.guids))


def _preset_rows(
    name: str, cfg: Config, ablated: bool, data_dir: Path, out_dir: Path, dataset, quiet: bool, command: str,
    histories: dict[str, list[dict]], progress: Progress,
) -> list[dict]:
    """The preset's row (and its text-only / image-only rows when ablated); its runs under out_dir/runs."""
    rows = []
    variants = [("both", cfg)] + ([("text", None), ("image", None)] if ablated else [])
    modalities_of: dict[str, str] = {}
    for modalities, variant_cfg in variants:
        label = name if modalities == "both" else f"{name} ({modalities} only)"
        run_dir = out_dir / "runs" / (name if modalities == "both" else f"{name}-{modalities}-only")
        progress.step(label)
        try:
            if variant_cfg is None:
                variant_cfg = modality_config(cfg, modalities, modalities_of)
            result = train(data_dir, run_dir, variant_cfg, quiet=quiet, dataset=dataset, overwrite=True,
                           origin=RunOrigin(command, preset=name))
        except WeightsNotFoundError as exc:
            rows.append(_failed_row(label, modalities, f"weights missing: {exc}", run_dir))
            break  # its ablation rows cannot run either
        except MmsentError as exc:
            rows.append(_failed_row(label, modalities, f"failed: {exc}", run_dir))
            continue
        if modalities == "both":
            modalities_of = result.model.classifier.encoder_modalities
        rows.append({**_row(label, modalities, variant_cfg, result.metrics), "run_dir": run_dir})
        histories[label] = RunFolder.open(run_dir).history()
    return rows


def _plots(rows: list[dict], histories: dict[str, list[dict]], out_dir: Path) -> None:
    from mmsent.reporting.plots import (
        plot_compare_curves,
        plot_metric_bars,
        plot_time_vs_score,
    )

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return
    plot_metric_bars(ok, "preset", ["accuracy", "macro_f1", "weighted_f1", "f1_neutral"], out_dir / "metrics.png")
    plot_compare_curves(histories, out_dir / "val_curves.png")
    plot_time_vs_score(ok, out_dir / "time_vs_score.png")
