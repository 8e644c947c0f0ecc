"""Linear fusion: the concatenated standardised features, one linear layer (a logistic regression)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmsent.heads.concat import input_block
from mmsent.heads.registry import register_head


@register_head("linear")
class LinearHead(nn.Module):
    """Concatenate the modality features, one linear layer; with train.optimizer=lbfgs a logistic regression."""

    def __init__(
        self,
        input_dims: dict[str, int],
        num_classes: int,
        hidden_dim: int = 256,  # unused: the same signature as every head
        dropout: float = 0.0,
        layernorm: bool = False,
    ):
        super().__init__()
        self.modalities = sorted(input_dims)
        total = self.joined_dim(input_dims)
        self.inputs = nn.Sequential(*input_block(total, layernorm, dropout))
        self.linear = nn.Linear(total, num_classes)

    def joined_dim(self, input_dims: dict[str, int]) -> int:
        """The width of what `fuse` returns."""
        return sum(input_dims.values())

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_fused(self.fuse(features))

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([features[m] for m in self.modalities], dim=-1)  # (B, D_text + D_image)

    def forward_fused(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(self.inputs(fused))  # (B, C)

    def prepare_fixed_inputs(self, features: dict[str, torch.Tensor]) -> tuple[Callable, torch.Tensor]:
        """(forward on the joined features, them joined once) for a full-batch optimiser (see trainer.fixed_inputs)."""
        with torch.no_grad():
            return self.forward_fused, self.fuse(features)
