"""The official MVSA releases (labelResultAll.txt): their formats, and the rule that merges annotations into one tag."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmsent import LABELS
from mmsent.data.labels import LabelEntry, read_label_file, read_list_text
from mmsent.data.records import TRAIN_LIST
from mmsent.errors import MmsentError, Problem

RELEASE_LABELS = "labelResultAll.txt"
COURSE = "course"
MVSA_SINGLE = "mvsa-single"
MVSA_MULTIPLE = "mvsa-multiple"
FORMATS = ("auto", COURSE, MVSA_SINGLE, MVSA_MULTIPLE)
ANNOTATORS = {MVSA_SINGLE: 1, MVSA_MULTIPLE: 3}

# how one post's (text, image) labels become its tag; each modality is first the majority of its annotators
MERGE_RULES = {
    "standard": "text and image agree, or one is neutral and the other is taken; positive vs negative is dropped",
    "agree": "text and image agree; any other pair is dropped",
    "text": "the text label alone",
    "image": "the image label alone",
}
MAJORITY = "each modality's label is the most frequent among the annotators; a tie drops the post"

# reasons a post is dropped by the merge, as data check and the split manifest count them
TIE_TEXT = "annotators tie on the text label"
TIE_IMAGE = "annotators tie on the image label"
TIE_BOTH = "annotators tie on the text and the image label"
CONFLICT = "text and image labels conflict (positive vs negative)"
DIFFER = "text and image labels differ"

_FIELDS = re.compile(r"\s+")


@dataclass(frozen=True)
class AnnotatedPost:
    """One line of labelResultAll.txt: a post's id and each annotator's (text, image) labels."""

    guid: str
    line: int
    annotations: tuple[tuple[str, str], ...]


@dataclass
class MergeResult:
    """The posts a merge rule keeps (with their tags) and those it drops (with the reason)."""

    rule: str
    kept: list[LabelEntry]
    dropped: list[tuple[str, str]]  # (guid, reason)

    def summary(self) -> dict:
        """Counts of kept posts by tag and dropped posts by reason, and the rule in words."""
        kept_tags = Counter(e.tag for e in self.kept)
        return {
            "rule": self.rule,
            "rule_text": MERGE_RULES[self.rule],
            "annotators": MAJORITY,
            "posts": len(self.kept) + len(self.dropped),
            "kept": len(self.kept),
            "kept_by_tag": {tag: kept_tags.get(tag, 0) for tag in LABELS},
            "dropped": len(self.dropped),
            "dropped_by_reason": dict(sorted(Counter(reason for _, reason in self.dropped).items())),
        }


@dataclass
class ReleaseLabels:
    """What a release's label file gives: the merged labels, the merge's counts and the malformed lines."""

    data_format: str
    annotators: int
    merge: MergeResult
    problems: list[Problem]

    def summary(self) -> dict:
        return {"format": self.data_format, "label_file": RELEASE_LABELS, "annotators_per_post": self.annotators,
                **self.merge.summary()}


def check_merge_rule(rule: str) -> str:
    if rule not in MERGE_RULES:
        raise MmsentError(f"unknown merge rule {rule!r}; choose one of {', '.join(MERGE_RULES)}")
    return rule


def majority(labels: Sequence[str]) -> str | None:
    """The most frequent label, or None when two or more labels share the highest count."""
    counts = Counter(labels).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def merge_pair(text: str, image: str, rule: str) -> tuple[str | None, str | None]:
    """(tag, None) for a kept post, (None, reason) for a dropped one, from its text and image labels."""
    if rule == "text":
        return text, None
    if rule == "image":
        return image, None
    if text == image:
        return text, None
    if rule == "agree":
        return None, DIFFER
    if "neutral" in (text, image):
        return (image if text == "neutral" else text), None
    return None, CONFLICT


def merge_post(annotations: Sequence[tuple[str, str]], rule: str) -> tuple[str | None, str | None]:
    """One post's tag (or why it is dropped): each modality's majority over annotators, then the pair rule."""
    text = majority([t for t, _ in annotations])
    image = majority([i for _, i in annotations])
    # only the modalities the rule reads can drop the post by a tie
    text_tie = text is None and rule != "image"
    image_tie = image is None and rule != "text"
    if text_tie and image_tie:
        return None, TIE_BOTH
    if text_tie:
        return None, TIE_TEXT
    if image_tie:
        return None, TIE_IMAGE
    return merge_pair(text, image, rule)


def merge_labels(posts: Sequence[AnnotatedPost], rule: str = "standard") -> MergeResult:
    """Every post's tag under rule, in file order: the kept posts and the dropped ones with their reasons."""
    check_merge_rule(rule)
    kept, dropped = [], []
    for post in posts:
        tag, reason = merge_post(post.annotations, rule)
        if tag is not None:
            kept.append(LabelEntry(post.guid, tag))
        else:
            dropped.append((post.guid, reason))
    return MergeResult(rule, kept, dropped)


def _is_header(fields: list[str]) -> bool:
    return bool(fields) and fields[0].lower() == "id"


def _parse_pair(cell: str) -> tuple[str, str] | None:
    parts = [p.strip().lower() for p in cell.split(",")]
    if len(parts) != 2 or not all(p in LABELS for p in parts):
        return None
    return parts[0], parts[1]


