"""Cross-attention fusion: text tokens attend to image patches and back in a small transformer layer."""

from __future__ import annotations

import torch
from torch import nn

from mmsent.heads.concat import mlp
from mmsent.heads.registry import register_head

TokenInput = tuple[torch.Tensor, torch.Tensor]  # tokens (B, T, D), mask (B, T) true where valid


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H)."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class CrossBlock(nn.Module):
    """Queries attend to a context sequence, then a feed-forward layer (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(context)
        attended, _ = self.attn(self.norm_q(x), kv, kv, key_padding_mask=~context_mask)  # (B, Tq, H)
        x = x + attended
        return x + self.ff(self.norm_ff(x))


@register_head("cross_attention")
class CrossAttentionHead(nn.Module):
    """Text tokens attend to image patches and image patches to text tokens; pooled, then an MLP.

    Inputs are token sequences {modality: (tokens (B, T, D), mask (B, T))}; a pooled (B, D) input
    counts as one token. With one modality the block attends to itself.
    """

    token_level = True

    def __init__(
        self,
        input_dims: dict[str, int],
        num_classes: int,
        hidden_dim: int = 256,
        dropout: float = 0.3,
        layernorm: bool = False,
        attention_heads: int = 4,
    ):
        super().__init__()
        self.modalities = sorted(input_dims)
        dim = hidden_dim - hidden_dim % attention_heads or attention_heads
        self.project = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(d) if layernorm else nn.Identity(), nn.Linear(d, dim)) for m, d in input_dims.items()}
        )
        self.modality_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in self.modalities})
        self.blocks = nn.ModuleDict({m: CrossBlock(dim, attention_heads, dropout) for m in self.modalities})
        self.classifier = mlp(dim * len(self.modalities), hidden_dim, num_classes, dropout)

    @staticmethod
    def _as_tokens(value: torch.Tensor | TokenInput) -> TokenInput:
        if isinstance(value, tuple):
            return value[0], value[1].bool()
        tokens = value.unsqueeze(1)  # (B, D) -> (B, 1, D)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def forward(self, features: dict[str, torch.Tensor | TokenInput]) -> torch.Tensor:
        seqs, masks = {}, {}
        for m in self.modalities:
            tokens, mask = self._as_tokens(features[m])
            seqs[m] = self.project[m](tokens) + self.modality_embedding[m]  # (B, T_m, H)
            masks[m] = mask
        pooled = []
        for m in self.modalities:
            others = [o for o in self.modalities if o != m] or [m]  # one modality: self-attention
            context = torch.cat([seqs[o] for o in others], dim=1)
            context_mask = torch.cat([masks[o] for o in others], dim=1)
            updated = self.blocks[m](seqs[m], context, context_mask)  # (B, T_m, H)
            pooled.append(masked_mean(updated, masks[m]))
        return self.classifier(torch.cat(pooled, dim=-1))  # (B, C)
