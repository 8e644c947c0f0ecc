"""TF-IDF bag-of-n-grams text features (scikit-learn), fitted on the training split only."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from mmsent.config import Config
from mmsent.data.records import Record
from mmsent.data.text import clean_text
from mmsent.encoders.base import TextEncoder
from mmsent.encoders.registry import register_encoder
from mmsent.errors import ConfigError, MmsentError


@register_encoder("tfidf", "TF-IDF n-gram features (scikit-learn), fitted on the training split; dim = vocabulary size")
class TfidfEncoder(TextEncoder):
    """scikit-learn TfidfVectorizer over the cleaned text: (B,) texts -> (B, vocabulary size) dense."""

    name = "tfidf"

    def __init__(
        self,
        max_features: int = 5000,
        ngram_range: tuple[int, int] | list[int] = (1, 2),
        min_df: int | float = 2,
        max_df: float = 1.0,
        sublinear_tf: bool = True,
    ):
        super().__init__()
        if len(ngram_range) != 2 or not 1 <= ngram_range[0] <= ngram_range[1]:
            raise ConfigError(f"encoder 'tfidf': ngram_range must be [min_n, max_n] with 1 <= min_n <= max_n, not {ngram_range}")
        self.params: dict[str, Any] = {
            "max_features": max_features,
            "ngram_range": [int(ngram_range[0]), int(ngram_range[1])],
            "min_df": min_df,
            "max_df": max_df,
            "sublinear_tf": sublinear_tf,
        }
        self.vectorizer = None
        # no parameters: this empty buffer tells forward which device the model was moved to
        self.register_buffer("_device", torch.zeros(0), persistent=False)
        self._state: dict[str, Any] | None = None
        self._digest = ""

    def _make_vectorizer(self, vocabulary: dict[str, int] | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        p = self.params
        # the text is already cleaned (lowercased etc.) by the config's text section
        return TfidfVectorizer(
            max_features=p["max_features"],
            ngram_range=tuple(p["ngram_range"]),
            min_df=p["min_df"],
            max_df=p["max_df"],
            sublinear_tf=p["sublinear_tf"],
            lowercase=False,
            vocabulary=vocabulary,
            dtype=np.float32,
        )

    def fit(self, records: list[Record], cfg: Config) -> None:
        texts = [clean_text(r.text, cfg.text) for r in records]
        vectorizer = self._make_vectorizer()
        try:
            vectorizer.fit(texts)
        except ValueError as exc:  # e.g. an empty vocabulary after min_df / max_df pruning
            raise MmsentError(f"encoder 'tfidf': cannot fit on {len(texts)} training texts: {exc}") from None
        vocabulary = {term: int(i) for term, i in vectorizer.vocabulary_.items()}
        self._set_state({"params": self.params, "vocabulary": vocabulary, "idf": [float(x) for x in vectorizer.idf_]})

    def _set_state(self, state: dict[str, Any]) -> None:
        if state.get("params") != self.params:
            raise MmsentError(
                f"encoder 'tfidf': the saved state was fitted with {state.get('params')}, the config says {self.params}"
            )
        vectorizer = self._make_vectorizer(state["vocabulary"])
        vectorizer.idf_ = np.asarray(state["idf"], dtype=np.float64)
        self.vectorizer = vectorizer
        self._state = state
        self.dim = len(state["vocabulary"])
        blob = json.dumps(state, sort_keys=True).encode("utf-8")
        self._digest = hashlib.sha256(blob).hexdigest()[:16]

    def extra_state_dict(self) -> dict[str, Any]:
        return dict(self._state) if self._state is not None else {}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self._set_state(state)

    def _require_fitted(self) -> None:
        if self.vectorizer is None:
            raise MmsentError("encoder 'tfidf' is not fitted: call fit(training records) or load a trained run first")

    def fingerprint(self) -> str:
        self._require_fitted()
        return f"tfidf|{self._digest}|dim={self.dim}"

    def forward(self, texts: list[str]) -> torch.Tensor:
        self._require_fitted()
        matrix = self.vectorizer.transform(texts)  # sparse (B, dim)
        return torch.from_numpy(matrix.toarray().astype(np.float32)).to(self._device.device)  # (B, dim)
