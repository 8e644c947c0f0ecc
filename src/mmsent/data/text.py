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


@lru_cache(maxsize=1)
def _segmenter():
    import wordsegment

    wordsegment.load()  # the package's own unigram and bigram counts: offline
    return wordsegment.segment


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
