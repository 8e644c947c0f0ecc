"""Seed stability: retrain with several seeds; per-seed metrics, mean, std and a t-based 95% confidence interval."""

from __future__ import annotations

import math
from pathlib import Path

from mmsent.api import load_training_data, train
from mmsent.config import Config
from mmsent.engine.metrics import metric_row
from mmsent.errors import MmsentError
from mmsent.progress import Progress
from mmsent.run_folder import RunOrigin, experiment_folder, write_manifest
from mmsent.stats import t_interval
from mmsent.tables import write_table


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MmsentError(f"--seeds {text!r}: give integers separated by commas, e.g. 42,123,2024") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise MmsentError(f"--seeds {text!r}: give at least two different seeds")
    return seeds


def summarise(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean, sample std and the half-width of the t-distribution confidence interval of the mean."""
    interval = t_interval(values, confidence)
    return interval.mean, interval.std, interval.half_width


def standard_error_note(accuracy: float, n: int) -> str:
    """What the validation size alone allows: the binomial standard error sqrt(p(1-p)/n) of accuracy."""
    se = math.sqrt(accuracy * (1 - accuracy) / n)
    se400 = math.sqrt(accuracy * (1 - accuracy) / 400)
    return (
        f"Note: with n={n} validation samples and accuracy {accuracy:.3f}, the standard error of accuracy is "
        f"sqrt(p(1-p)/n) = {100 * se:.1f} points (a 400-sample validation set: about {100 * se400:.1f} points, "
        "i.e. about 2). Differences between seeds or settings smaller than that are within noise."
    )


def run_seeds(
    data_dir: Path, out_dir: Path, cfg: Config, seeds: list[int], command: str, vary_split: bool = False,
    quiet: bool = True, overwrite: bool = False, preset: str | None = None,
) -> tuple[list[dict], str]:
    """Train once per seed into out_dir/seed-N; write results.csv/.md (+ note), seeds.png, experiment.json."""
    with experiment_folder(Path(out_dir), "seeds", overwrite) as out_dir:
        dataset = load_training_data(Path(data_dir), cfg)
        rows, n_val = [], 0
        with Progress("seed", len(seeds), quiet) as progress:
            for seed in seeds:
                progress.step(f"{seed}{' (training and split seed)' if vary_split else ''}")
                values = {"train.seed": seed, **({"data.split_seed": seed} if vary_split else {})}
                result = train(data_dir, out_dir / f"seed-{seed}", cfg.with_values(values), quiet=quiet,
                               dataset=dataset, overwrite=True, origin=RunOrigin(command, preset))
                m = result.metrics
                n_val = m["n_val"]
                rows.append({"seed": str(seed), **metric_row(m), "best_epoch": m["best_epoch"],
                             "train_seconds": m["train_seconds"]})
        metrics = [k for k in metric_row({}) if all(r[k] is not None for r in rows)]
        mean, std, half = {}, {}, {}
        for k in metrics:
            mean[k], std[k], half[k] = summarise([r[k] for r in rows])
        summary = [
            {"seed": "mean", **mean},
            {"seed": "std", **std},
            {"seed": "ci95_low", **{k: mean[k] - half[k] for k in metrics}},
            {"seed": "ci95_high", **{k: mean[k] + half[k] for k in metrics}},
        ]
        note = standard_error_note(mean["accuracy"], n_val)
        write_table(rows + summary, out_dir, note=note)
        from mmsent.reporting.experiment_plots import plot_seeds

        plot_seeds(rows, mean, half, metrics, out_dir / "seeds.png")
        write_manifest(out_dir, "seeds", command, seeds=seeds, vary_split=vary_split, n_val=n_val, note=note,
                       mean=mean, std=std, ci95_half_width=half)
    return rows + summary, note
