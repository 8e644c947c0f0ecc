"""Decoding tweet text files (UTF-8, then GB18030) and configurable cleaning steps."""

from __future__ import annotations

import re
from functools import lru_cache

import emoji

from mmsent.config import TextConfig

URL_RE = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
MENTION_RE = re.compile(r"(?<!\w)@\w+")
RT_RE = re.compile(r"^\s*RT\b\s*:?", re.IGNORECASE)
HASHTAG_RE = re.compile(r"#(\w+)")
REPEAT_RE = re.compile(r"(.)\1{3,}", re.DOTALL)
WHITESPACE_RE = re.compile(r"\s+")
EMOJI_TOKEN = " <emoji> "


def decode_text(raw: bytes) -> tuple[str, bool]:
    """Decode bytes as UTF-8, else GB18030 (which maps every byte sequence); return (text, used_fallback)."""
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        # strict: GB18030 covers all of Unicode, so a real tweet never needs replacement characters
        return raw.decode("gb18030"), True


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def _replace_emoji(text: str, mode: str) -> str:
    if mode == "token":
        return emoji.replace_emoji(text, replace=EMOJI_TOKEN)
    # "face_with_tears_of_joy" becomes words a text encoder knows
    return emoji.replace_emoji(
        text, replace=lambda chars, data: " " + data["en"].strip(":").replace("_", " ") + " "
    )


CAMEL_RE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


class CompactCounts:
    """The word -> count table of a wordsegment counts file (`word<TAB>count` lines) as two sorted arrays: the
    words' hashes (int64) and their counts (float64), 16 bytes a word.

    The package's own dicts of 620,000 strings and floats held 93 MB for as long as the process lived (a
    tenth of a prediction's memory); these hold 10. A word listed twice keeps its last count, as a dict
    would. The hashes are this process's str hashes: two of the 620,000 words sharing one (odds near 1e-8)
    would merge their counts.
    """

    def __init__(self, filename: str):
        import numpy as np

        def rows():
            with open(filename, encoding="utf-8") as reader:
                for line in reader:
                    word, number = line.split("\t")
                    yield hash(word), float(number)

        table = np.fromiter(rows(), dtype=[("hash", np.int64), ("count", np.float64)])
        table = table[np.argsort(table["hash"], kind="stable")]  # a repeated word's lines stay in file order
        last = np.append(table["hash"][1:] != table["hash"][:-1], True)  # the last line of each word
        self.hashes, self.counts = table["hash"][last].copy(), table["count"][last].copy()

        self.get = lru_cache(maxsize=1 << 16)(self._get)  # a hashtag's search asks for the same words again

    def _get(self, word: str) -> float | None:
        key = hash(word)
        index = int(self.hashes.searchsorted(key))
        return float(self.counts[index]) if index < len(self.hashes) and self.hashes[index] == key else None

    def __contains__(self, word: str) -> bool:
        return self.get(word) is not None

    def __getitem__(self, word: str) -> float:
        count = self.get(word)
        if count is None:
            raise KeyError(word)
        return count


@lru_cache(maxsize=1)
def _segmenter():
    """wordsegment's segmenter on its own unigram and bigram counts (offline), held compactly."""
    import wordsegment

    segmenter = wordsegment.Segmenter()  # its word list (`words`) is not used to segment: not loaded
    segmenter.unigrams = CompactCounts(segmenter.UNIGRAMS_FILENAME)
    segmenter.bigrams = CompactCounts(segmenter.BIGRAMS_FILENAME)
    segmenter.total, segmenter.limit = segmenter.TOTAL, segmenter.LIMIT
    return segmenter.segment


@lru_cache(maxsize=4096)
def segment_hashtag(tag: str) -> str:
    """The words of a hashtag: its CamelCase parts, else the most likely split of its letters."""
    parts = CAMEL_RE.findall(tag)
    if len(parts) > 1:
        return " ".join(parts)
    return " ".join(_segmenter()(tag)) or tag


def clean_text(text: str, cfg: TextConfig) -> str:
    """Apply the cleaning steps enabled in cfg, in a fixed order."""
    return _clean_text(text, tuple(cfg.model_dump().items()))


@lru_cache(maxsize=1 << 16)
def _clean_text(text: str, settings: tuple) -> str:
    # memoised: every cached-feature lookup cleans the text again to find its key, and emoji naming and
    # hashtag segmentation cost about half a millisecond a post
    cfg = TextConfig(**dict(settings))
    if cfg.remove_urls:
        text = URL_RE.sub(" ", text)
    if cfg.remove_mentions:
        text = MENTION_RE.sub(" ", text)
        text = RT_RE.sub(" ", text)
    if cfg.segment_hashtags:
        text = HASHTAG_RE.sub(lambda m: segment_hashtag(m.group(1)), text)
    elif cfg.hashtags_to_words:
        text = HASHTAG_RE.sub(r"\1", text)
    if cfg.emoji != "keep":
        text = _replace_emoji(text, cfg.emoji)
    if cfg.fold_repeats:
        text = REPEAT_RE.sub(r"\1\1\1", text)
    if cfg.lowercase:
        text = text.lower()
    if cfg.remove_stopwords:
        stop = _stopwords()
        text = " ".join(w for w in text.split() if w.lower() not in stop)
    if cfg.fold_whitespace:
        text = WHITESPACE_RE.sub(" ", text).strip()
    return text


def text_attributes(text: str) -> dict[str, int | bool]:
    """Simple attributes of a raw tweet, used by error analysis."""
    return {
        "n_tokens": len(text.split()),
        "has_emoji": emoji.emoji_count(text) > 0,
        "has_url": bool(URL_RE.search(text)),
        "is_retweet": bool(RT_RE.search(text)),
        "n_hashtags": len(HASHTAG_RE.findall(text)),
    }
