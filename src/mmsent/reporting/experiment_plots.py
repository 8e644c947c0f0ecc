"""Figures of the optimisation experiments: search trials, metric bars, seed spread, robustness curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmsent.reporting.plots import _save, plt


def plot_search(rows: list[dict], objective: str, keys: list[str], trials_path: Path, params_path: Path) -> None:
    """The objective per trial (with the running best) and against each hyperparameter."""
    done = sorted((r for r in rows if r.get(objective) is not None), key=lambda r: r["trial"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if done:
        x = [r["trial"] for r in done]
        y = [r[objective] for r in done]
        ax.scatter(x, y, label="trial")
        ax.step(x, np.maximum.accumulate(y), where="post", color="tab:red", label="best so far")
        ax.legend()
    ax.set(xlabel="trial", ylabel=objective, title=f"Search: {objective} per trial")
    _save(fig, trials_path)

    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        values = [r.get(key) for r in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and values:
            ax.scatter(values, [r[objective] for r in done])
            if all(v > 0 for v in values) and max(values) / min(values) >= 10:
                ax.set_xscale("log")
        elif values:
            labels = sorted({str(v) for v in values})
            ax.scatter([labels.index(str(v)) for v in values], [r[objective] for r in done])
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        ax.set(xlabel=key, ylabel=objective)
    fig.suptitle(f"{objective} per hyperparameter")
    _save(fig, params_path)


def plot_metric_bars(rows: list[dict], name_key: str, metrics: list[str], path: Path, title: str) -> Path:
    """Grouped bars: one group per row (variant, ablation setting), one bar per metric."""
    names = [str(r[name_key]) for r in rows]
    width = 0.8 / max(len(metrics), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) * max(len(metrics), 1) * 0.5 + 2), 3.8))
    x = np.arange(len(names))
    for i, metric in enumerate(metrics):
        values = [float(r[metric]) if r.get(metric) not in (None, "") else np.nan for r in rows]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0)
    ax.set(ylabel="score", title=title, ylim=(0, 1.05))
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_seeds(rows: list[dict], mean: dict, half_width: dict, metrics: list[str], path: Path) -> Path:
    """Each seed's score per metric, with the mean and its 95% confidence interval."""
    fig, ax = plt.subplots(figsize=(1.4 * len(metrics) + 2, 3.8))
    for i, metric in enumerate(metrics):
        ys = [r[metric] for r in rows if r.get(metric) is not None]
        ax.scatter(np.full(len(ys), i) + np.linspace(-0.12, 0.12, len(ys)), ys, color="tab:blue", s=18,
                   label="seed" if i == 0 else None)
        if mean.get(metric) is not None:
            ax.errorbar(i + 0.25, mean[metric], yerr=half_width.get(metric) or 0.0, fmt="o", color="tab:red",
                        capsize=4, label="mean ± 95% CI" if i == 0 else None)
    ax.set_xticks(range(len(metrics)), metrics, rotation=20)
    ax.set(ylabel="score", title="Seed stability")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_robustness(rows: list[dict], metric: str, path: Path, clean_se: float | None = None) -> Path:
    """The metric per perturbation level, mild to harsh, on one shared y-axis; the clean score with its standard error.

    One y-axis for every panel, so that a change inside the clean score's noise band looks as small as it is.
    """
    clean = next((float(r[metric]) for r in rows if r["perturbation"] == "clean"), None)
    names = list(dict.fromkeys(r["perturbation"] for r in rows if r["perturbation"] != "clean"))
    cols = min(3, max(len(names), 1))
    nrows = (len(names) + cols - 1) // cols or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols, 3.1 * nrows), squeeze=False, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    values = [float(r[metric]) for r in rows] + ([clean - (clean_se or 0), clean + (clean_se or 0)] if clean else [])
    for ax, name in zip(axes.flat, names, strict=False):
        pts = [r for r in rows if r["perturbation"] == name]  # written mild to harsh
        ax.plot(range(1, len(pts) + 1), [float(r[metric]) for r in pts], marker="o", color="tab:blue")
        if clean is not None:
            ax.plot([0], [clean], marker="s", color="black")
            ax.axhline(clean, color="black", linestyle="--", linewidth=0.8, label="clean")
            if clean_se:
                ax.axhspan(clean - clean_se, clean + clean_se, color="gray", alpha=0.2, label="clean ± 1 SE")
        ax.set_xticks(range(len(pts) + 1), ["clean"] + [f"{float(r['level']):g}" for r in pts], fontsize=8)
        ax.set_title(f"{name} ({pts[0]['modality']})", fontsize=10)
        ax.set_xlabel(f"{pts[0].get('unit') or 'level'}, mild to harsh", fontsize=8)
    for row_axes in axes:
        row_axes[0].set_ylabel(metric.replace("_", "-"))
    if values:
        span = max(values) - min(values)
        axes[0][0].set_ylim(min(values) - 0.1 * span - 0.005, max(values) + 0.1 * span + 0.005)
    if names:
        axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{metric.replace('_', '-')} under perturbation (validation)")
    return _save(fig, path)


def plot_cv(fold_rows: list[dict], paired: list[dict], scores: list[str], path: Path) -> Path:
    """Each candidate's fold scores with their mean (top), and the paired differences with their 95% CI (bottom)."""
    names = list(dict.fromkeys(r["candidate"] for r in fold_rows))
    rows_of_plots = 2 if paired else 1
    fig, axes = plt.subplots(rows_of_plots, len(scores), figsize=(3.0 * len(scores), 3.2 * rows_of_plots),
                             squeeze=False)
    for ax, score in zip(axes[0], scores, strict=True):
        for i, name in enumerate(names):
            values = [r[score] for r in fold_rows if r["candidate"] == name]
            ax.scatter(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values, s=10, alpha=0.6)
            ax.hlines(np.mean(values), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(score.replace("_", " "), fontsize=10)
    axes[0][0].set_ylabel("held-out fold score")
    if paired:
        others = list(dict.fromkeys(r["candidate"] for r in paired))
        for ax, score in zip(axes[1], scores, strict=True):
            rows = [next(r for r in paired if r["candidate"] == n and r["score"] == score) for n in others]
            means = [r["difference"] for r in rows]
            errors = [[m - r["ci_low"] for m, r in zip(means, rows)], [r["ci_high"] - m for m, r in zip(means, rows)]]
            ax.errorbar(range(len(others)), means, yerr=errors, fmt="o", capsize=4)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(range(len(others)), others, rotation=30, ha="right", fontsize=8)
        axes[1][0].set_ylabel(f"difference to {paired[0]['reference']}")
    fig.suptitle("Cross-validation on train.txt (held-out folds)")
    return _save(fig, path)
