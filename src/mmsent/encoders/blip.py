"""BLIP image-text encoders (transformers BlipForImageTextRetrieval, default Salesforce/blip-itm-base-coco).

`blip_text` / `blip_image`: unimodal features, projected and L2-normalised as BLIP's contrastive
(ITC) head does; `blip_itm`: the fused image-text features (text encoder CLS attending to the image).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.functional import normalize

from mmsent.config import Config
from mmsent.data.records import Record
from mmsent.encoders.base import (
    PROBE_TEXTS,
    ImageEncoder,
    TextEncoder,
    TextLoader,
    image_digest,
    probe_images,
)
from mmsent.encoders.hf import HFTower
from mmsent.encoders.registry import register_encoder

DEFAULT_BLIP = "Salesforce/blip-itm-base-coco"


def _blip_model_cls():
    from transformers import BlipForImageTextRetrieval

    return BlipForImageTextRetrieval


def _blip_processor_cls():
    from transformers import BlipImageProcessor

    return BlipImageProcessor


class _BlipPart(HFTower):
    """The BLIP parts the encoders share: text states (optionally attending to image states), image states."""

    def _text_states(self, batch: dict[str, torch.Tensor], image_states: torch.Tensor | None = None) -> torch.Tensor:
        """Text encoder states (B, T, H_text); with image_states it cross-attends to them (ITM fusion)."""
        kwargs = {}
        if image_states is not None:
            kwargs = {
                "encoder_hidden_states": image_states,  # (B, 1 + patches, H_vis)
                "encoder_attention_mask": torch.ones(image_states.shape[:2], dtype=torch.long, device=image_states.device),
            }
        return self.text_encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs
        ).last_hidden_state

    def _image_states(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=images).last_hidden_state  # (B, 1 + patches, H_vis)


@register_encoder("blip_text", "BLIP text encoder CLS, projected (default Salesforce/blip-itm-base-coco, 256-d)")
class BlipTextEncoder(_BlipPart, TextEncoder):
    """BLIP unimodal text encoder: tokens -> CLS state -> text projection, L2-normalised (B, 256)."""

    name = "blip_text"

    def __init__(
        self,
        name_or_path: str = DEFAULT_BLIP,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        max_length: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        model = self._init_model(_blip_model_cls(), "blip", name_or_path, pretrained, config, seed)
        self.text_encoder, self.text_proj = model.text_encoder, model.text_proj
        self._init_tokenizer(tokenizer, max_length)
        self.dim = int(self.hf_config.image_text_hidden_size)
        self.token_dim = int(self.hf_config.text_config.hidden_size)

    def fingerprint(self) -> str:
        return f"blip_text|{self._weights_id}|{self._tok_key()}"

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        return self.collate_text(items)

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._text_states(batch), batch["attention_mask"].bool()  # (B, T, H_text), (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cls = self._text_states(batch)[:, 0]  # (B, H_text)
        return normalize(self.text_proj(cls), dim=-1)  # (B, 256)


@register_encoder("blip_image", "BLIP ViT image CLS, projected (default Salesforce/blip-itm-base-coco, 256-d)")
class BlipImageEncoder(_BlipPart, ImageEncoder):
    """BLIP vision transformer: (B, 3, S, S) -> CLS state -> vision projection, L2-normalised (B, 256)."""

    name = "blip_image"

    def __init__(
        self,
        name_or_path: str = DEFAULT_BLIP,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        model = self._init_model(_blip_model_cls(), "blip", name_or_path, pretrained, config, seed)
        self.vision_model, self.vision_proj = model.vision_model, model.vision_proj
        self._init_images(_blip_processor_cls())
        self.dim = int(self.hf_config.image_text_hidden_size)
        self.token_dim = int(self.hf_config.vision_config.hidden_size)

    def fingerprint(self) -> str:
        return f"blip_image|{self._weights_id}|{self.preprocessing.key()}"

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self._image_states(images)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cls = self._image_states(images)[:, 0]  # (B, H_vis)
        return normalize(self.vision_proj(cls), dim=-1)  # (B, 256)


@dataclass(frozen=True)
class PairLoader:
    """Picklable record -> (cleaned text, image tensor) function."""

    text: TextLoader
    image: Any

    def __call__(self, record: Record) -> tuple[str, torch.Tensor]:
        return self.text(record), self.image(record)


@register_encoder("blip_itm", "BLIP fused image-text (ITM) features (default Salesforce/blip-itm-base-coco, 768-d)")
class BlipItmEncoder(_BlipPart, ImageEncoder):
    """BLIP image-grounded text encoder: text tokens cross-attend to image patches; the CLS state (B, H_text).

    Modality "multimodal": each item is a (text, image) pair.
    """

    name = "blip_itm"
    modality = "multimodal"

    def __init__(
        self,
        name_or_path: str = DEFAULT_BLIP,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        max_length: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        # its own model, not the shared one: the fused encoder uses the towers of blip_text / blip_image
        # too, and the encoders' parameters must stay disjoint when they are used together
        model = self._init_model(_blip_model_cls(), "blip", name_or_path, pretrained, config, seed, share=False)
        self.vision_model, self.text_encoder = model.vision_model, model.text_encoder
        self._init_tokenizer(tokenizer, max_length)
        self._init_images(_blip_processor_cls())
        self.dim = int(self.hf_config.text_config.hidden_size)
        self.token_dim = self.dim

    def fingerprint(self) -> str:
        return f"blip_itm|{self._weights_id}|{self._tok_key()}|{self.preprocessing.key()}"

    def item_key(self, record: Record, cfg: Config) -> str:
        text = TextLoader(cfg.text)(record)
        return hashlib.sha256(f"{text}\0{image_digest(record)}".encode()).hexdigest()

    def item_loader(self, cfg: Config, train: bool = False):
        return PairLoader(TextLoader(cfg.text), super().item_loader(cfg, train))

    def probe_items(self) -> list[tuple[str, torch.Tensor]]:
        return list(zip(PROBE_TEXTS, probe_images(len(PROBE_TEXTS), self.preprocessing.size), strict=True))

    def collate(self, items: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {
            **self.collate_text([text for text, _ in items]),
            "pixel_values": torch.stack([image for _, image in items]),  # (B, 3, S, S)
        }

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self._text_states(batch, self._image_states(batch["pixel_values"]))  # (B, T, H_text)
        return fused, batch["attention_mask"].bool()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_tokens(batch)[0][:, 0]  # (B, H_text): the fused CLS, input of BLIP's ITM head
