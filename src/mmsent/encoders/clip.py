"""CLIP text and image towers (transformers CLIPModel, default openai/clip-vit-base-patch32), projected features."""

from __future__ import annotations

import weakref
from typing import Any

import torch

from mmsent.encoders.base import ImageEncoder, TextEncoder
from mmsent.encoders.hf import HFModelSpec, load_image_processor, load_tokenizer, preprocessing_from_processor, tokenize
from mmsent.encoders.registry import register_encoder

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
# clip_text and clip_image created in one process share one loaded CLIPModel (keyed by its options)
_SHARED: weakref.WeakValueDictionary[str, torch.nn.Module] = weakref.WeakValueDictionary()


def shared_model(spec: HFModelSpec, model_cls) -> torch.nn.Module:
    """One model per (class, options) while any encoder holds it."""
    key = f"{model_cls.__name__}|{spec.cache_key()}"
    model = _SHARED.get(key)
    if model is None:
        model = spec.build_model(model_cls)
        _SHARED[key] = model
    return model


class _ClipTower:
    """Options shared by both towers: name_or_path, pretrained, config (with pretrained=false), seed."""

    def _init_clip(self, encoder: str, name_or_path: str, pretrained: bool, config: dict[str, Any] | None, seed: int):
        from transformers import CLIPModel

        self.spec = HFModelSpec(encoder, name_or_path, pretrained, config, seed, default_model_type="clip")
        self.model = shared_model(self.spec, CLIPModel)
        self.dim = int(self.model.config.projection_dim)
        self._weights_id = self.spec.weights_id(self.model)


@register_encoder("clip_text", "CLIP text tower, projected (default openai/clip-vit-base-patch32, 512-d)")
class ClipTextEncoder(_ClipTower, TextEncoder):
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
        self._init_clip("clip_text", name_or_path, pretrained, config, seed)
        self.tokenizer_name = tokenizer
        self.tokenizer = load_tokenizer("clip_text", tokenizer, name_or_path)
        self.max_length = min(max_length, int(self.model.config.text_config.max_position_embeddings))
        self.token_dim = int(self.model.config.text_config.hidden_size)

    def fingerprint(self) -> str:
        tok = f"{self.tokenizer_name or self.spec.name_or_path}:{len(self.tokenizer)}"
        return f"clip_text|{self._weights_id}|tok={tok}|max_length={self.max_length}"

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        batch = tokenize(self.tokenizer, items, self.max_length)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _text(self, batch: dict[str, torch.Tensor]):
        return self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._text(batch)
        return out.last_hidden_state, batch["attention_mask"].bool()  # (B, T, H_text), (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self._text(batch).pooler_output  # (B, H_text): the EOS token after the final norm
        return self.model.text_projection(pooled)  # (B, projection_dim)


@register_encoder("clip_image", "CLIP image tower, projected (default openai/clip-vit-base-patch32, 512-d)")
class ClipImageEncoder(_ClipTower, ImageEncoder):
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

        self._init_clip("clip_image", name_or_path, pretrained, config, seed)
        processor = load_image_processor(self.spec, CLIPImageProcessor)
        self.preprocessing = preprocessing_from_processor(processor, int(self.model.config.vision_config.image_size))
        self.token_dim = int(self.model.config.vision_config.hidden_size)

    def fingerprint(self) -> str:
        return f"clip_image|{self._weights_id}|{self.preprocessing.key()}"

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.vision_model(pixel_values=images).last_hidden_state  # (B, 1 + patches, H_vis)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=images).pooler_output  # (B, H_vis): CLS after post-norm
        return self.model.visual_projection(pooled)  # (B, projection_dim)
