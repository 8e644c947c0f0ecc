"""Deterministic shards of a guid list, so N machines predict one list, and the merge of their prediction files."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mmsent.data.labels import read_label_file, write_label_file
from mmsent.errors import MmsentError, Problem
from mmsent.files import atomic_write_text

T = TypeVar("T")
SHARD_PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """The index-th (1 to count) of count contiguous parts of a guid list."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N`, for example 2/4: the second of four shards."""
        match = SHARD_PATTERN.fullmatch(text)
        if match is None:
            raise MmsentError(f"--shard {text!r}: give I/N, the I-th of N shards, for example --shard 1/4 (1 <= I <= N)")
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count:
            raise MmsentError(f"--shard {text}: I must be 1 to {count} (the shards of N are numbered from 1)")
        return cls(index, count)

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's part of items: parts are contiguous, in list order, and differ in size by one at most."""
        n = len(items)
        return list(items[n * (self.index - 1) // self.count : n * self.index // self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def skipped_companion(predictions: Path) -> Path:
    """The file beside a prediction file that lists the guids left out (`--on-error skip`), with reasons."""
    return Path(predictions).with_suffix(".skipped.json")


def write_skipped_companion(predictions: Path, problems: list[Problem], key: str = "guid") -> Path | None:
    """List the skipped posts beside a prediction file (each under `key`, the file's id column); return its path.

    With none skipped, a list an earlier prediction left there is removed and None returned.
    """
    companion = skipped_companion(predictions)
    if problems:
        rows = [{key: p.guid, "path": p.path, "reason": p.reason} for p in problems]
        atomic_write_text(companion, json.dumps(rows, indent=2))
        return companion
    companion.unlink(missing_ok=True)  # it would excuse guids of this file that are now predicted or missing
    return None


@dataclass
class Merged:
    """What a merge wrote: one row per predicted guid in list order, and the guids the shards skipped."""

    rows: list[tuple[str, str]]
    skipped: list[dict]


def merge_predictions(guids_file: Path, shard_files: Sequence[Path], out_file: Path) -> Merged:
    """Join the prediction files of a list's shards into one, in the list's order, written atomically.

    Every guid of the list must be predicted by exactly one file, or skipped by its shard (the skipped
    list beside its file); a guid predicted twice, predicted but not in the list, or in no file stops
    the merge with every such guid named, before anything is written.
    """
    if not shard_files:
        raise MmsentError("no prediction file to merge: name the files of every shard")
    entries, list_problems = read_label_file(Path(guids_file), labelled=False)
    if any(p.guid is None for p in list_problems):
        raise MmsentError("\n".join(["the guid list cannot be read:", *("  " + p.line() for p in list_problems)]))
    predicted, skipped, problems = _read_shards([Path(f) for f in shard_files])
    listed = {e.guid for e in entries}
    problems += [Problem(guid, str(path), f"predicted, but not in the guid list {guids_file}")
                 for guid, (_, path) in predicted.items() if guid not in listed]
    problems += [Problem(e.guid, str(guids_file), "in no prediction file, nor skipped by its shard: predict that shard "
                         "(again) and merge") for e in entries if e.guid not in predicted and e.guid not in skipped]
    if problems:
        lines = [f"cannot merge {len(shard_files)} prediction file(s) into {out_file}: {len(problems)} problem(s):"]
        raise MmsentError("\n".join(lines + ["  " + p.line() for p in problems]))
    rows = [(e.guid, predicted[e.guid][0]) for e in entries if e.guid in predicted]
    left_out = [skipped[e.guid] for e in entries if e.guid not in predicted]
    write_label_file(Path(out_file), rows)
    write_skipped_companion(Path(out_file), [Problem(s["guid"], s.get("path", ""), s.get("reason", "")) for s in left_out])
    return Merged(rows, left_out)


def _read_shards(files: list[Path]) -> tuple[dict[str, tuple[str, Path]], dict[str, dict], list[Problem]]:
    """{guid: (tag, file)} predicted, {guid: skipped entry}, and the problems: unreadable files, guids predicted twice."""
    predicted: dict[str, tuple[str, Path]] = {}
    skipped: dict[str, dict] = {}
    problems: list[Problem] = []
    for path in files:
        entries, found = read_label_file(path, labelled=True)
        problems += found  # a missing or malformed file, a guid twice in one file, a tag that is not a label
        for entry in entries:
            if entry.guid in predicted:
                problems.append(Problem(entry.guid, str(path), f"predicted in {predicted[entry.guid][1]} too"))
            else:
                predicted[entry.guid] = (entry.tag, path)
        rows, trouble = _read_skipped(skipped_companion(path))
        problems += trouble
        skipped.update({row["guid"]: row for row in rows})
    return predicted, skipped, problems


def _read_skipped(companion: Path) -> tuple[list[dict], list[Problem]]:
    """The skipped guids a shard listed beside its prediction file (none when there is no such list)."""
    if not companion.is_file():
        return [], []
    try:
        rows = json.loads(companion.read_text(encoding="utf-8"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("guid"), str) for r in rows):
            raise ValueError("expected a list of {guid, path, reason}")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [], [Problem(None, str(companion), f"the list of skipped guids cannot be read ({exc})")]
    return rows, []
