"""Gated fusion: a learned sigmoid gate weighs the projected text and image features per dimension."""

from __future__ import annotations

import torch
from torch import nn

from mmsent.heads.concat import input_block, mlp
from mmsent.heads.registry import register_head


@register_head("gated")
class GatedHead(nn.Module):
    """Project each modality, mix them with a learned sigmoid gate, then classify."""

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
        self.project = nn.ModuleDict(
            {
                m: nn.Sequential(*input_block(d, layernorm, dropout), nn.Linear(d, hidden_dim), nn.GELU())
                for m, d in input_dims.items()
            }
        )
        # one gate per modality and dimension, from all projected modalities together
        self.gate = nn.Linear(hidden_dim * len(self.modalities), hidden_dim * len(self.modalities))
        self.classifier = mlp(hidden_dim, hidden_dim, num_classes, dropout)
        self.hidden_dim = hidden_dim

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        projected = [self.project[m](features[m]) for m in self.modalities]  # M x (B, H)
        stacked = torch.stack(projected, dim=1)  # (B, M, H)
        gates = self.gate(torch.cat(projected, dim=-1)).view_as(stacked)  # (B, M, H)
        weights = torch.softmax(gates, dim=1)  # modalities compete per dimension; M=2: a sigmoid gate
        fused = (weights * stacked).sum(dim=1)  # (B, H)
        return self.classifier(fused)  # (B, C)
