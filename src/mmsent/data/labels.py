"""Reading and writing `guid,tag` label lists; problems are collected, not raised one by one."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmsent import LABELS
from mmsent.data.text import decode_text
from mmsent.errors import Problem
from mmsent.files import atomic_write_text

HEADER = ("guid", "tag")
NULL_TAG = "null"


@dataclass(frozen=True)
class LabelEntry:
    guid: str
    tag: str | None  # None for an unlabelled entry (tag "null" or ignored)


def read_list_bytes(path: Path, what: str = "label file") -> tuple[bytes, list[Problem]]:
    """The bytes of a list file, or the problem (of the whole file) that it is missing or cannot be read."""
    try:
        return Path(path).read_bytes(), []
    except FileNotFoundError:
        return b"", [Problem(None, str(path), f"{what} is missing")]
    except OSError as exc:
        return b"", [Problem(None, str(path), f"{what} cannot be read ({exc.strerror})")]


def read_list_text(path: Path, what: str = "label file") -> tuple[str, list[Problem]]:
    """The text of a list file, decoded as UTF-8 or else GB18030 (as the posts' texts), or its problem."""
    raw, problems = read_list_bytes(path, what)
    if problems:
        return "", problems
    try:
        return decode_text(raw)[0], []
    except UnicodeDecodeError:
        return "", [Problem(None, str(path), f"{what} is neither UTF-8 nor GB18030")]


def read_label_file(path: Path, labelled: bool) -> tuple[list[LabelEntry], list[Problem]]:
    """Parse a `guid,tag` list; with labelled=False the tags are ignored."""
    raw, problems = read_list_bytes(path)
    if problems:
        return [], problems
    text = raw.decode("utf-8-sig", errors="replace")
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        return [], [Problem(None, str(path), "label file is empty; expected a 'guid,tag' header")]
    header = tuple(cell.strip().lower() for cell in rows[0])
    # more columns after guid,tag are ignored: a run's val_predictions.csv is a label file too
    if header[:2] != HEADER:
        found = ",".join(rows[0])
        return [], [Problem(None, str(path), f"first line must be the header 'guid,tag', found {found!r}")]
    entries: list[LabelEntry] = []
    seen: set[str] = set()
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header) or not row[0].strip():
            expected = ",".join(rows[0])
            problems.append(Problem(None, f"{path}:{lineno}", f"expected {expected!r}, found {','.join(row)!r}"))
            continue
        guid, tag = row[0].strip(), row[1].strip().lower()
        if guid in seen:
            problems.append(Problem(guid, f"{path}:{lineno}", "guid is listed twice"))
            continue
        seen.add(guid)
        if not labelled:
            entries.append(LabelEntry(guid, None))
        elif tag in LABELS:
            entries.append(LabelEntry(guid, tag))
        else:
            allowed = ", ".join(LABELS)
            problems.append(Problem(guid, f"{path}:{lineno}", f"unknown tag {tag!r} (expected one of {allowed})"))
    return entries, problems


def label_file_text(rows: list[tuple[str, str]], columns: Mapping[str, Sequence[float]] | None = None) -> str:
    """`guid,tag` rows with their header, as the lists of a data set folder hold them; columns add numbers after the tag."""
    columns = columns or {}
    header = ",".join(["guid", "tag", *columns])
    lines = [",".join([guid, tag, *(f"{float(v[i]):.6f}" for v in columns.values())]) for i, (guid, tag) in enumerate(rows)]
    return header + "\n" + "".join(line + "\n" for line in lines)


def write_label_file(path: Path, rows: list[tuple[str, str]], columns: Mapping[str, Sequence[float]] | None = None) -> None:
    """Write `guid,tag` rows (and columns) atomically (a temp file in the same folder, then a rename)."""
    atomic_write_text(Path(path), label_file_text(rows, columns))
