"""Figures of the bad-case analysis: error rate per bucket with its count and 95% interval."""

from __future__ import annotations

from pathlib import Path

from mmsent.reporting.plots import _save, plt

FIGSIZE = (6.0, 3.2)  # one size for every factor: side by side in the report they line up


def plot_error_rates(rows: list[dict], title: str, path: Path, overall: float | None = None) -> Path:
    """Horizontal bars of error_rate per bucket (first bucket on top), Wilson 95% whiskers, rate and n beside each."""
    labels = [str(r["bucket"]) for r in rows]
    rates = [r["error_rate"] for r in rows]
    # clipped at 0: at a rate of 0 or 1 the Wilson bound equals the rate up to rounding, which matplotlib refuses
    lower = [max(0.0, r["error_rate"] - r["ci_low"]) for r in rows]
    upper = [max(0.0, r["ci_high"] - r["error_rate"]) for r in rows]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    y = list(range(len(rows)))[::-1]
    ax.barh(y, rates, xerr=[lower, upper], capsize=3, color="tab:red", alpha=0.7, height=0.6)
    for yi, r in zip(y, rows, strict=True):
        ax.text(r["ci_high"] + 0.01, yi, f"{r['error_rate']:.0%} (n={r['n']})", va="center", fontsize=8)
    if overall is not None:
        ax.axvline(overall, color="gray", linestyle="--", linewidth=0.8, label=f"overall {overall:.0%}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, labels, fontsize=9)
    ax.set(xlabel="error rate (out of fold), 95% interval", title=title,
           xlim=(0, min(1.0, max([r["ci_high"] for r in rows] + [0.1]) + 0.2)))
    return _save(fig, path)
