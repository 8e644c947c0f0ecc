"""A user's own posts to predict: a CSV or JSONL file (id, text or text_path, image_path), or a folder of images and texts."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from mmsent.data.records import Record, check_image_file, read_text_file
from mmsent.data.text import decode_text
from mmsent.errors import MmsentError, Problem

ID, TEXT, TEXT_PATH, IMAGE_PATH = "id", "text", "text_path", "image_path"
COLUMNS = (ID, TEXT, TEXT_PATH, IMAGE_PATH)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
NO_IMAGE = Path("<no image>")  # the image path of a text-only post: no encoder opens it
MODALITIES = ("text", "image")
FORMATS_HINT = (
    "Give a .csv or .jsonl file with the columns id and text, text_path or image_path (paths relative to the file), "
    "or a folder of NAME.jpg (.png, ...) with optional NAME.txt."
)


@dataclass(frozen=True)
class PostRow:
    """One post as its file gives it: paths resolved against the file's folder, blank cells None."""

    id: str
    where: str  # file:line, or the folder and name
    text: str | None = None
    text_path: Path | None = None
    image_path: Path | None = None


@dataclass
class Posts:
    """The posts that load, which modalities each has, and every problem and ignored column."""

    records: list[Record]
    modalities: list[frozenset[str]]
    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # columns (or keys, or files) that mmsent does not read


def modality_name(modalities: frozenset[str]) -> str:
    """'text+image', 'text' or 'image'."""
    return "+".join(m for m in MODALITIES if m in modalities)


def _cell(value: object) -> str | None:
    """A cell's value, None when blank or absent."""
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def _row(values: dict[str, object], base: Path, where: str) -> PostRow:
    """A PostRow from a mapping of column -> value; paths are relative to base."""
    def path(key: str) -> Path | None:
        value = _cell(values.get(key))
        return base / value.strip() if value is not None else None

    post_id = _cell(values.get(ID))
    return PostRow(post_id.strip() if post_id else "", where, _cell(values.get(TEXT)), path(TEXT_PATH), path(IMAGE_PATH))


def _file_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MmsentError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return decode_text(raw)[0]
    except UnicodeDecodeError:
        raise MmsentError(f"{path}: is neither UTF-8 nor GB18030") from None


def csv_rows(path: Path) -> tuple[list[PostRow], list[Problem], list[str]]:
    """Rows of a CSV with a header; (rows, problems, ignored columns). Text cells may span lines (quoted)."""
    reader = csv.reader(io.StringIO(_file_text(path), newline=""))
    header = next(reader, None)
    columns = [c.strip().lower() for c in header or []]
    if ID not in columns or not set(columns) & {TEXT, TEXT_PATH, IMAGE_PATH}:
        found = ",".join(header or [])
        raise MmsentError(f"{path}: the header must name the column id and at least one of text, text_path, "
                          f"image_path; found {found!r}. {FORMATS_HINT}")
    rows, problems, line = [], [], reader.line_num
    for cells in reader:
        where, line = f"{path}:{line + 1}", reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(columns):
            problems.append(Problem(None, where, f"the row has {len(cells)} cells, the header {len(columns)}"))
            continue
        rows.append(_row(dict(zip(columns, cells)), path.parent, where))
    return rows, problems, [c for c in columns if c not in COLUMNS]


def jsonl_rows(path: Path) -> tuple[list[PostRow], list[Problem], list[str]]:
    """One JSON object a line with the keys of the CSV columns; (rows, problems, ignored keys)."""
    rows, problems, ignored = [], [], set()
    for lineno, line in enumerate(_file_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            values = json.loads(line)
        except ValueError as exc:
            problems.append(Problem(None, where, f"not a JSON object ({exc})"))
            continue
        if not isinstance(values, dict):
            problems.append(Problem(None, where, f"not a JSON object but {type(values).__name__}"))
            continue
        wrong = [k for k in COLUMNS if values.get(k) is not None and not isinstance(values[k], (str, int))]
        if wrong:
            problems.append(Problem(None, where, f"{', '.join(wrong)}: must be a string"))
            continue
        ignored |= set(values) - set(COLUMNS)
        rows.append(_row(values, path.parent, where))
    return rows, problems, sorted(ignored)


def folder_rows(folder: Path) -> tuple[list[PostRow], list[Problem], list[str]]:
    """NAME.jpg (or another image type) with optional NAME.txt, and NAME.txt alone (a text-only post); by name."""
    images: dict[str, list[Path]] = {}
    texts: dict[str, Path] = {}
    ignored = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.setdefault(path.stem, []).append(path)
        elif suffix == ".txt":
            texts[path.stem] = path
        else:
            ignored.append(path.name)
    rows, problems = [], []
    for name in sorted(set(images) | set(texts)):
        found = images.get(name, [])
        if len(found) > 1:
            problems.append(Problem(name, str(folder), f"several images: {', '.join(p.name for p in found)}"))
            continue
        rows.append(PostRow(name, str(folder / name), None, texts.get(name), found[0] if found else None))
    return rows, problems, ignored


def post_rows(source: Path) -> tuple[list[PostRow], list[Problem], list[str]]:
    """The rows of a posts file or folder, by its kind."""
    source = Path(source)
    if source.is_dir():
        return folder_rows(source)
    if not source.exists():
        raise MmsentError(f"{source}: no such file or folder. {FORMATS_HINT}")
    readers = {".csv": csv_rows, ".jsonl": jsonl_rows, ".ndjson": jsonl_rows}
    if source.suffix.lower() not in readers:
        raise MmsentError(f"{source}: cannot tell the format from the name. {FORMATS_HINT}")
    return readers[source.suffix.lower()](source)


def load_post(row: PostRow, max_pixels: int) -> tuple[Record | None, frozenset[str], list[Problem]]:
    """A post's record and the modalities it has, checked as the data set's posts are; or its problems."""
    if not row.id:
        return None, frozenset(), [Problem(None, row.where, "the post has no id")]
    if row.text is not None and row.text_path is not None:
        return None, frozenset(), [Problem(row.id, row.where, "give the text inline (text) or as a file (text_path), "
                                           "not both")]
    text, fallback, problems = row.text or "", False, []
    if row.text_path is not None:
        text, fallback, problems = read_text_file(row.id, row.text_path)
    if row.image_path is not None:
        problems += check_image_file(row.id, row.image_path, max_pixels)
    if problems:
        return None, frozenset(), problems
    # a blank text is no text: the post is predicted from its image alone
    modalities = frozenset({"text"} if text.strip() else set()) | frozenset({"image"} if row.image_path else set())
    if not modalities:
        return None, modalities, [Problem(row.id, row.where, "the post has neither a text nor an image")]
    return Record(row.id, None, text, row.image_path or NO_IMAGE, fallback), modalities, []


def read_posts(source: Path, max_pixels: int = 89_478_485) -> Posts:
    """Every post of a CSV / JSONL file or a folder, in its order; ids must be unique."""
    rows, problems, ignored = post_rows(source)
    if not rows and not problems:
        raise MmsentError(f"{source}: holds no post. {FORMATS_HINT}")
    posts = Posts([], [], problems, ignored)
    seen: set[str] = set()
    for row in rows:
        if row.id and row.id in seen:
            posts.problems.append(Problem(row.id, row.where, "id is listed twice"))
            continue
        seen.add(row.id)
        record, modalities, found = load_post(row, max_pixels)
        posts.problems += found
        if record is not None:
            posts.records.append(record)
            posts.modalities.append(modalities)
    return posts
