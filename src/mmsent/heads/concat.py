"""Concatenation fusion: modality features side by side, optional LayerNorm, then an MLP."""

from __future__ import annotations

import torch
from torch import nn

from mmsent.heads.registry import register_head


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float, layers: int = 1) -> nn.Sequential:
    """`layers` hidden blocks of Linear-GELU-Dropout, then the output Linear."""
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        blocks += [nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*blocks)


def input_block(dim: int, layernorm: bool, dropout: float) -> list[nn.Module]:
    """What every head does to its inputs first: optional LayerNorm, then dropout."""
    return [nn.LayerNorm(dim) if layernorm else nn.Identity(), nn.Dropout(dropout)]


@register_head("concat")
class ConcatHead(nn.Module):
    """Concatenate the modality features, optionally LayerNorm them, then a one-hidden-layer MLP."""

    def __init__(
        self,
        input_dims: dict[str, int],
        num_classes: int,
        hidden_dim: int = 256,
        dropout: float = 0.3,
        layernorm: bool = False,
        layers: int = 1,
    ):
        super().__init__()
        self.modalities = sorted(input_dims)
        total = sum(input_dims.values())
        self.inputs = nn.Sequential(*input_block(total, layernorm, dropout))
        self.mlp = mlp(total, hidden_dim, num_classes, dropout, layers)

    def forward_features(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused hidden representation before the output layer: (B, hidden_dim)."""
        fused = torch.cat([features[m] for m in self.modalities], dim=-1)  # (B, D_text + D_image)
        return self.mlp[:-1](self.inputs(fused))

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp[-1](hidden)  # (B, C)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_head(self.forward_features(features))


@register_head("ln")
class LayerNormHead(ConcatHead):
    """LayerNorm on the fused features, then the concat MLP (the study's 'ln' head)."""

    def __init__(self, input_dims: dict[str, int], num_classes: int, **kwargs):
        kwargs["layernorm"] = True
        super().__init__(input_dims, num_classes, **kwargs)


@register_head("mlp")
class DeepMLPHead(ConcatHead):
    """Concatenation, then an MLP with two hidden layers."""

    def __init__(self, input_dims: dict[str, int], num_classes: int, **kwargs):
        kwargs["layers"] = 2
        super().__init__(input_dims, num_classes, **kwargs)
