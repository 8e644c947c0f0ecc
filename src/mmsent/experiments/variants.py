"""Variants: one base config plus a set of overrides per variant, same split and seed, results side by side."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mmsent.api import load_training_data, train
from mmsent.config import Config, read_yaml_mapping
from mmsent.engine.metrics import METRICS, metric_row
from mmsent.errors import MmsentError
from mmsent.experiments.significance import delta_columns, from_run, note
from mmsent.progress import Progress
from mmsent.run_folder import RunOrigin, experiment_folder, write_manifest
from mmsent.tables import write_table

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def load_variants(path: Path) -> dict[str, dict[str, Any]]:
    """A variants file: variant name -> {config key: value} (an empty mapping is the base itself)."""
    variants = read_yaml_mapping(path, "variants", allow_empty=False)
    for name, overrides in variants.items():
        if not NAME_RE.match(str(name)):
            raise MmsentError(f"variants file {path}: variant name {name!r} may use only letters, digits, _ . -")
        if overrides is not None and not isinstance(overrides, dict):
            raise MmsentError(f"variants file {path}: {name} must map to {{config key: value}} (or nothing)")
    return {str(k): dict(v or {}) for k, v in variants.items()}


def run_variants(
    data_dir: Path, out_dir: Path, cfg: Config, variants: dict[str, dict[str, Any]], command: str, quiet: bool = True,
    overwrite: bool = False, preset: str | None = None,
) -> list[dict]:
    """Train every variant into out_dir/variants/NAME; write results.csv/.md, variants.png, experiment.json."""
    configs = {name: cfg.with_values(overrides) for name, overrides in variants.items()}  # fail before training
    with experiment_folder(Path(out_dir), "variants", overwrite) as out_dir:
        dataset = load_training_data(Path(data_dir), cfg)
        rows = []
        with Progress("variant", len(configs), quiet) as progress:
            for name, variant_cfg in configs.items():
                progress.step(f"{name} ({_overrides_text(variants[name])})")
                result = train(data_dir, out_dir / "variants" / name, variant_cfg, quiet=quiet, dataset=dataset,
                               overwrite=True, origin=RunOrigin(command, preset))
                m = result.metrics
                rows.append({
                    "variant": name,
                    "overrides": _overrides_text(variants[name]),
                    **metric_row(m),
                    "parameters": m["parameters"],
                    "best_epoch": m["best_epoch"],
                    "train_seconds": m["train_seconds"],
                    "encode_seconds": m["encode_seconds"],
                    "n_val": m["n_val"],
                })
        significance = _add_deltas(rows, out_dir)
        write_table(rows, out_dir, note=significance)
        from mmsent.reporting.experiment_plots import plot_metric_bars

        plot_metric_bars(rows, "variant", ["accuracy", "macro_f1"], out_dir / "variants.png", "Variants (validation)")
        write_manifest(out_dir, "variants", command, variants=variants, metrics=METRICS, significance=significance)
    return rows


def _overrides_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(base)"


def _add_deltas(rows: list[dict], out_dir: Path) -> str | None:
    """Each variant's paired difference to the first variant (the reference) on the same validation posts."""
    if len(rows) < 2:
        return None
    predictions = {r["variant"]: from_run(out_dir / "variants" / r["variant"]) for r in rows}
    reference = predictions[rows[0]["variant"]]
    for i, row in enumerate(rows):
        row.update(delta_columns(reference, predictions[row["variant"]], is_reference=i == 0))
    return note(rows[0]["variant"], len(reference.guids))
