"""VADER lexicon sentiment scores as a small text feature (neg, neu, pos, compound)."""

from __future__ import annotations

import torch

from mmsent.config import Config, TextConfig
from mmsent.encoders.base import TextEncoder
from mmsent.encoders.registry import register_encoder
from mmsent.errors import WeightsNotFoundError

# VADER reads case, punctuation and emoji itself: only links and mentions are taken out.
VADER_TEXT = TextConfig(
    remove_urls=True,
    remove_mentions=True,
    hashtags_to_words=True,
    lowercase=False,
    fold_whitespace=True,
    emoji="keep",
    fold_repeats=False,
    remove_stopwords=False,
)


@register_encoder("vader", "VADER lexicon scores (4-d: neg, neu, pos, compound)")
class VaderEncoder(TextEncoder):
    """Rule-based sentiment scores from the vaderSentiment lexicon; nothing to train."""

    name = "vader"

    def __init__(self):
        super().__init__()
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise WeightsNotFoundError("encoder 'vader' needs the package vaderSentiment: pip install vaderSentiment") from None
        self.analyzer = SentimentIntensityAnalyzer()
        self.dim = 4

    def text_config(self, cfg: Config) -> TextConfig:
        return VADER_TEXT

    def fingerprint(self) -> str:
        return "vader|3.3|neg,neu,pos,compound"

    def forward(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            s = self.analyzer.polarity_scores(text)
            rows.append([s["neg"], s["neu"], s["pos"], s["compound"]])
        return torch.tensor(rows, dtype=torch.float32)  # (B, 4)
