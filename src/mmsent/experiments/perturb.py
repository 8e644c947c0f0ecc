"""Evaluation-time perturbations: pure functions of (input, level, seed) for images (PIL) and texts."""

from __future__ import annotations

import io
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

HASHTAG_RE = re.compile(r"#\w+")


def gaussian_noise(img: Image.Image, sigma: float, seed: int) -> Image.Image:
    """Add N(0, sigma) noise per pixel and channel (sigma in 0-255 pixel units)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    noisy = np.clip(x + rng.normal(0.0, sigma, x.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def gaussian_blur(img: Image.Image, radius: float, seed: int) -> Image.Image:
    """Gaussian blur with this radius in pixels (deterministic; the seed is unused)."""
    return img.filter(ImageFilter.GaussianBlur(radius))


def jpeg_quality(img: Image.Image, quality: float, seed: int) -> Image.Image:
    """Re-compress as JPEG at this quality (1-95)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def downscale(img: Image.Image, factor: float, seed: int) -> Image.Image:
    """Shrink by factor (e.g. 0.25), then back to the original size: the detail is lost, the size is not."""
    w, h = img.size
    small = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BILINEAR)
    return small.resize((w, h), Image.BILINEAR)


def char_typos(text: str, rate: float, seed: int) -> str:
    """Each letter is, with probability rate, deleted, doubled, replaced or swapped with the next one."""
    rng = random.Random(seed)
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            op = rng.randrange(4)
            if op == 0:
                i += 1
                continue  # deleted
            if op == 1:
                out += [c, c]
            elif op == 2:
                out.append(rng.choice(string.ascii_lowercase))
            elif i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 1
            else:
                out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def remove_hashtags(text: str, fraction: float, seed: int) -> str:
    """Remove each hashtag (word included) with probability fraction (1.0: all of them)."""
    rng = random.Random(seed)
    return HASHTAG_RE.sub(lambda m: "" if rng.random() < fraction else m.group(0), text)


@dataclass(frozen=True)
class Perturbation:
    name: str
    modality: str  # "image" or "text"
    fn: Callable  # (PIL image | str, level, seed) -> same type
    levels: tuple[float, ...]  # mild to harsh
    unit: str
    harsher: str = "higher"  # "lower" where a smaller level is harsher (JPEG quality, scale factor)

    def mild_to_harsh(self, levels: tuple[float, ...]) -> tuple[float, ...]:
        """Levels ordered from the mildest to the harshest, whatever order they were given in."""
        return tuple(sorted(levels, reverse=self.harsher == "lower"))


PERTURBATIONS = {
    p.name: p
    for p in [
        Perturbation("noise", "image", gaussian_noise, (10.0, 25.0, 50.0), "noise sigma (pixel values)"),
        Perturbation("blur", "image", gaussian_blur, (1.0, 2.0, 4.0), "blur radius (px)"),
        Perturbation("jpeg", "image", jpeg_quality, (50.0, 20.0, 5.0), "JPEG quality", harsher="lower"),
        Perturbation("downscale", "image", downscale, (0.5, 0.25, 0.125), "scale factor", harsher="lower"),
        Perturbation("typos", "text", char_typos, (0.05, 0.1, 0.2), "typo rate per letter"),
        Perturbation("hashtags", "text", remove_hashtags, (0.5, 1.0), "fraction of hashtags removed"),
    ]
}
