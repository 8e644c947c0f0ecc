"""Robustness: a trained run evaluated on its validation split with images or texts perturbed at evaluation time."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from pathlib import Path

import numpy as np

from mmsent import LABELS
from mmsent.api import encode_labels, extract_features, load_run
from mmsent.data.images import open_image
from mmsent.data.records import Record, records_for_guids
from mmsent.engine.metrics import METRICS, compute_metrics, metric_row
from mmsent.errors import MmsentError
from mmsent.experiments.perturb import PERTURBATIONS, Perturbation
from mmsent.experiments.significance import drop_columns, from_probs
from mmsent.progress import Progress, clock
from mmsent.run_folder import RunFolder, experiment_folder, write_manifest
from mmsent.stats import BOOTSTRAP_RESAMPLES, bootstrap_se
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
        plan = evaluation_plan(run, names or list(PERTURBATIONS), levels or {})
        rows, clean_se = _perturbed_rows(run, records, plan, seed, quiet)
        note = significance_note(len(records))
        write_table(rows, out_dir, note=note)
        from mmsent.reporting.experiment_plots import plot_robustness

        plot_robustness(rows, "macro_f1", out_dir / "robustness.png", clean_se)
        write_manifest(out_dir, "robustness", command, run=str(run_dir), n_val=len(records), seed=seed,
                       levels={name: list(lv) for name, lv in plan}, metrics=METRICS,
                       clean_macro_f1_se=clean_se, significance=note)
    return rows


def evaluation_plan(run, names: list[str], levels: dict[str, tuple[float, ...]]) -> list[tuple[str, tuple[float, ...]]]:
    """(perturbation, levels mild to harsh) for each perturbation of a modality the run has."""
    modalities = {e.modality for e in run.encoders.values()}
    # e.g. image perturbations of a text-only run change nothing
    return [(name, PERTURBATIONS[name].mild_to_harsh(levels.get(name, PERTURBATIONS[name].levels)))
            for name in names if PERTURBATIONS[name].modality in modalities]


def significance_note(n: int) -> str:
    return (f"drop_macro_f1_ci: 95% paired bootstrap interval of the drop on the same {n} posts "
            f"({BOOTSTRAP_RESAMPLES:,} resamples); vs_clean says whether the change is beyond noise.")


def estimate_seconds(run, records: list[Record], plan: list[tuple[str, tuple[float, ...]]], seed: int,
                     pilot: int = 16) -> float:
    """The time of the whole plan, from perturbing and encoding a few posts once per modality."""
    per_post: dict[str, float] = {}
    for name, lv in plan:
        p = PERTURBATIONS[name]
        if p.modality in per_post:
            continue
        sample = records[:pilot]
        t0 = time.perf_counter()
        _perturbed_features(run, sample, p, lv[0], seed, quiet=True)
        per_post[p.modality] = (time.perf_counter() - t0) / max(len(sample), 1)
    return sum(per_post[PERTURBATIONS[name].modality] * len(records) * len(lv) for name, lv in plan)


def _perturbed_features(run, records: list[Record], p: Perturbation, level: float, seed: int,
                        quiet: bool) -> dict[str, np.ndarray]:
    """Features of the perturbed modality's encoders, run again without the cache (the rest are reused)."""
    encoders = {n: e for n, e in run.encoders.items() if e.modality == p.modality}
    perturbed = [perturb_record(r, p, level, seed, run.cfg.data.max_image_pixels) for r in records]
    feats, _ = extract_features(encoders, perturbed, run.cfg, quiet=quiet, use_cache=False)
    return feats


def _perturbed_rows(run, records: list[Record], plan: list[tuple[str, tuple[float, ...]]], seed: int,
                    quiet: bool) -> tuple[list[dict], float]:
    """The clean row, then one row per perturbation and level; and the standard error of the clean macro-F1."""
    y = encode_labels(records)
    clean_feats = run.features(records, quiet=quiet)  # the cached clean features, computed once
    clean_probs = run.predict_features(clean_feats)
    clean, clean_pred = metric_row(compute_metrics(y, clean_probs)), from_probs(records, clean_probs)
    rows = [{"perturbation": "clean", "modality": "-", "level": 0.0, "unit": "", **clean,
             **{f"drop_{k}": 0.0 for k in ("accuracy", "macro_f1")}}]
    total = sum(len(lv) for _, lv in plan)
    with Progress("perturbation", total, quiet) as progress:
        if total and not quiet:
            progress.note(f"robustness: {total} evaluations of {len(records)} validation posts, each encoding the "
                          f"perturbed modality again without the cache: about "
                          f"{clock(estimate_seconds(run, records, plan, seed))} (from a pilot of a few posts)")
        for name, lv in plan:
            p = PERTURBATIONS[name]
            for level in lv:
                progress.step(f"{name} {level:g}")
                feats = _perturbed_features(run, records, p, level, seed, quiet)
                probs = run.predict_features({**clean_feats, **feats})
                row = metric_row(compute_metrics(y, probs))
                rows.append({"perturbation": name, "modality": p.modality, "level": level, "unit": p.unit, **row,
                             "drop_accuracy": clean["accuracy"] - row["accuracy"],
                             "drop_macro_f1": clean["macro_f1"] - row["macro_f1"],
                             **drop_columns(clean_pred, from_probs(records, probs))})
    return rows, bootstrap_se(clean_pred.y, clean_pred.pred, len(LABELS))
