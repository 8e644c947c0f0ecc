"""Train / validation / test lists of the literature's protocol: by ratios (grouped, stratified) or from published id files."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmsent import LABELS
from mmsent.data.duplicates import duplicate_groups
from mmsent.data.labels import read_list_text
from mmsent.data.records import Record
from mmsent.data.splits import ratio_split
from mmsent.errors import MmsentError, Problem

PARTS = ("train", "val", "test")
LIST_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
SPLIT_KIND = "split"  # the kind in a split folder's manifest


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'8,1,1' -> (8.0, 1.0, 1.0): three positive numbers for train, validation and test."""
    try:
        ratios = tuple(float(x) for x in text.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or not all(np.isfinite(r) and r > 0 for r in ratios):
        raise MmsentError(f"--ratios {text!r}: give three positive numbers for train, validation and test, such as 8,1,1")
    return ratios


def split_by_ratios(records: Sequence[Record], ratios: Sequence[float], seed: int) -> dict[str, list[Record]]:
    """{part: records}, each class in the proportions ratios; duplicate posts (same text or image) on one side."""
    records = list(records)
    parts = ratio_split([r.tag for r in records], ratios, seed, duplicate_groups(records))
    return {name: [records[i] for i in idx] for name, idx in zip(PARTS, parts, strict=True)}


def read_id_file(path: Path) -> tuple[list[str], list[Problem]]:
    """The ids of a published split file: one a line, or the first column of a CSV; a header 'id'/'guid' is skipped."""
    text, problems = read_list_text(path, "id file")
    if problems:
        return [], problems
    ids, seen = [], set()
    rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), start=1) if row and row[0].strip()]
    for index, (lineno, row) in enumerate(rows):
        guid = row[0].split()[0]  # '123', '123,positive' or '123<TAB>positive'
        if index == 0 and guid.lower() in ("id", "guid"):
            continue
        if guid in seen:
            problems.append(Problem(guid, f"{path}:{lineno}", "id is listed twice"))
            continue
        seen.add(guid)
        ids.append(guid)
    if not ids and not problems:
        problems.append(Problem(None, str(path), "id file lists no id"))
    return ids, problems


def split_from_ids(
    records: Sequence[Record], id_files: dict[str, Path], dropped: dict[str, str] | None = None,
    unloadable: Sequence[str] = (),
) -> tuple[dict[str, list[Record]], list[Problem]]:
    """{part: records} of a published split, in the order of its id files; a problem per id that is not a
    labelled post here (with the merge's reason when the merge dropped it) or that is in two parts."""
    by_guid = {r.guid: r for r in records}
    dropped, unloadable = dropped or {}, set(unloadable)
    parts: dict[str, list[Record]] = {}
    problems: list[Problem] = []
    part_of: dict[str, str] = {}
    for part in PARTS:
        ids, found = read_id_file(id_files[part])
        problems += found
        parts[part] = []
        for guid in ids:
            where = str(id_files[part])
            if guid in part_of:
                problems.append(Problem(guid, where, f"id is in the {part_of[guid]} and the {part} file"))
            elif guid in by_guid:
                parts[part].append(by_guid[guid])
            elif guid in dropped:
                problems.append(Problem(guid, where, f"the merge rule dropped this post ({dropped[guid]})"))
            elif guid not in unloadable:  # a post whose files failed is already reported by the loader
                problems.append(Problem(guid, where, "not a labelled post of the data set"))
            part_of.setdefault(guid, part)
    return parts, problems


def groups_across_parts(parts: dict[str, list[Record]]) -> int:
    """Duplicate groups (same normalised text or image) with posts in more than one part: 0 for a ratio split."""
    records = [r for part in PARTS for r in parts[part]]
    part_index = [i for i, part in enumerate(PARTS) for _ in parts[part]]
    if not records:
        return 0
    sides: dict[int, set[int]] = {}
    for group, side in zip(duplicate_groups(records).tolist(), part_index, strict=True):
        sides.setdefault(group, set()).add(side)
    return sum(len(s) > 1 for s in sides.values())


def part_counts(parts: dict[str, list[Record]]) -> dict[str, dict[str, int]]:
    """{part: {tag: n, ..., total: n}}."""
    out = {}
    for part in PARTS:
        tags = Counter(r.tag for r in parts[part])
        out[part] = {tag: tags.get(tag, 0) for tag in LABELS} | {"total": len(parts[part])}
    return out


def held_out_lists(manifest: dict | None, folder: Path) -> list[Path]:
    """The test list of a split folder made by `mmsent split` (from its manifest): never to be trained on."""
    if not manifest or manifest.get("kind") != SPLIT_KIND:
        return []
    return [Path(folder) / manifest.get("lists", LIST_FILES)["test"]]
