"""Robustness: a trained run evaluated on its validation split with images or texts perturbed at evaluation time."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

from mmsent.api import encode_labels, extract_features, load_run
from mmsent.data.images import open_image
from mmsent.data.records import Record, records_for_guids
from mmsent.engine.metrics import METRICS, compute_metrics, metric_row
from mmsent.errors import MmsentError
from mmsent.experiments.perturb import PERTURBATIONS, Perturbation
from mmsent.run_folder import RunFolder, experiment_folder, write_manifest
from mmsent.tables import write_table


def parse_levels(specs: list[str]) -> dict[str, tuple[float, ...]]:
    """`NAME=L1,L2,...` items -> {perturbation: levels}."""
    levels = {}
    for spec in specs:
        name, _, text = spec.partition("=")
        if name not in PERTURBATIONS:
            raise MmsentError(f"--levels {spec!r}: unknown perturbation {name!r}; use one of {', '.join(PERTURBATIONS)}")
        try:
            levels[name] = tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise MmsentError(f"--levels {spec!r}: levels must be numbers, e.g. {name}=1,2,4") from None
        if not levels[name]:
            raise MmsentError(f"--levels {spec!r}: give at least one level")
    return levels


def record_seed(seed: int, guid: str, name: str, level: float) -> int:
    """A per-record seed: the same record, perturbation and level always get the same noise."""
    digest = hashlib.sha256(f"{seed}|{guid}|{name}|{level}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def perturb_record(record: Record, p: Perturbation, level: float, seed: int, max_pixels: int) -> Record:
    """A copy of record with its image (as in-memory PNG bytes) or text perturbed."""
    s = record_seed(seed, record.guid, p.name, level)
    if p.modality == "text":
        return dataclasses.replace(record, text=p.fn(record.text, level, s))
    img = p.fn(open_image(record.image_source(), max_pixels=max_pixels), level, s)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # lossless, so only the perturbation changes the pixels
    return dataclasses.replace(record, image_bytes=buf.getvalue())


def run_robustness(
    run_dir: Path,
    data_dir: Path,
    out_dir: Path,
    command: str,
    names: list[str] | None = None,
    levels: dict[str, tuple[float, ...]] | None = None,
    seed: int = 0,
    quiet: bool = True,
    overwrite: bool = False,
) -> list[dict]:
    """Clean and perturbed metrics on the run's validation split; write results.csv/.md, robustness.png, experiment.json."""
    unknown = [n for n in names or [] if n not in PERTURBATIONS]
    if unknown:
        raise MmsentError(f"unknown perturbation {unknown[0]!r}; use one of {', '.join(PERTURBATIONS)}")
    run = load_run(run_dir)
    val_guids = RunFolder.open(run_dir).split().val
    if not val_guids:
        raise MmsentError(f"{run_dir}: the run's validation split is empty")
    with experiment_folder(Path(out_dir), "robustness", overwrite) as out_dir:
        records = records_for_guids(data_dir, val_guids, run.cfg.data.max_image_pixels)
        rows = _perturbed_rows(run, records, names or list(PERTURBATIONS), levels or {}, seed, quiet)
        write_table(rows, out_dir)
        from mmsent.reporting.experiment_plots import plot_robustness

        plot_robustness(rows, "macro_f1", out_dir / "robustness.png")
        write_manifest(out_dir, "robustness", command, run=str(run_dir), n_val=len(records), seed=seed,
                       levels={n: list((levels or {}).get(n, PERTURBATIONS[n].levels)) for n in names or PERTURBATIONS},
                       metrics=METRICS)
    return rows


def _perturbed_rows(run, records: list[Record], names: list[str], levels: dict[str, tuple[float, ...]], seed: int,
                    quiet: bool) -> list[dict]:
    """The clean row, then one row per perturbation and level (only the perturbed modality is encoded again)."""
    y = encode_labels(records)
    clean_feats = run.features(records, quiet=quiet)  # the cached clean features, computed once
    clean = metric_row(compute_metrics(y, run.predict_features(clean_feats)))
    rows = [{"perturbation": "clean", "modality": "-", "level": 0.0, "unit": "", **clean,
             **{f"drop_{k}": 0.0 for k in ("accuracy", "macro_f1")}}]
    modalities = {e.modality for e in run.encoders.values()}
    for name in names:
        p = PERTURBATIONS[name]
        if p.modality not in modalities:
            continue  # e.g. image perturbations of a text-only run change nothing
        # only the perturbed modality's encoders run again, uncached; the rest reuse the clean features
        encoders = {n: e for n, e in run.encoders.items() if e.modality == p.modality}
        for level in levels.get(name, p.levels):
            perturbed = [perturb_record(r, p, level, seed, run.cfg.data.max_image_pixels) for r in records]
            feats, _ = extract_features(encoders, perturbed, run.cfg, quiet=quiet, use_cache=False)
            row = metric_row(compute_metrics(y, run.predict_features({**clean_feats, **feats})))
            rows.append({"perturbation": name, "modality": p.modality, "level": level, "unit": p.unit, **row,
                         "drop_accuracy": clean["accuracy"] - row["accuracy"],
                         "drop_macro_f1": clean["macro_f1"] - row["macro_f1"]})
            if not quiet:
                print(f"{name} {level:g}: macro-F1 {row['macro_f1']:.4f} (clean {clean['macro_f1']:.4f})")
    return rows
