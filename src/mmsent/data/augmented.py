"""Augmented copies as training records: folders of new files plus a manifest naming each copy's source guid."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from mmsent import LABELS
from mmsent.data.labels import LabelEntry
from mmsent.data.records import Record, load_record
from mmsent.errors import DataError, MmsentError, Problem
from mmsent.tables import read_table

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("guid", "source_guid", "tag", "operations")
GUID_PREFIX = "aug"  # real MVSA guids are numbers: a copy's guid can never be one of them


def manifest_path(entry: str | Path) -> Path:
    """A data.augment entry is an augmentation folder (holding manifest.csv) or the manifest itself."""
    path = Path(entry).expanduser()
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest_rows(path: Path) -> list[dict[str, str]]:
    """Rows of an augmentation manifest; a missing file or column is a clear error."""
    if not path.is_file():
        raise MmsentError(f"augmentation manifest not found: {path} (make one with `mmsent augment`)")
    rows = read_table(path)
    missing = [c for c in MANIFEST_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise MmsentError(f"{path}: augmentation manifest lacks the column(s) {', '.join(missing)}")
    return rows


def load_augmented(entries: Sequence[str | Path], max_pixels: int = 89_478_485) -> list[Record]:
    """Records of every copy listed by the manifests, with source_guid set so the leak guard can see them."""
    records: list[Record] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for entry in entries:
        path = manifest_path(entry)
        for lineno, row in enumerate(read_manifest_rows(path), start=2):
            guid, source = row["guid"].strip(), row["source_guid"].strip()
            if not source:
                # a copy without its source could hide a held-out guid from the guard
                problems.append(Problem(guid or None, f"{path}:{lineno}", "augmented copy without a source_guid"))
                continue
            if guid in seen:
                problems.append(Problem(guid, f"{path}:{lineno}", "augmented guid is listed twice"))
                continue
            seen.add(guid)
            tag = row["tag"].strip().lower()
            if tag not in LABELS:
                problems.append(Problem(guid, f"{path}:{lineno}", f"unknown tag {tag!r}"))
                continue
            record, found = load_record(path.parent, LabelEntry(guid, tag), max_pixels)
            problems += found
            if record is not None:
                records.append(dataclasses.replace(record, source_guid=source))
    if problems:
        raise DataError(problems, "Fix or regenerate the augmentation folder (mmsent augment).")
    return records