def _parse_line(fields: list[str], annotators: int, path: Path, lineno: int) -> tuple[AnnotatedPost | None, Problem | None]:
    guid, cells, where = fields[0], fields[1:], f"{path}:{lineno}"
    expected = "'ID<TAB>text,image'" + ("" if annotators == 1 else f" with {annotators} 'text,image' pairs")
    if len(cells) != annotators:
        found = " ".join(fields)
        return None, Problem(guid, where, f"expected {expected}, found {len(cells)} pair(s): {found!r}")
    pairs = [_parse_pair(cell) for cell in cells]
    bad = [cell for cell, pair in zip(cells, pairs, strict=True) if pair is None]
    if bad:
        allowed = "/".join(LABELS)
        return None, Problem(guid, where, f"{bad[0]!r} is not a 'text,image' pair of {allowed}")
    return AnnotatedPost(guid, lineno, tuple(pairs)), None


def _label_lines(path: Path) -> tuple[list[tuple[int, list[str]]], list[Problem]]:
    """(line number, fields) of every non-blank line; CRLF, a BOM and trailing blanks are tolerated."""
    text, problems = read_list_text(path)
    if problems:
        return [], problems
    lines = [(n, _FIELDS.split(line.strip())) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        return [], [Problem(None, str(path), "label file is empty; expected the header 'ID<TAB>text,image'")]
    return lines, []


def read_annotations(path: Path, annotators: int | None = None) -> tuple[list[AnnotatedPost], int, list[Problem]]:
    """Parse labelResultAll.txt: (posts, annotators per post, problems), one problem per malformed line.

    annotators None takes the count from the header (or the first line when there is none).
    """
    path = Path(path)
    lines, problems = _label_lines(path)
    if problems:
        return [], annotators or 0, problems
    found = len(lines[0][1]) - 1
    if annotators is None:
        annotators = found
    elif _is_header(lines[0][1]) and found != annotators:
        kind = MVSA_SINGLE if found == 1 else MVSA_MULTIPLE
        return [], annotators, [Problem(None, str(path), f"the header names {found} 'text,image' pair(s) per post, "
                                        f"not {annotators}: this looks like {kind}; pass --format {kind} or auto")]
    posts: list[AnnotatedPost] = []
    seen: set[str] = set()
    for lineno, fields in lines[1:] if _is_header(lines[0][1]) else lines:
        post, problem = _parse_line(fields, annotators, path, lineno)
        if problem is None and post.guid in seen:
            problem = Problem(post.guid, f"{path}:{lineno}", "ID is listed twice")
        if problem is not None:
            problems.append(problem)
            continue
        seen.add(post.guid)
        posts.append(post)
    return posts, annotators, problems


def detect_format(root: Path) -> str:
    """course when train.txt is there (or no release label file), else mvsa-single / -multiple by its pairs per line."""
    root = Path(root)
    has_release, has_course = (root / RELEASE_LABELS).is_file(), (root / TRAIN_LIST).is_file()
    if has_release and has_course:
        raise MmsentError(f"{root} holds both {RELEASE_LABELS} and {TRAIN_LIST}; pass --format {MVSA_SINGLE}, "
                          f"{MVSA_MULTIPLE} or {COURSE} to say which to read")
    if not has_release:
        return COURSE
    lines, _ = _label_lines(root / RELEASE_LABELS)
    return MVSA_SINGLE if not lines or len(lines[0][1]) <= 2 else MVSA_MULTIPLE


def resolve_format(root: Path, data_format: str) -> str:
    """The format to read root with: auto detects it; a named one must be one mmsent reads."""
    if data_format not in FORMATS:
        raise MmsentError(f"unknown data format {data_format!r}; choose one of {', '.join(FORMATS)}")
    return detect_format(root) if data_format == "auto" else data_format


def read_release(root: Path, data_format: str, rule: str = "standard") -> ReleaseLabels:
    """The merged labels of an official release folder (mvsa-single or mvsa-multiple)."""
    if data_format not in ANNOTATORS:
        raise MmsentError(f"{data_format!r} is not an official release format ({MVSA_SINGLE}, {MVSA_MULTIPLE})")
    posts, annotators, problems = read_annotations(Path(root) / RELEASE_LABELS, ANNOTATORS[data_format])
    return ReleaseLabels(data_format, annotators, merge_labels(posts, check_merge_rule(rule)), problems)


def release_hint(root: Path) -> str | None:
    """For a folder that is an official release without train.txt: how to train on it; else None."""
    root = Path(root)
    if not (root / RELEASE_LABELS).is_file() or (root / TRAIN_LIST).is_file():
        return None
    return (f"{root} is an official MVSA release ({RELEASE_LABELS}, no {TRAIN_LIST}): make the literature's split "
            f"first, `mmsent split --data {root} --out SPLIT`, then `mmsent train --data {root} "
            "--train-list SPLIT/train.txt --val-list SPLIT/val.txt` (see 'Comparing with papers' in the README)")


def labelled_posts(root: Path, data_format: str, rule: str = "standard") -> tuple[list[LabelEntry], list[Problem],
                                                                                      ReleaseLabels | None]:
    """The labelled posts of a data folder in a resolved format: train.txt's, or a release's merged labels
    (with the release's merge counts); and the problems of its label file."""
    if data_format == COURSE:
        entries, problems = read_label_file(Path(root) / TRAIN_LIST, labelled=True)
        return entries, problems, None
    release = read_release(root, data_format, rule)
    return release.merge.kept, release.problems, release
