"""Linear fusion with low-rank text x image products: a logistic regression that also sees interactions."""

from __future__ import annotations

import torch

from mmsent.errors import ConfigError
from mmsent.heads.linear import LinearHead
from mmsent.heads.registry import register_head

PAIR = ("image", "text")  # the two modalities whose projections are multiplied


@register_head("bilinear")
class BilinearHead(LinearHead):
    """Linear fusion plus products of the text's and the image's top principal components (whitened).

    The concatenated features of a linear head can only add what each modality says; sentiment is often in
    the pair (a cheerful caption under a grim picture). Each modality is projected onto its first `rank`
    principal components of the training features (whitened, fitted once by `fit_inputs`, not trained),
    and the rank x rank products, standardised and weighted by `scale`, join the linear layer's input.
    The projections are unsupervised, like the standardisation, so cross-fitted heads may share them.
    With one modality (an ablation retrained on one side) there is nothing to multiply: a linear head.
    """

    def __init__(self, input_dims: dict[str, int], num_classes: int, rank: int = 32, scale: float = 0.6, **kwargs):
        """rank, scale: the bilinear options; kwargs: the linear head's (dropout, layernorm)."""
        if rank < 1 or scale <= 0:
            raise ConfigError(f"head 'bilinear': rank must be at least 1 and scale above 0 (got {rank}, {scale}); "
                              "set model.head_options")
        too_few = [m for m in PAIR if rank > input_dims.get(m, rank)]
        if too_few:
            raise ConfigError(f"head 'bilinear': rank {rank} exceeds the {input_dims[too_few[0]]} {too_few[0]} "
                              "features; lower model.head_options.rank")
        self.rank, self.scale = rank, scale  # plain numbers: settable before Module.__init__
        self.pairs = set(PAIR) <= set(input_dims)
        super().__init__(input_dims, num_classes, **kwargs)
        if self.pairs:
            for modality in PAIR:
                self.register_buffer(f"center_{modality}", torch.zeros(input_dims[modality]))
                self.register_buffer(f"project_{modality}", torch.zeros(input_dims[modality], rank))
            self.register_buffer("product_mean", torch.zeros(rank * rank))
            self.register_buffer("product_std", torch.ones(rank * rank))

    def joined_dim(self, input_dims: dict[str, int]) -> int:
        return sum(input_dims.values()) + (self.rank * self.rank if self.pairs else 0)

    def fit_inputs(self, groups: dict[str, torch.Tensor], fitted: dict[str, torch.Tensor] | None = None) -> dict:
        """Fit the projections and the products' standardisation on the standardised training groups
        {modality: (N, D_m)}, or take them from `fitted` (another head's); returns them."""
        if not self.pairs:
            return {}
        if fitted is None:
            for modality in PAIR:
                center, project = whitened_components(groups[modality], self.rank)
                getattr(self, f"center_{modality}").copy_(center)
                getattr(self, f"project_{modality}").copy_(project)
            products = self.products(groups)  # (N, rank^2)
            self.product_mean.copy_(products.mean(0))
            self.product_std.copy_(products.std(0).clamp_min(1e-6))
            fitted = {name: buffer.clone() for name, buffer in self.named_buffers()}
        else:
            self.load_state_dict(fitted, strict=False)
        return fitted

    def products(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, rank * rank): every text component times every image component."""
        text, image = (
            (groups[m] - getattr(self, f"center_{m}")) @ getattr(self, f"project_{m}") for m in ("text", "image")
        )  # (B, rank) each, unit variance on the training posts
        return (text.unsqueeze(2) * image.unsqueeze(1)).flatten(1)  # (B, rank * rank)

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        joined = super().fuse(features)  # (B, D_image + D_text)
        if not self.pairs:
            return joined
        interactions = (self.products(features) - self.product_mean) / self.product_std * self.scale
        return torch.cat([joined, interactions], dim=-1)  # (B, D_image + D_text + rank^2)


def whitened_components(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Center (D,) and projection (D, rank) onto the top principal components of the column-standardised x (N, D),
    scaled so that the projected training rows have unit variance."""
    x = x.double()
    center = x.mean(0)
    spread = x.std(0).clamp_min(1e-6)  # every feature counts alike, whatever its weight in the head
    _, singular, directions = torch.linalg.svd((x - center) / spread, full_matrices=False)  # directions: (K, D)
    deviation = singular[:rank] / max(len(x) - 1, 1) ** 0.5  # (rank,) std of each component
    project = directions[:rank].T / spread.unsqueeze(1) / deviation.clamp_min(1e-6)  # (D, rank)
    return center.float(), project.float()
