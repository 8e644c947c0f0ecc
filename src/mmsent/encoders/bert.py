"""BERT-style text encoder: any Hugging Face AutoModel (default bert-base-uncased), CLS or mean pooled."""

from __future__ import annotations

from typing import Any

import torch

from mmsent.encoders.base import TextEncoder
from mmsent.encoders.hf import HFModelSpec, check_pooling, load_tokenizer, tokenize
from mmsent.encoders.minilm import mean_pool
from mmsent.encoders.registry import register_encoder


@register_encoder("bert", "Hugging Face AutoModel text encoder (default bert-base-uncased, 768-d), CLS or mean pooled")
class BertEncoder(TextEncoder):
    """Transformer text encoder: tokens -> last hidden states (B, T, H) -> CLS or masked mean (B, H)."""

    name = "bert"
    exportable = True

    def __init__(
        self,
        name_or_path: str = "bert-base-uncased",
        pretrained: bool = True,
        max_length: int = 128,
        pooling: str = "cls",
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        from transformers import AutoModel

        self.spec = HFModelSpec("bert", name_or_path, pretrained, config, seed, default_model_type="bert")
        self.pooling = check_pooling("bert", pooling)
        self.max_length = max_length
        self.tokenizer_name = tokenizer
        self.model = self.spec.build_model(AutoModel)  # first, so missing weights are what the error names
        self.tokenizer = load_tokenizer("bert", tokenizer, name_or_path)
        self.dim = int(self.model.config.hidden_size)
        self.token_dim = self.dim
        self._weights_id = self.spec.weights_id(self.model)

    def fingerprint(self) -> str:
        tok = f"{self.tokenizer_name or self.spec.name_or_path}:{len(self.tokenizer)}"
        return f"bert|{self._weights_id}|tok={tok}|max_length={self.max_length}|pool={self.pooling}"

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, items, self.max_length)

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(**batch).last_hidden_state  # (B, T, H)
        return hidden, batch["attention_mask"].bool()  # (B, T, H), (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, mask = self.forward_tokens(batch)
        if self.pooling == "cls":
            return hidden[:, 0]  # (B, H): the [CLS] token
        return mean_pool(hidden, mask)  # (B, H)
