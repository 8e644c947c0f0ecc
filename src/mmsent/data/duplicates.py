"""Duplicate posts: the same text (normalised) or the same image file make one group, kept on one side of a split."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from mmsent.data.records import Record

_URL = re.compile(r"(?:https?://|www\.)\S+")
_MENTION = re.compile(r"(?<!\w)@\w+")
_RETWEET = re.compile(r"^\s*rt\b\s*:?")
_NON_WORD = re.compile(r"[^\w]+")


def normalised_text(text: str) -> str:
    """What makes two tweets the same text: case, links, mentions, a leading RT and punctuation aside."""
    text = _URL.sub(" ", text.lower())
    text = _MENTION.sub(" ", text)
    text = _RETWEET.sub(" ", text)
    return " ".join(_NON_WORD.sub(" ", text).split())


def image_md5(record: Record) -> str:
    data = record.image_bytes if record.image_bytes is not None else record.image_path.read_bytes()
    return hashlib.md5(data).hexdigest()  # noqa: S324 (identity of content, not security)


def group_ids(keys: Sequence[Sequence[str]]) -> np.ndarray:
    """Union-find: records sharing any key are one group; group ids (N,) numbered 0.. in order of appearance."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, record_keys in enumerate(keys):
        for key in record_keys:
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    roots = [find(i) for i in range(len(keys))]
    _, ids = np.unique(roots, return_inverse=True)
    return ids


def duplicate_groups(records: Sequence[Record]) -> np.ndarray:
    """A group id per record: posts with the same normalised text or the same image bytes share one,
    and an augmented copy joins the post it was made from."""
    keys = []
    for record in records:
        text = normalised_text(record.text)
        own = [f"post:{record.source_guid or record.guid}", f"image:{image_md5(record)}"]
        keys.append(own + ([f"text:{text}"] if text else []))
    return group_ids(keys)
