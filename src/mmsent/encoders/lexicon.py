"""Tweet signals as a small feature vector: surface statistics, emoticons, TextBlob and VADER on segmented hashtags."""

from __future__ import annotations

import importlib.util
import re
from functools import cached_property

import emoji
import torch

from mmsent.config import Config, TextConfig
from mmsent.data.text import HASHTAG_RE, MENTION_RE, RT_RE, URL_RE, clean_text, segment_hashtag
from mmsent.encoders.base import TextEncoder
from mmsent.encoders.registry import register_encoder
from mmsent.errors import WeightsNotFoundError

# the raw tweet: every signal below reads case, punctuation, hashtags and links itself
RAW_TEXT = TextConfig(remove_urls=False, remove_mentions=False, hashtags_to_words=False, lowercase=False,
                      fold_whitespace=False, emoji="keep", fold_repeats=False, remove_stopwords=False)
TEXTBLOB_TEXT = TextConfig(lowercase=False, emoji="name", segment_hashtags=True)
VADER_TEXT = TextConfig(lowercase=False, emoji="keep", fold_repeats=False, segment_hashtags=True)
POSITIVE_EMOTICON = re.compile(r"(?:[:;=8xX][-'^o]?[)\]}DpP3*]|<3|\^_*\^|\(:)")
NEGATIVE_EMOTICON = re.compile(r"(?:[:;=8][-'^o]?[(\[{/\\|]|:'\(|D:|</3|-_-)")
ELONGATED = re.compile(r"(\w)\1{2,}")  # "soooo"
COMMERCE = re.compile(r"\b(sale|buy|free|shop|price|sz|size)\b", re.IGNORECASE)
SENTENCE_END = re.compile(r"[.!?\n]+")
FEATURES = [
    "words", "characters", "hashtags", "mentions", "links", "retweet", "exclamations", "questions", "capital_share",
    "elongated_words", "positive_emoticons", "negative_emoticons", "emoji", "non_ascii_share", "ellipsis",
    "digit_share", "commerce_words", "capitalised_words",
    "textblob_polarity", "textblob_subjectivity",
    "vader_neg", "vader_neu", "vader_pos", "vader_compound", "hashtag_vader_neg", "hashtag_vader_pos",
    "hashtag_vader_compound", "sentence_compound_max", "sentence_compound_min", "sentiment_sentence_share",
]


def surface_statistics(text: str) -> list[float]:
    """Counts and shares a reader of tweets notices: length, tags, links, shouting, emoticons, elongation."""
    words = text.split()
    letters = [c for c in text if c.isalpha()]
    return [
        len(words), len(text), len(HASHTAG_RE.findall(text)), len(MENTION_RE.findall(text)), len(URL_RE.findall(text)),
        float(bool(RT_RE.search(text))), text.count("!"), text.count("?"),
        sum(c.isupper() for c in letters) / max(len(letters), 1), len(ELONGATED.findall(text)),
        len(POSITIVE_EMOTICON.findall(text)), len(NEGATIVE_EMOTICON.findall(text)), emoji.emoji_count(text),
        sum(ord(c) > 127 for c in text) / max(len(text), 1), float("…" in text or text.rstrip().endswith("...")),
        sum(c.isdigit() for c in text) / max(len(text), 1), float("$" in text or bool(COMMERCE.search(text))),
        sum(w.isupper() and len(w) > 1 for w in words),
    ]


@register_encoder("lexicon", "tweet signals (30-d): statistics, emoticons, TextBlob, VADER on segmented hashtags")
class LexiconEncoder(TextEncoder):
    """Hand-made tweet features from the raw text; nothing to train, no weights but the lexicons' own."""

    name = "lexicon"

    def __init__(self):
        super().__init__()
        # looked for, not imported: TextBlob imports NLTK and SciPy (~1.5 s), which the first encoding does,
        # beside the image encoder, instead of a prediction's start-up
        missing = [p for p in ("textblob", "vaderSentiment", "wordsegment") if importlib.util.find_spec(p) is None]
        if missing:
            raise WeightsNotFoundError(
                f"encoder 'lexicon' needs the package {missing[0]}: pip install textblob vaderSentiment wordsegment"
            )
        self.dim = len(FEATURES)

    @cached_property
    def vader(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        return SentimentIntensityAnalyzer()

    def text_config(self, cfg: Config) -> TextConfig:
        return RAW_TEXT

    def fingerprint(self) -> str:
        return "lexicon|2|" + ",".join(FEATURES)

    def textblob_scores(self, text: str) -> list[float]:
        from textblob import TextBlob

        sentiment = TextBlob(clean_text(text, TEXTBLOB_TEXT)).sentiment
        return [sentiment.polarity, sentiment.subjectivity]

    def vader_scores(self, text: str) -> list[float]:
        """VADER on the text with hashtags as words, on the hashtags alone, and per sentence."""
        clean = clean_text(text, VADER_TEXT)
        whole = self.vader.polarity_scores(clean)
        tags = " . ".join(segment_hashtag(h) for h in HASHTAG_RE.findall(text))
        hashtags = self.vader.polarity_scores(tags) if tags else {"neg": 0.0, "pos": 0.0, "compound": 0.0}
        sentences = [s for s in SENTENCE_END.split(clean) if s.strip()] or [clean]
        compounds = [self.vader.polarity_scores(s)["compound"] for s in sentences]
        return [whole["neg"], whole["neu"], whole["pos"], whole["compound"], hashtags["neg"], hashtags["pos"],
                hashtags["compound"], max(compounds), min(compounds),
                sum(abs(c) > 0.05 for c in compounds) / len(compounds)]

    def forward(self, texts: list[str]) -> torch.Tensor:
        rows = [surface_statistics(t) + self.textblob_scores(t) + self.vader_scores(t) for t in texts]
        return torch.tensor(rows, dtype=torch.float32)  # (B, 30)
