"""mmsent: multimodal (image + text) sentiment classification of tweets."""

__version__ = "0.1.0"

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
