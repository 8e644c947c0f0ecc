"""Figures of the bad-case analysis: error rate per bucket with its count and 95% interval."""

from __future__ import annotations

from pathlib import Path

from mmsent.reporting.plots import _save, plt


def plot_error_rates(rows: list[dict], title: str, path: Path, overall: float | None = None) -> Path:
    """Bars of error_rate per bucket, Wilson 95% whiskers, and n written on each bar."""
    labels = [str(r["bucket"]) for r in rows]
    rates = [r["error_rate"] for r in rows]
    lower = [r["error_rate"] - r["ci_low"] for r in rows]
    upper = [r["ci_high"] - r["error_rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.6))
    ax.bar(range(len(rows)), rates, yerr=[lower, upper], capsize=4, color="tab:red", alpha=0.7)
    for i, r in enumerate(rows):
        ax.text(i, r["ci_high"] + 0.02, f"n={r['n']}", ha="center", fontsize=8)
    if overall is not None:
        ax.axhline(overall, color="gray", linestyle="--", linewidth=0.8)
        title = f"{title} (overall {overall:.1%}, dashed)"
    ax.set_xticks(range(len(rows)), labels, rotation=20 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center")
    ax.set(ylabel="error rate (out of fold)", title=title, ylim=(0, min(1.15, max([r["ci_high"] for r in rows] + [0.1]) + 0.12)))
    return _save(fig, path)
