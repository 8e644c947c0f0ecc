"""README tables from experiment folders: every number read from the folder, with the command that made it.

Usage: python benchmarks/readme_results.py runs/cv-models runs/compare runs/seeds ...
Prints, per folder, the command and one Markdown table. A `mmsent cv` folder: each candidate's mean
score with its 95% interval, and its paired difference to the reference (the first candidate) with
interval and verdict; times are left out (candidates run one after another on a shared machine, so
theirs are not comparable). Any other experiment (compare, variants, seeds, ablation, robustness,
search): the key columns the report shows first (with the paired differences where the rows have
them), numbers formatted as in the report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmsent.reporting.report import KEY_COLUMNS, tables_of
from mmsent.tables import read_table

SCORES = [("macro_f1", "macro-F1"), ("accuracy", "accuracy"), ("weighted_f1", "weighted F1"),
          ("f1_neutral", "neutral F1")]


def cell(row: dict, score: str) -> str:
    return f"{float(row[score]):.4f} {row[f'{score}_ci']}"


def delta(paired: list[dict], candidate: str, score: str) -> str:
    row = next((r for r in paired if r["candidate"] == candidate and r["score"] == score), None)
    if row is None:
        return "reference"
    mark = {"better": " **better**", "worse": " *worse*", "within noise": ""}[row["verdict"]]
    return f"{float(row['difference']):+.4f} [{float(row['ci_low']):+.4f}, {float(row['ci_high']):+.4f}]{mark}"


def cv_table(folder: Path) -> str:
    """The command and the table of one cv folder."""
    manifest = json.loads((folder / "experiment.json").read_text(encoding="utf-8"))
    summary = read_table(folder / "results.csv")
    paired = read_table(folder / "paired.csv") if (folder / "paired.csv").is_file() else []
    reference = manifest["reference"]
    head = ["candidate", *[f"{label} [95% CI]" for _, label in SCORES], "ECE",
            f"Δ macro-F1 vs {reference}", f"Δ accuracy vs {reference}"]
    lines = [f"`{manifest['command']}` ({manifest['folds']} folds x {manifest['repeats']} repeats, n={manifest['n']})",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        name = row["candidate"]
        cells = [name, *[cell(row, s) for s, _ in SCORES], f"{float(row['ece']):.3f}",
                 delta(paired, name, "macro_f1"), delta(paired, name, "accuracy")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def experiment_table(folder: Path, columns: list[str] | None = None) -> str:
    """The command and the key columns (or `columns`) of any other experiment folder's results.csv.

    More columns than fit one table give several, the first column in each, as in the report.
    """
    manifest = json.loads((folder / "experiment.json").read_text(encoding="utf-8"))
    if manifest.get("kind") == "cv":
        return cv_table(folder)
    kind = manifest.get("kind", "")
    rows = read_table(folder / "results.csv")
    first = next(iter(rows[0]))
    present = {c for r in rows for c, v in r.items() if v not in ("", None)}
    missing = [c for c in columns or [] if c not in rows[0]]
    if missing:
        raise SystemExit(f"{folder / 'results.csv'} has no column {', '.join(missing)}")
    keep = [first, *(c for c in columns or KEY_COLUMNS.get(kind, rows[0]) if c != first and c in present)]
    tables = tables_of([{c: r.get(c, "") for c in keep} for r in rows], "Results", "results.csv", kind)
    tables = tables if columns else tables[:1]
    total, shown = tables[0].total, len(tables[0].rows)
    note = f" ({total} rows; the first {shown} shown)" if total > shown else ""
    return f"`{manifest['command']}`{note}\n\n" + "\n".join(t.markdown() for t in tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="experiment folders (mmsent cv, compare, seeds, ...)")
    parser.add_argument("--columns", help="comma-separated results.csv columns instead of the key ones (not for cv)")
    args = parser.parse_args()
    columns = args.columns.split(",") if args.columns else None
    print("\n".join(experiment_table(folder, columns) for folder in args.folders))


if __name__ == "__main__":
    main()
