"""Retraining a run with augmented copies on the same split and seed, judged on the same untouched validation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmsent import LABELS
from mmsent.data.augmented import manifest_path
from mmsent.errors import MmsentError
from mmsent.experiments.significance import differences, from_probs, from_run, note
from mmsent.run_folder import RunFolder, RunOrigin, create_run, read_manifest
from mmsent.stats import PairedDifference
from mmsent.tables import write_table


@dataclass
class RetrainResult:
    run_dir: Path
    before: dict
    after: dict
    rows: list[dict]


def _data_dir(augment: list[Path], data_dir: Path | None) -> Path:
    """--data, else the data folder that `mmsent augment` recorded."""
    if data_dir is not None:
        return Path(data_dir)
    for folder in augment:
        manifest = read_manifest(manifest_path(folder).parent) or {}
        if manifest.get("data_dir"):
            return Path(manifest["data_dir"])
    raise MmsentError("cannot tell the data set folder: pass --data")


def comparison_rows(before: dict, after: dict, paired: list[PairedDifference] | None = None) -> list[dict]:
    """metric, before, after, delta on the same validation split; paired intervals where the scores have one."""
    pairs = [(k, before.get(k), after.get(k)) for k in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall")]
    pairs += [(f"f1_{lab}", before["per_class"][lab]["f1"], after["per_class"][lab]["f1"]) for lab in LABELS]
    pairs += [(k, before.get(k), after.get(k)) for k in ("n_val", "n_train", "best_epoch")]
    rows = [{"metric": m, "before": b, "after": a, "delta": (a - b) if None not in (a, b) else None} for m, b, a in pairs]
    intervals = {d.score: d for d in paired or []}
    for row in rows:
        if row["metric"] in intervals:
            row["delta_ci"] = intervals[row["metric"]].interval_text()
            row["verdict"] = intervals[row["metric"]].verdict()
    return rows


def retrain(
    run_dir: Path, augment: list[Path], out_dir: Path, data_dir: Path | None = None,
    quiet: bool = False, command: str = "", overwrite: bool = False,
) -> RetrainResult:
    """Train RUN's config on RUN's split (same seed) plus the copies of `augment`; compare on RUN's validation split.

    The new run folder also holds the before / after table (results.csv/.md); it is published complete.
    """
    from mmsent.api import load_training_data, train_into

    base = RunFolder.open(run_dir)
    base_cfg = base.config()
    # absolute paths, so that the new run's config.yaml reproduces it from anywhere
    cfg = base_cfg.with_values({"data.augment": base_cfg.data.augment + [str(manifest_path(a).resolve()) for a in augment]})
    data_dir = _data_dir([Path(a) for a in augment], data_dir)
    split, before = base.split(), base.metrics()
    with create_run(Path(out_dir), overwrite) as writer:
        dataset = load_training_data(data_dir, cfg)
        by_guid = {r.guid: r for r in dataset.train}
        missing = [g for g in split.val if g not in by_guid]
        if missing:
            raise MmsentError(f"{len(missing)} validation guids of {run_dir} are not in {data_dir}/train.txt "
                              f"(e.g. {missing[:5]}): pass the --data the run was trained on")
        # RUN's own copies (if any) come back through its data.augment, not through split.json
        train_records = [by_guid[g] for g in split.train if g in by_guid]
        val_records = [by_guid[g] for g in split.val]
        result = train_into(writer, data_dir, cfg, quiet, dataset=dataset, split=(train_records, val_records),
                            origin=RunOrigin(command, preset=base.preset, kind="retrain"))
        paired = differences(from_run(run_dir), from_probs(val_records, result.model.predict_proba(val_records, True)))
        rows = comparison_rows(before, result.metrics, paired)
        write_table(rows, writer.path, note=note(str(run_dir), len(val_records)))
        writer.update_manifest(base_run=str(run_dir), augment=cfg.data.augment,
                               n_augmented=result.metrics["n_train"] - len(train_records),
                               before={k: before[k] for k in ("accuracy", "macro_f1")},
                               after={k: result.metrics[k] for k in ("accuracy", "macro_f1")})
    return RetrainResult(Path(out_dir), before, result.metrics, rows)


def format_comparison(rows: list[dict]) -> str:
    """The before / after table as aligned text for the terminal."""
    def cell(v) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"{'metric':<16}{'before':>10}{'after':>10}{'delta':>10}  95% paired bootstrap interval"]
    for r in rows:
        delta = r["delta"]
        delta_s = "" if delta is None else (f"{delta:+.4f}" if isinstance(delta, float) else f"{delta:+d}")
        interval = f"  {r['delta_ci']} ({r['verdict']})" if r.get("delta_ci") else ""
        lines.append(f"{r['metric']:<16}{cell(r['before']):>10}{cell(r['after']):>10}{delta_s:>10}{interval}")
    return "\n".join(lines)
