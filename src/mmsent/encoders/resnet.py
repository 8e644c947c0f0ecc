"""ResNet-18 image encoder (torchvision, ImageNet weights through the torch hub cache)."""

from __future__ import annotations

import contextlib
import io
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch

from mmsent.data.images import ImagePreprocessing
from mmsent.encoders.base import ImageEncoder
from mmsent.encoders.hf import seeded
from mmsent.encoders.registry import register_encoder
from mmsent.errors import MmsentError, WeightsNotFoundError


def preprocessing_from_weights(weights) -> ImagePreprocessing:
    """Resize, crop, mean, std and interpolation exactly as the torchvision weights enum declares them."""
    t = weights.transforms()
    return ImagePreprocessing(
        size=int(t.crop_size[0]),
        resize=int(t.resize_size[0]),
        mean=tuple(float(x) for x in t.mean),
        std=tuple(float(x) for x in t.std),
        interpolation=t.interpolation.value,
    )


def hub_checkpoint_path(weights) -> Path:
    """Where torchvision's loader caches (and looks for) the weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """A firewalled network fails in seconds instead of hanging on urlopen (which has no timeout)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def load_torchvision_state(encoder: str, weights, weights_path: str | None) -> dict[str, torch.Tensor]:
    """State dict from weights_path, else from torchvision's hub cache (downloading it if possible)."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"encoder {encoder!r}: no weights file at {path} (model.encoder_options.{encoder}.weights_path)")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            raise MmsentError(f"encoder {encoder!r}: cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    target = hub_checkpoint_path(weights)
    try:
        # torch hub prints "Downloading: ..." even without progress; the error below says it all
        with socket_timeout(15.0), contextlib.redirect_stdout(io.StringIO()):
            return weights.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, TimeoutError, RuntimeError) as exc:
        raise WeightsNotFoundError(
            f"encoder {encoder!r}: the ImageNet weights {weights} are not in the torch hub cache ({target}) "
            f"and could not be downloaded from {weights.url} ({type(exc).__name__}: {exc}). "
            f"Download that file on a machine with internet and put it at {target}, "
            f"or set model.encoder_options.{encoder}.weights_path=/path/to/{target.name}, "
            f"or model.encoder_options.{encoder}.pretrained=false for a randomly initialised network."
        ) from None


def weights_file_id(path: str) -> str:
    """Name, size and mtime of a local weights file: the cache key changes when the file does."""
    stat = Path(path).expanduser().stat()
    return f"{Path(path).name}:{stat.st_size}:{int(stat.st_mtime)}"


@register_encoder("resnet18", "torchvision ResNet-18, ImageNet weights (IMAGENET1K_V1), 512-d global average pool")
class ResNet18Encoder(ImageEncoder):
    """ResNet-18 trunk: (B, 3, 224, 224) -> layer4 (B, 512, 7, 7) -> average pool (B, 512)."""

    name = "resnet18"
    exportable = True
    convolutional = True

    def __init__(self, pretrained: bool = True, weights_path: str | None = None, seed: int = 0):
        super().__init__()
        from torchvision.models import ResNet18_Weights, resnet18

        weights = ResNet18_Weights.IMAGENET1K_V1
        self.preprocessing = preprocessing_from_weights(weights)
        with seeded(seed):  # random init (pretrained=false) is reproducible when the run is rebuilt
            self.model = resnet18(weights=None)
        if pretrained:
            state = load_torchvision_state("resnet18", weights, weights_path)
            try:
                self.model.load_state_dict(state)
            except RuntimeError as exc:
                raise MmsentError(f"encoder 'resnet18': the weights do not fit ResNet-18: {str(exc)[:300]}") from None
            self._weights_id = weights_file_id(weights_path) if weights_path else str(weights)
        else:
            self._weights_id = f"random-seed{seed}"
        self.model.fc = torch.nn.Identity()  # the ImageNet classifier is not used
        self.dim = 512
        self.token_dim = 512

    def fingerprint(self) -> str:
        return f"resnet18|{self._weights_id}|{self.preprocessing.key()}"

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(images))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))  # (B, 512, H/32, W/32)

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(images)  # (B, 512, 7, 7)
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, 49, 512): one token per patch
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images).mean(dim=(2, 3))  # (B, 512)
