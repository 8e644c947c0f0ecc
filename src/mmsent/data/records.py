"""Records of a data set folder: the label lists are the source of truth; problems are collected per guid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmsent.data.images import ImageReadError, verify_image
from mmsent.data.labels import LabelEntry, read_label_file
from mmsent.data.shards import Shard
from mmsent.data.text import decode_text
from mmsent.errors import DataError, MmsentError, Problem

TRAIN_LIST = "train.txt"
TEST_LIST = "test_without_label.txt"
LAYOUT_HINT = (
    "A data set folder holds data/{guid}.txt and data/{guid}.jpg, train.txt and "
    "test_without_label.txt ('guid,tag' header; tag is positive/neutral/negative, or null in the test list)."
)


@dataclass(frozen=True)
class Record:
    """One post: its guid, tag (None when unlabelled), decoded text and image path."""

    guid: str
    tag: str | None
    text: str
    image_path: Path
    text_fallback: bool = False  # the text file needed the GB18030 fallback
    source_guid: str | None = None  # the original guid of an augmented copy (see data.guard)
    image_bytes: bytes | None = field(default=None, repr=False)  # in-memory image (uploads, perturbations)

    def image_source(self) -> Path | bytes:
        """What open_image reads: the in-memory bytes if any, else the file."""
        return self.image_bytes if self.image_bytes is not None else self.image_path


@dataclass
class DataSet:
    """The labelled and unlabelled records of a data folder, and what was skipped."""

    root: Path
    train: list[Record]
    test: list[Record]
    skipped: list[Problem] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)  # more guids never to train on (a split's test list)

    def skipped_rows(self) -> list[dict]:
        """What was left out and why, one row per problem (a run's skipped.json)."""
        return [{"guid": p.guid, "path": p.path, "reason": p.reason} for p in self.skipped]


def require_data_dir(root: Path) -> Path:
    root = Path(root)
    if not (root / "data").is_dir():
        raise MmsentError(f"no data set at {root}: the folder data/ is missing. {LAYOUT_HINT}")
    return root


def image_file(root: Path, guid: str) -> Path:
    """Where a data set folder keeps a post's image."""
    return Path(root) / "data" / f"{guid}.jpg"


def load_record(root: Path, entry: LabelEntry, max_pixels: int) -> tuple[Record | None, list[Problem]]:
    """Read one guid's text and check its image; return the record or the problems found."""
    text_path = root / "data" / f"{entry.guid}.txt"
    image_path = image_file(root, entry.guid)
    text, fallback, problems = read_text_file(entry.guid, text_path)
    problems += check_image_file(entry.guid, image_path, max_pixels)
    if problems:
        return None, problems
    return Record(entry.guid, entry.tag, text, image_path, fallback), []


def read_text_file(guid: str, path: Path) -> tuple[str, bool, list[Problem]]:
    """(text, used the GB18030 fallback, problems) of a post's text file; text is "" when it has problems."""
    try:
        text, fallback = decode_text(path.read_bytes())
        return text, fallback, []
    except FileNotFoundError:
        reason = "text file is missing"
    except UnicodeDecodeError:
        reason = "text is neither UTF-8 nor GB18030"
    except OSError as exc:
        reason = f"text file cannot be read ({exc.strerror})"
    return "", False, [Problem(guid, str(path), reason)]


def check_image_file(guid: str, path: Path, max_pixels: int) -> list[Problem]:
    """The problem of a post's image file (missing, unreadable, too large), if any."""
    try:
        verify_image(path, max_pixels)
    except ImageReadError as exc:
        return [Problem(guid, str(path), str(exc))]
    return []


def load_records(
    root: Path, list_file: Path, labelled: bool, max_pixels: int = 89_478_485, shard: Shard | None = None
) -> tuple[list[Record], list[Problem]]:
    """Load every guid of one list file (or of its shard); return the good records and every problem found."""
    root = require_data_dir(root)
    entries, problems = read_label_file(Path(list_file), labelled)
    if shard is not None:
        # only this shard's files are read; problems of other guids belong to their own shards
        entries = shard.select(entries)
        mine = {e.guid for e in entries}
        problems = [p for p in problems if p.guid is None or p.guid in mine]
    records, found = load_entries(root, entries, max_pixels)
    return records, problems + found


def load_entries(root: Path, entries: list[LabelEntry], max_pixels: int = 89_478_485) -> tuple[list[Record], list[Problem]]:
    """The records of entries in their order, and every problem of their files."""
    records: list[Record] = []
    problems: list[Problem] = []
    for entry in entries:
        record, found = load_record(root, entry, max_pixels)
        problems += found
        if record is not None:
            records.append(record)
    return records, problems


def raise_on_problems(problems: list[Problem], on_error: str) -> None:
    """Stop with every problem listed, unless on_error is "skip" and each concerns one guid only.

    A problem of a whole list file (guid None) cannot be skipped.
    """
    whole_file = any(p.guid is None for p in problems)
    if whole_file or (problems and on_error != "skip"):
        raise DataError(problems, "" if whole_file else "Fix these files, or pass --on-error skip to leave these guids out.")


def load_dataset(root: Path, on_error: str = "fail", max_pixels: int = 89_478_485) -> DataSet:
    """Load train.txt and test_without_label.txt of a data folder, checking every guid."""
    root = require_data_dir(Path(root))
    from mmsent.data.releases import release_hint  # a local import: releases reads this module's list names

    if (hint := release_hint(root)) is not None:
        raise MmsentError(hint)
    train, train_problems = load_records(root, root / TRAIN_LIST, labelled=True, max_pixels=max_pixels)
    test, test_problems = load_records(root, root / TEST_LIST, labelled=False, max_pixels=max_pixels)
    problems = train_problems + test_problems
    overlap = {r.guid for r in train} & {r.guid for r in test}
    for guid in sorted(overlap):
        problems.append(Problem(guid, str(root / TEST_LIST), f"guid is listed in both {TRAIN_LIST} and {TEST_LIST}"))
    raise_on_problems(problems, on_error)
    if overlap:
        # a guid in both lists is a leak either way: drop it from training, keep it for prediction
        train = [r for r in train if r.guid not in overlap]
    return DataSet(root, train, test, skipped=problems)


def records_for_guids(data_dir: Path, guids: list[str], max_pixels: int) -> list[Record]:
    """Records of train.txt for guids, in their order; every guid must be there (a run's split, for example)."""
    records, problems = load_records(Path(data_dir), Path(data_dir) / TRAIN_LIST, labelled=True, max_pixels=max_pixels)
    by_guid = {r.guid: r for r in records}
    missing = [g for g in guids if g not in by_guid]
    if missing:
        reasons = {p.guid: p.reason for p in problems}
        detail = ", ".join(f"{g} ({reasons.get(g, 'not in train.txt')})" for g in missing[:10])
        raise MmsentError(
            f"{data_dir}: {len(missing)} guid(s) of the run's split cannot be loaded: {detail}. "
            "Pass the data folder the run was trained on."
        )
    return [by_guid[g] for g in guids]
