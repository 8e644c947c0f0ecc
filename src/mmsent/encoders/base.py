"""The encoder interface: a backbone turns records of one modality into fixed-size features."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from mmsent.config import Config, TextConfig
from mmsent.data.images import (
    ImagePreprocessing,
    eval_transform,
    open_image,
    train_transform,
)
from mmsent.data.records import Record
from mmsent.data.text import clean_text


class Encoder(nn.Module):
    """Base class: `load_item` reads one record, `collate` batches items, `forward` gives (B, dim)."""

    name: ClassVar[str] = "encoder"
    modality: ClassVar[str] = "text"
    dim: int = 0

    tuned_digest: str | None = None  # set when fine-tuned weights replace the named ones
    # a torch network whose frozen forward ONNX Runtime can run (mmsent.encoders.onnx_export exports it)
    exportable: ClassVar[bool] = False
    # a convolutional network: on a CPU it runs faster in the channels_last memory layout
    convolutional: ClassVar[bool] = False
    # created with defer_network=True, the torch network (`self.model`) is built on first use: a run that
    # carries verified ONNX exports predicts without it (no transformers model code imported, no weights)
    _network_deferred: bool = False

    def build_network(self) -> None:
        """Create the torch network `self.model`: encoders that can defer it (defer_network=True) implement it."""
        raise NotImplementedError(f"encoder {self.name!r} cannot defer its network")

    def ensure_network(self) -> None:
        """Build a deferred network now, in this module's train/eval mode; nothing if it is built."""
        if self.__dict__.get("_network_deferred"):
            self._network_deferred = False
            self.build_network()
            self.train(self.training)  # through the encoder, so that its own train() rules apply

    def release_network(self) -> bool:
        """Free the torch network, to be built again on first use; only for an encoder that can build it again
        with the same weights (deferrable, not fine-tuned). Returns whether it was freed."""
        can_rebuild = type(self).build_network is not Encoder.build_network and self.tuned_digest is None
        if not can_rebuild or "model" not in self._modules:
            return False
        del self._modules["model"]
        self._network_deferred = True
        return True

    def __getattr__(self, name: str) -> Any:
        if name == "model" and self.__dict__.get("_network_deferred"):
            self.ensure_network()  # whatever needs the torch network gets it, built now
            return self._modules["model"]
        return super().__getattr__(name)

    def fingerprint(self) -> str:
        """Identifies weights and preprocessing: features are cached under it."""
        raise NotImplementedError

    def cache_fingerprint(self) -> str:
        """fingerprint(), plus the digest of fine-tuned weights when they were loaded."""
        base = self.fingerprint()
        return f"{base}|tuned={self.tuned_digest}" if self.tuned_digest else base

    def item_key(self, record: Record, cfg: Config) -> str:
        """Identifies one record's input content (the cache key within this fingerprint)."""
        raise NotImplementedError

    def item_loader(self, cfg: Config, train: bool = False) -> Callable[[Record], Any]:
        """A picklable function from a record to this encoder's input item."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return items

    def forward_tokens(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Token / patch features (B, T, D_tok) and a mask (B, T) for token-level heads.

        Optional: only encoders with a sequence (transformers' tokens, CNN patches) implement it.
        """
        raise NotImplementedError(f"encoder {self.name!r} gives no token features")

    def probe_items(self) -> list[Any]:
        """A few inputs, as item_loader gives them, on which an exported forward is checked against torch."""
        raise NotImplementedError(f"encoder {self.name!r} has no probe inputs")

    def named_inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        """A collated batch as named tensors: the inputs of the exported forward."""
        return dict(batch) if isinstance(batch, dict) else {IMAGES: batch}

    def fit(self, records: list[Record], cfg: Config) -> None:
        """Learn state from training records (only for encoders that have any, such as TF-IDF)."""

    def extra_state_dict(self) -> dict[str, Any]:
        """Fitted, non-tensor state to save beside a checkpoint (JSON-serialisable)."""
        return {}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what extra_state_dict returned."""


IMAGES = "images"  # the input name of an image batch (B, 3, H, W) in an exported forward
# texts of several lengths (so that padding is checked too) and a seed for probe images
PROBE_TEXTS = ("what a happy day at the beach with friends :)", "so sad", "the bus is late again, and it is raining")
PROBE_SEED = 0


@dataclass(frozen=True)
class TextLoader:
    """Picklable record -> cleaned text function."""

    cfg: TextConfig

    def __call__(self, record: Record) -> str:
        return clean_text(record.text, self.cfg)


class TextEncoder(Encoder):
    """A text backbone fed the text cleaned as the config says (or as the encoder needs)."""

    modality: ClassVar[str] = "text"

    def text_config(self, cfg: Config) -> TextConfig:
        """The cleaning this encoder's input gets; lexicon encoders override it."""
        return cfg.text

    def item_key(self, record: Record, cfg: Config) -> str:
        text = TextLoader(self.text_config(cfg))(record)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def item_loader(self, cfg: Config, train: bool = False) -> Callable[[Record], Any]:
        return TextLoader(self.text_config(cfg))

    def probe_items(self) -> list[str]:
        return list(PROBE_TEXTS)


def _load_image(transform, max_pixels: int, draft: int | None, record: Record) -> torch.Tensor:
    return transform(open_image(record.image_source(), max_pixels=max_pixels, draft_size=draft))


def image_digest(record: Record) -> str:
    """md5 of the image content (content key, not security)."""
    data = record.image_bytes if record.image_bytes is not None else record.image_path.read_bytes()
    return hashlib.md5(data).hexdigest()  # noqa: S324


class ImageEncoder(Encoder):
    """An image backbone; its preprocessing (size, mean, std) comes with its weights."""

    modality: ClassVar[str] = "image"
    preprocessing: ImagePreprocessing = ImagePreprocessing()

    def item_key(self, record: Record, cfg: Config) -> str:
        return image_digest(record)

    def item_loader(self, cfg: Config, train: bool = False) -> Callable[[Record], Any]:
        prep = self.preprocessing
        if train:
            return partial(_load_image, train_transform(prep, cfg.image), cfg.data.max_image_pixels, None)
        return partial(_load_image, eval_transform(prep), cfg.data.max_image_pixels, prep.resize)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)  # (B, 3, H, W)

    def probe_items(self) -> list[torch.Tensor]:
        return probe_images(len(PROBE_TEXTS), self.preprocessing.size)


def probe_images(n: int, size: int) -> list[torch.Tensor]:
    """n seeded random images (3, size, size), normalised-pixel scale: the same on every call."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return list(torch.randn(n, 3, size, size, generator=generator))
