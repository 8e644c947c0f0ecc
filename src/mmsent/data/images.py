"""Opening images safely as RGB, and the train / eval transforms built from an encoder's preprocessing."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from PIL import Image

from mmsent.config import ImageConfig

# Header-only check before decoding; PIL's own bomb limit is relaxed so ours is the one that speaks.
Image.MAX_IMAGE_PIXELS = None


# What one image decode may hold by default where a limit is asked for (the service): 64 MiB admits a
# 12-megapixel RGB photo (48 MB in Pillow) and keeps a few concurrent decodes within a small server's memory.
DEFAULT_MAX_DECODE_BYTES = 64 * 1024 * 1024


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


def _needs_alpha(img: Image.Image) -> bool:
    """Whether converting img to RGB goes through RGBA (its transparent areas become white)."""
    return img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if _needs_alpha(img):
        # transparent areas become white, as a viewer shows them; an RGBA image is its own mask, so no
        # copy of it or of its alpha band is made (decode_cost counts on that)
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba)
        return background
    return img.convert("RGB")


def pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel of mode: 1 for L, P and 1; 2 for I;16; 4 for I and F and for every
    multi-band mode (RGB included: Pillow pads its pixels to 32 bits)."""
    if mode.startswith("I;16"):
        return 2
    if mode in ("1", "L", "P"):
        return 1
    return 4


def decode_cost(img: Image.Image) -> int:
    """Bytes that decoding img (as opened, after any draft) and converting it to RGB hold at once.

    Read from the header, before decoding: the decoded image, the RGBA step of a transparent image,
    and the RGB result. A 9400 x 9400 greyscale PNG costs 5 bytes a pixel (the L image, then its
    RGB copy): 442 MB, however small its file.
    """
    width, height = img.size
    per_pixel = pixel_bytes(img.mode)
    if img.mode != "RGB":
        per_pixel += pixel_bytes("RGB")  # the RGB result
        if _needs_alpha(img) and img.mode != "RGBA":
            per_pixel += pixel_bytes("RGBA")  # the RGBA step that paints transparency white
    return width * height * per_pixel


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


@contextmanager
def _read_errors() -> Iterator[None]:
    """Every way reading an image can fail becomes an ImageReadError with a readable reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("image file is missing") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"image cannot be decoded ({type(exc).__name__}: {exc})") from None


def _open_checked(
    source: Path | bytes, max_pixels: int, draft_size: int | None, max_decode_bytes: int | None
) -> Image.Image:
    """Open source and check its header (pixels, then decode cost); nothing is decoded yet."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageReadError(
                f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                "(a decompression bomb or an oversized image)"
            )
        if draft_size and img.format == "JPEG":
            # JPEG DCT scaling: decode at >= draft_size, much faster (and smaller) than full size then resize
            img.draft("RGB", (draft_size, draft_size))
        if max_decode_bytes is not None and (cost := decode_cost(img)) > max_decode_bytes:
            raise ImageReadError(
                f"image is {width}x{height} pixels ({img.mode}): decoding it takes {_mib(cost)}, over the "
                f"limit of {_mib(max_decode_bytes)}; send a smaller image"
            )
    except BaseException:
        img.close()  # a refused file is not left open
        raise
    return img


def check_image_header(
    source: Path | bytes, max_pixels: int = 89_478_485, draft_size: int | None = None,
    max_decode_bytes: int | None = None,
) -> tuple[int, int]:
    """The checks of open_image that need only the header (format, pixels, decode cost); returns (width, height)."""
    with _read_errors(), _open_checked(source, max_pixels, draft_size, max_decode_bytes) as img:
        return img.size


def open_image(
    source: Path | bytes, max_pixels: int = 89_478_485, draft_size: int | None = None,
    max_decode_bytes: int | None = None,
) -> Image.Image:
    """Open an image (any mode or format PIL reads) as RGB; raise ImageReadError if unusable.

    max_pixels refuses decompression bombs; max_decode_bytes (None: no limit) refuses images whose
    decoding would hold more memory than that (see decode_cost), both before anything is decoded.
    """
    with _read_errors():
        img = _open_checked(source, max_pixels, draft_size, max_decode_bytes)
        img.load()
        return _to_rgb(img)


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


@dataclass(frozen=True)
class NormalisedTensor:
    """PIL RGB image (H, W) -> float32 tensor (3, H, W) of (pixel / 255 - mean) / std, in numpy.

    The same numbers as torchvision's ToTensor and Normalize (the same float32 operations), without
    torch's intra-op threads: where images are decoded beside a running network (the service, a
    loader without workers), those threads made each image six times slower on a shared 2-core CPU.
    A pixel has 256 values, so each channel's results are computed once and looked up (1.3 to 0.3 ms
    per 224 px image).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, img: Image.Image):
        import numpy as np
        import torch

        pixels = np.asarray(img)  # (H, W, 3) uint8
        out = np.stack([self.table[c][pixels[..., c]] for c in range(3)])  # (3, H, W) float32
        return torch.from_numpy(out)

    @cached_property
    def table(self):
        """(3, 256) float32: every value of a channel's pixel, normalised as ToTensor and Normalize do it."""
        import numpy as np

        values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255)  # (1, 256)
        return (values - np.asarray(self.mean, np.float32)[:, None]) / np.asarray(self.std, np.float32)[:, None]


# torchvision's InterpolationMode names and the PIL filters it resizes PIL images with (pil_modes_mapping)
PIL_FILTERS = {"nearest": Image.NEAREST, "nearest-exact": Image.NEAREST, "bilinear": Image.BILINEAR,
               "bicubic": Image.BICUBIC, "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


@dataclass(frozen=True)
class ResizeCentreCrop:
    """The shorter side resized to `resize`, then the centred `size` x `size` crop.

    The pixels of torchvision's Resize(resize) and CenterCrop(size) on a PIL image (tested), computed the
    way they compute them, without importing torchvision: its package import (models, ops, torch._dynamo)
    took 1.7 s of a prediction's start-up.
    """

    resize: int
    size: int
    interpolation: str

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)  # torchvision rounds down
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), PIL_FILTERS[self.interpolation])
        if self.size > min(new_w, new_h):  # smaller than the crop: torchvision pads it with zeros first
            from torchvision.transforms import functional as F

            return F.center_crop(img, [self.size])
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))


@dataclass(frozen=True)
class EvalTransform:
    """PIL image -> (3, size, size) float32 tensor: resize, centre crop, normalise with the encoder's mean/std."""

    crop: ResizeCentreCrop
    normalise: NormalisedTensor

    def __call__(self, img: Image.Image):
        return self.normalise(self.crop(img))


def eval_transform(prep: ImagePreprocessing) -> EvalTransform:
    """Resize, centre crop, to a tensor normalised with the encoder's mean/std (no torchvision needed)."""
    return EvalTransform(ResizeCentreCrop(prep.resize, prep.size, prep.interpolation), NormalisedTensor(prep.mean, prep.std))


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
