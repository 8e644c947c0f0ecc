"""README tables from `mmsent cv` folders: every number read from the folder, with the command that made it.

Usage: python benchmarks/readme_results.py runs/cv-models runs/cv-ablation ...
Prints, per folder, the command and one Markdown table: each candidate's mean score with its 95%
interval, and its paired difference to the reference (the first candidate) with interval and verdict.
Times are left out: candidates run one after another on a shared machine, so theirs are not comparable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders written by `mmsent cv`")
    args = parser.parse_args()
    print("\n".join(cv_table(folder) for folder in args.folders))


if __name__ == "__main__":
    main()
