"""What every experiment folder holds: a results table (CSV + Markdown) and an experiment.json manifest."""

from __future__ import annotations

import csv
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from mmsent import __version__

MANIFEST = "experiment.json"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of rows (floats to 4 decimals)."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], out_dir: Path, name: str = "results", columns: list[str] | None = None) -> tuple[Path, Path]:
    """Write rows as name.csv and name.md in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(markdown_table(rows, columns), encoding="utf-8")
    return csv_path, md_path


def read_table(path: Path) -> list[dict]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def command_line(argv: list[str] | None = None) -> str:
    """The command that produced an experiment, as a user would type it."""
    args = sys.argv[1:] if argv is None else argv
    return "mmsent " + " ".join(shlex.quote(a) for a in args)


def write_manifest(out_dir: Path, kind: str, command: str, **extra: Any) -> Path:
    """experiment.json: what kind of experiment, the command that made it, when, and its files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "kind": kind,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mmsent_version": __version__,
        **extra,
    }
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return path


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
