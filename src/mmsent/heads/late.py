"""Late fusion: one classifier per modality, logits combined with learned weights."""

from __future__ import annotations

import torch
from torch import nn

from mmsent.heads.concat import input_block, mlp
from mmsent.heads.registry import register_head


@register_head("late")
class LateFusionHead(nn.Module):
    """A classifier per modality; their logits are summed with learned softmax weights."""

    def __init__(
        self,
        input_dims: dict[str, int],
        num_classes: int,
        hidden_dim: int = 256,
        dropout: float = 0.3,
        layernorm: bool = False,
    ):
        super().__init__()
        self.modalities = sorted(input_dims)
        self.branches = nn.ModuleDict(
            {
                m: nn.Sequential(*input_block(d, layernorm, dropout), mlp(d, hidden_dim, num_classes, dropout))
                for m, d in input_dims.items()
            }
        )
        self.mix = nn.Parameter(torch.zeros(len(self.modalities)))  # softmax -> equal weights at start

    def modality_weights(self) -> dict[str, float]:
        weights = torch.softmax(self.mix.detach(), dim=0)
        return {m: float(w) for m, w in zip(self.modalities, weights, strict=True)}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = torch.stack([self.branches[m](features[m]) for m in self.modalities], dim=1)  # (B, M, C)
        weights = torch.softmax(self.mix, dim=0)  # (M,)
        return (weights[None, :, None] * logits).sum(dim=1) * len(self.modalities)  # (B, C)
