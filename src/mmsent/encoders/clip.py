"""CLIP text and image towers (transformers CLIPModel, default openai/clip-vit-base-patch32), projected features."""

from __future__ import annotations

from typing import Any

import torch

from mmsent.encoders.base import ImageEncoder, TextEncoder
from mmsent.encoders.hf import HFTower
from mmsent.encoders.registry import register_encoder

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def _clip_model_cls():
    from transformers import CLIPModel

    return CLIPModel


@register_encoder("clip_text", "CLIP text tower, projected (default openai/clip-vit-base-patch32, 512-d)")
class ClipTextEncoder(HFTower, TextEncoder):
    """CLIP text transformer: tokens (B, T) -> EOS state -> text projection (B, projection_dim)."""

    name = "clip_text"

    def __init__(
        self,
        name_or_path: str = DEFAULT_CLIP,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        max_length: int = 77,
        seed: int = 0,
    ):
        super().__init__()
        model = self._init_model(_clip_model_cls(), "clip", name_or_path, pretrained, config, seed)
        self.text_model, self.text_projection = model.text_model, model.text_projection
        self._init_tokenizer(tokenizer, max_length)
        self.dim = int(self.hf_config.projection_dim)
        self.token_dim = int(self.hf_config.text_config.hidden_size)

    def fingerprint(self) -> str:
        return f"clip_text|{self._weights_id}|{self._tok_key()}"

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        return self.collate_text(items)

    def _text(self, batch: dict[str, torch.Tensor]):
        return self.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._text(batch)
        return out.last_hidden_state, batch["attention_mask"].bool()  # (B, T, H_text), (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self._text(batch).pooler_output  # (B, H_text): the EOS token after the final norm
        return self.text_projection(pooled)  # (B, projection_dim)


@register_encoder("clip_image", "CLIP image tower, projected (default openai/clip-vit-base-patch32, 512-d)")
class ClipImageEncoder(HFTower, ImageEncoder):
    """CLIP vision transformer: (B, 3, S, S) -> CLS state -> visual projection (B, projection_dim)."""

    name = "clip_image"

    def __init__(
        self,
        name_or_path: str = DEFAULT_CLIP,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        from transformers import CLIPImageProcessor

        model = self._init_model(_clip_model_cls(), "clip", name_or_path, pretrained, config, seed)
        self.vision_model, self.visual_projection = model.vision_model, model.visual_projection
        self._init_images(CLIPImageProcessor)  # size, mean, std, bicubic from the model's processor config
        self.dim = int(self.hf_config.projection_dim)
        self.token_dim = int(self.hf_config.vision_config.hidden_size)

    def fingerprint(self) -> str:
        return f"clip_image|{self._weights_id}|{self.preprocessing.key()}"

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vision_model(pixel_values=images).last_hidden_state  # (B, 1 + patches, H_vis)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=images).pooler_output  # (B, H_vis): CLS after post-norm
        return self.visual_projection(pooled)  # (B, projection_dim)
