"""Figures of a run: learning curves, confusion matrix, one-vs-rest ROC curves."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402


def _wrap_to_width(text_artist, width_px: float, renderer) -> None:
    """Break a title over lines until it is no wider than width_px (a long title in a narrow figure)."""
    text = text_artist.get_text()
    if not text or text_artist.get_window_extent(renderer).width <= width_px:
        return
    chars = len(text)
    while chars > 8 and text_artist.get_window_extent(renderer).width > width_px:
        chars = int(chars * 0.85)
        text_artist.set_text("\n".join(textwrap.wrap(text, chars)))


def _fit_titles(fig) -> None:
    """Wrap the figure's and each panel's title to its width, so that tight_layout has nothing to clip."""
    renderer = fig.canvas.get_renderer()
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None:
        _wrap_to_width(suptitle, 0.96 * fig.bbox.width, renderer)
    for ax in fig.axes:
        if ax.axison:
            _wrap_to_width(ax.title, 1.1 * ax.get_window_extent(renderer).width, renderer)


def _save(fig, path: Path | BinaryIO) -> Path | BinaryIO:
    """Write the figure as PNG to a path (folders made) or a binary file, titles fitted, then close it."""
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    _fit_titles(fig)
    fig.tight_layout()
    # a tight bounding box: whatever still reaches past the canvas (a long legend, a label) widens it instead
    fig.savefig(path, dpi=110, format="png", bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return path


def plot_history(history: list[dict], path: Path, best_epoch: int | None = None) -> Path:
    """Training / validation loss and validation macro-F1 per epoch; one line per member of an ensemble.

    An ensemble's members early-stop on their own fold of the training split, so their "validation"
    curves are on those folds, not on the run's validation split.
    """
    members = sorted({int(h.get("member", 0)) for h in history})
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for m in members:
        rows = [h for h in history if int(h.get("member", 0)) == m]
        epochs = [h["epoch"] for h in rows]
        tag = f" (head {m})" if len(members) > 1 else ""
        alpha = 1.0 if len(members) == 1 else 0.6
        ax_loss.plot(epochs, [h["train_loss"] for h in rows], color="tab:blue", alpha=alpha,
                     label="train (weighted)" if m == members[0] else None)
        ax_loss.plot(epochs, [h["val_loss"] for h in rows], color="tab:orange", alpha=alpha,
                     label="early-stopping split" if m == members[0] else None)
        ax_f1.plot(epochs, [h["val_macro_f1"] for h in rows], color="tab:green", alpha=alpha,
                   label=f"macro-F1{tag}" if len(members) == 1 or m == members[0] else None)
        if len(members) == 1:
            ax_f1.plot(epochs, [h["val_accuracy"] for h in rows], label="accuracy", color="tab:gray", alpha=0.7)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_loss.legend()
    if best_epoch and len(members) == 1:
        ax_f1.axvline(best_epoch, color="tab:red", linestyle=":", label=f"best epoch {best_epoch}")
    title = "Early-stopping split" if len(members) == 1 else f"Each of {len(members)} heads on its own fold"
    ax_f1.set(xlabel="epoch", ylabel="score", title=title)
    ax_f1.legend()
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path) -> Path:
    """Counts with row-normalised shading (true class per row)."""
    cm = np.asarray(matrix)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC curve and AUC for each class."""
    fig, ax = plt.subplots(figsize=(4.6, 4))
    for k, label in enumerate(labels):
        positives = y_true == k
        if positives.all() or not positives.any():
            continue  # undefined for a class absent (or alone) in y_true
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one vs rest")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_metric_bars(rows: list[dict], label_key: str, metrics: list[str], path: Path, title: str = "") -> Path:
    """Grouped bars: one group per row (model / variant), one bar per metric."""
    labels = [str(r[label_key]) for r in rows]
    x = np.arange(len(labels))
    width = 0.8 / max(len(metrics), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) + 2), 4))
    for k, metric in enumerate(metrics):
        values = [float(r[metric]) for r in rows]
        bars = ax.bar(x + (k - (len(metrics) - 1) / 2) * width, values, width, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set(ylim=(0, 1.1), ylabel="score", title=title or "Validation metrics")
    ax.legend(ncol=len(metrics), fontsize=8, loc="upper center")
    return _save(fig, path)


def plot_compare_curves(histories: dict[str, list[dict]], path: Path) -> Path:
    """Validation macro-F1 per epoch of several runs on one figure."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        ax.plot([h["epoch"] for h in history], [h["val_macro_f1"] for h in history], label=name)
    ax.set(xlabel="epoch", ylabel="validation macro-F1", title="Validation curves")
    ax.legend(fontsize=8)
    return _save(fig, path)


CACHE_COLOURS = {"cold": "tab:red", "partly cached": "tab:orange", "cached": "tab:green"}


def plot_time_vs_score(rows: list[dict], path: Path, score: str = "macro_f1") -> Path:
    """The score against head training time (left), and encoding time apart, cold or from the cache (right).

    Encoding with an empty feature cache takes minutes where a warm one takes seconds, so the two are
    never put on one axis: the bars say which rows were encoded cold.
    """
    fig, (ax, ax_enc) = plt.subplots(1, 2, figsize=(11, max(3.6, 0.45 * len(rows) + 1.5)),
                                     gridspec_kw={"width_ratios": [3, 2]})
    for r in rows:
        x, y = float(r["train_seconds"]), float(r[score])
        ax.scatter(x, y, s=30)
        ax.annotate(str(r["preset"]), (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    seconds = [float(r["train_seconds"]) for r in rows]
    if min(seconds) > 0 and max(seconds) / min(seconds) > 20:
        ax.set_xscale("log")
    ax.set(xlabel="head training time (s)", ylabel=f"validation {score.replace('_', '-')}", title="Score vs training time")
    ax.margins(x=0.15, y=0.15)
    names = [str(r["preset"]) for r in rows][::-1]
    encode = [float(r["encode_seconds"]) for r in rows][::-1]
    states = [str(r.get("encode_cache") or "cached") for r in rows][::-1]
    bars = ax_enc.barh(names, encode, color=[CACHE_COLOURS.get(s, "tab:gray") for s in states])
    ax_enc.bar_label(bars, labels=[f"{e:.0f} s, {s}" if e >= 10 else f"{e:.1f} s, {s}" for e, s in zip(encode, states)],
                     fontsize=7, padding=2)
    if min(encode) > 0 and max(encode) / min(encode) > 20:
        ax_enc.set_xscale("log")
    ax_enc.margins(x=0.35)
    ax_enc.tick_params(axis="y", labelsize=8)
    ax_enc.set(xlabel="encoding time (s)", title="Encoding: cold or cached")
    return _save(fig, path)


def plot_class_counts(counts: dict[str, int], out: Path | BinaryIO) -> None:
    """Bar chart of posts per class (a path, or a binary file such as BytesIO for embedding)."""
    fig, ax = plt.subplots(figsize=(4.6, 3))
    bars = ax.bar(list(counts), list(counts.values()), color=["tab:red", "tab:gray", "tab:green"][: len(counts)])
    ax.bar_label(bars)
    ax.set(ylabel="posts", title="Labelled posts per class")
    ax.margins(y=0.15)
    _save(fig, out)


def plot_reliability(rows: list[dict], ece: float, path: Path) -> Path:
    """Accuracy against confidence per bin (a calibrated model lies on the diagonal), with the bins' sizes."""
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4.8, 5.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    filled = [r for r in rows if r["n"]]
    centres = [(r["low"] + r["high"]) / 2 for r in rows]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    ax.plot([r["confidence"] for r in filled], [r["accuracy"] for r in filled], marker="o", label="model")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    ax_n.bar(centres, [r["n"] for r in rows], width=0.09, color="tab:gray")
    ax_n.set(xlabel="confidence (top probability)", ylabel="posts")
    return _save(fig, path)
