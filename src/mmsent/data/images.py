"""Opening images safely as RGB, and the train / eval transforms built from an encoder's preprocessing."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mmsent.config import ImageConfig

# Header-only check before decoding; PIL's own bomb limit is relaxed so ours is the one that speaks.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(ValueError):
    """An image cannot be used: unreadable, truncated or too large."""


@dataclass(frozen=True)
class ImagePreprocessing:
    """What an image encoder's weights expect; transforms are derived from it, never hard-coded."""

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def key(self) -> str:
        return f"size={self.size},resize={self.resize},mean={self.mean},std={self.std},interp={self.interpolation}"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # transparent areas become white, as a viewer shows them
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def open_image(source: Path | bytes, max_pixels: int = 89_478_485, draft_size: int | None = None) -> Image.Image:
    """Open an image (any mode or format PIL reads) as RGB; raise ImageReadError if unusable."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(stream)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                    "(a decompression bomb or an oversized image)"
                )
            if draft_size and img.format == "JPEG":
                # JPEG DCT scaling: decode at >= draft_size, much faster than full size then resize
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            return _to_rgb(img)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("image file is missing") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"image cannot be decoded ({type(exc).__name__}: {exc})") from None


def verify_image(path: Path, max_pixels: int) -> tuple[int, int]:
    """Cheap structural check without full decoding; returns (width, height)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{max_pixels:,} (a decompression bomb or an oversized image)"
                    )
                img.verify()
                return width, height
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("image file is missing") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ImageReadError(f"image cannot be decoded ({type(exc).__name__}: {exc})") from None


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def eval_transform(prep: ImagePreprocessing):
    """Resize, centre crop, to tensor, normalise with the encoder's mean/std."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(prep.resize, interpolation=_interpolation(prep.interpolation)),
            T.CenterCrop(prep.size),
            T.ToTensor(),
            T.Normalize(prep.mean, prep.std),
        ]
    )


def train_transform(prep: ImagePreprocessing, cfg: ImageConfig):
    """Random resized crop, horizontal flip and light colour jitter, then normalise."""
    from torchvision import transforms as T

    steps = [
        T.RandomResizedCrop(prep.size, scale=(cfg.crop_scale_min, 1.0), interpolation=_interpolation(prep.interpolation))
    ]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps += [T.ToTensor(), T.Normalize(prep.mean, prep.std)]
    return T.Compose(steps)
