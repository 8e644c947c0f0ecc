"""Result tables as CSV and Markdown twins, written atomically; the ground floor every layer may use."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from mmsent.files import atomic_write_text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def table_columns(rows: list[dict]) -> list[str]:
    """Every key of the rows, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row))


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of rows (floats to 4 decimals)."""
    columns = columns or table_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """rows as CSV text with a header (keys outside `columns` are left out)."""
    columns = columns or table_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_table(
    rows: list[dict], out_dir: Path, name: str = "results", columns: list[str] | None = None, note: str | None = None
) -> tuple[Path, Path]:
    """Write rows as name.csv and name.md in out_dir, each replaced atomically; a note follows the Markdown table."""
    out_dir = Path(out_dir)
    columns = columns or table_columns(rows)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    atomic_write_text(csv_path, csv_text(rows, columns))
    atomic_write_text(md_path, markdown_table(rows, columns) + (f"\n{note}\n" if note else ""))
    return csv_path, md_path


def read_table(path: Path) -> list[dict]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
