"""Loading Hugging Face models offline-first: local folder or HF cache, then the hub, else one clear error."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import torch

from mmsent.encoders.minilm import quiet_transformers
from mmsent.errors import ConfigError, WeightsNotFoundError

T = TypeVar("T")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder (HF_HUB_CACHE / HF_HOME), read at call time."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Quick TCP probe, so that a machine without network fails in seconds, not after the hub's retries."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True  # behind a proxy a direct probe says nothing; let the library try
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    from huggingface_hub import constants

    return not hub_offline() and host_reachable(constants.ENDPOINT)


def missing_weights_message(encoder: str, name_or_path: str, what: str, reason: str, option: str = "name_or_path") -> str:
    """Which model, where it looked, how to supply it."""
    local = Path(name_or_path).expanduser().exists() or name_or_path.startswith(("/", ".", "~"))
    if local:
        where = f"the local folder {name_or_path}"
        supply = "Check that folder (a save_pretrained / `hf download --local-dir` copy), or set"
    else:
        where = f"the local Hugging Face cache {hf_cache_dir()}" + (
            " (the hub was not tried: offline mode)" if hub_offline() else " and the hub (not reachable)"
        )
        supply = f"Supply it with `hf download {name_or_path}` on a machine with internet (copy the cache folder here), or set"
    # a random model still needs its tokenizer and image processor: only weights and config have that way out
    scratch = f", or model.encoder_options.{encoder}.pretrained=false for a randomly initialised model" if what in ("weights", "config") else ""
    return (
        f"encoder {encoder!r}: cannot load the {what} of {name_or_path!r}: looked in {where}. {supply} "
        f"model.encoder_options.{encoder}.{option}=/path/to/a/local/copy{scratch}. ({reason})"
    )


def from_hub(
    load: Callable[..., T], encoder: str, name_or_path: str, what: str, option: str = "name_or_path", **kwargs: Any
) -> T:
    """`load(name_or_path, ...)` from the local folder or HF cache first, then the hub; else WeightsNotFoundError."""
    is_local = Path(name_or_path).expanduser().exists()
    source = str(Path(name_or_path).expanduser()) if is_local else name_or_path
    cache = None if is_local else hf_cache_dir()
    with quiet_transformers():
        try:
            return load(source, local_files_only=True, cache_dir=cache, **kwargs)
        except (OSError, ValueError) as exc:  # missing files; a folder that holds no such model
            reason = str(exc).splitlines()[0]
        if not is_local and hub_reachable():
            try:
                return load(source, cache_dir=cache, **kwargs)
            except (OSError, ValueError) as exc:
                reason = str(exc).splitlines()[0]
    raise WeightsNotFoundError(missing_weights_message(encoder, name_or_path, what, reason, option))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation that depends only on `seed` (a rebuilt run gets the same random weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def options_digest(options: Any) -> str:
    """Short stable hash of JSON-serialisable options (for fingerprints)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def check_pooling(encoder: str, pooling: str) -> str:
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"encoder {encoder!r}: pooling must be 'cls' or 'mean', not {pooling!r}")
    return pooling


class HFModelSpec:
    """The serialisable options shared by Hugging Face encoders, and how they build config and model.

    pretrained=True: weights from `name_or_path` (HF cache, local folder or hub);
    pretrained=False: the same architecture randomly initialised from `config` (a dict of config
    fields, with "model_type") or, without it, from the config file of `name_or_path`.
    """

    def __init__(
        self,
        encoder: str,
        name_or_path: str,
        pretrained: bool,
        config: dict[str, Any] | None,
        seed: int,
        default_model_type: str,
    ):
        self.encoder = encoder
        self.name_or_path = name_or_path
        self.pretrained = pretrained
        self.config = dict(config) if config else None
        self.seed = seed
        self.default_model_type = default_model_type

    def build_config(self):
        from transformers import AutoConfig

        if self.config is not None:
            options = dict(self.config)
            model_type = options.pop("model_type", self.default_model_type)
            try:
                return AutoConfig.for_model(model_type, **options)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"encoder {self.encoder!r}: bad config {self.config}: {exc}") from None
        return from_hub(AutoConfig.from_pretrained, self.encoder, self.name_or_path, "config")

    def build_model(self, model_cls):
        """A model of class `model_cls` (e.g. AutoModel, CLIPModel), pretrained or randomly initialised."""
        if self.pretrained:
            if self.config is not None:
                raise ConfigError(f"encoder {self.encoder!r}: `config` is only used with pretrained=false")
            return from_hub(model_cls.from_pretrained, self.encoder, self.name_or_path, "weights")
        config = self.build_config()
        with seeded(self.seed), quiet_transformers():
            return model_cls(config) if not hasattr(model_cls, "from_config") else model_cls.from_config(config)

    def weights_id(self, model) -> str:
        """What identifies the weights: the hub commit, or the random seed and config."""
        if not self.pretrained:
            return f"random-seed{self.seed}-{options_digest(model.config.to_dict())}"
        commit = getattr(model.config, "_commit_hash", None)
        return f"{self.name_or_path}@{commit or local_weights_id(self.name_or_path)}"

    def cache_key(self) -> str:
        return options_digest([self.name_or_path, self.pretrained, self.config, self.seed])


def local_weights_id(path: str) -> str:
    """Sizes and mtimes of a local folder's weight files (cheap; changes when the weights do)."""
    folder = Path(path).expanduser()
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
    return options_digest([(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]) if files else "unknown"


def load_tokenizer(encoder: str, tokenizer: str | None, name_or_path: str):
    """AutoTokenizer from `tokenizer` (a name or local folder) or else from the model's own."""
    from transformers import AutoTokenizer

    option = "tokenizer" if tokenizer else "name_or_path"
    return from_hub(AutoTokenizer.from_pretrained, encoder, tokenizer or name_or_path, "tokenizer", option)


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Padded, truncated token ids and attention mask: {input_ids: (B, T), attention_mask: (B, T), ...}."""
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def preprocessing_from_processor(processor, image_size: int):
    """ImagePreprocessing (resize, crop, mean, std, interpolation) from a HF image processor's config.

    A processor that resizes to height x width (BLIP) becomes resize-shorter-side + centre crop of the
    same size. If the model's image_size differs from the processor's crop (a small random config),
    resize and crop are scaled to it.
    """
    from mmsent.data.images import ImagePreprocessing

    size = processor.size
    shortest = getattr(size, "shortest_edge", None) if not isinstance(size, dict) else size.get("shortest_edge")
    height = getattr(size, "height", None) if not isinstance(size, dict) else size.get("height")
    resize = int(shortest or height)
    crop = resize
    if getattr(processor, "do_center_crop", False) and processor.crop_size is not None:
        crop_size = processor.crop_size
        crop = int(crop_size["height"] if isinstance(crop_size, dict) else crop_size.height)
    if crop != image_size:
        resize, crop = round(resize * image_size / crop), image_size
    resample = processor.resample
    interpolation = resample.value if isinstance(getattr(resample, "value", None), str) else _PIL_RESAMPLE[int(resample)]
    return ImagePreprocessing(
        size=crop,
        resize=resize,
        mean=tuple(float(x) for x in processor.image_mean),
        std=tuple(float(x) for x in processor.image_std),
        interpolation=interpolation,
    )


def load_image_processor(spec: HFModelSpec, processor_cls):
    """The model's own image processor; a random model built from a `config` dict gets the class defaults."""
    if not spec.pretrained and spec.config is not None:
        return processor_cls()
    return from_hub(processor_cls.from_pretrained, spec.encoder, spec.name_or_path, "image processor")


# towers of one model (CLIP text + image, BLIP text + image + ITM) created in one process share it
_SHARED: weakref.WeakValueDictionary[str, torch.nn.Module] = weakref.WeakValueDictionary()


def shared_model(spec: HFModelSpec, model_cls) -> torch.nn.Module:
    """One loaded model per (class, options) while any encoder holds it."""
    key = f"{model_cls.__name__}|{spec.cache_key()}"
    model = _SHARED.get(key)
    if model is None:
        model = spec.build_model(model_cls)
        _SHARED[key] = model
    return model


class HFTower:
    """Mixin for encoders that are one tower of a shared Hugging Face model (CLIP, BLIP).

    The full model is loaded once per process and kept out of the module tree: each encoder registers
    only the parts it uses, so the encoders' parameters and state dicts are disjoint (fine-tuning,
    saving and parameter counts see each tower once). Options: name_or_path, pretrained, config (a
    dict, with pretrained=false), seed; text towers add tokenizer and max_length, image towers take
    their preprocessing from the model's image processor.
    """

    name: str
    exportable = True

    def _init_model(self, model_cls, model_type: str, name_or_path: str, pretrained: bool, config, seed: int, share: bool = True):
        """Load (or reuse, if share) the full model; returns it for the caller to take its parts from."""
        self.spec = HFModelSpec(self.name, name_or_path, pretrained, config, seed, default_model_type=model_type)
        model = shared_model(self.spec, model_cls) if share else self.spec.build_model(model_cls)
        if share:
            self.__dict__["shared_model"] = model  # a plain reference that keeps it cached, not a submodule
        self.hf_config = model.config
        self._weights_id = self.spec.weights_id(model)
        return model

    def _init_tokenizer(self, tokenizer: str | None, max_length: int) -> None:
        self.tokenizer_name = tokenizer
        self.tokenizer = load_tokenizer(self.name, tokenizer, self.spec.name_or_path)
        self.max_length = min(max_length, int(self.hf_config.text_config.max_position_embeddings))

    def _init_images(self, processor_cls) -> None:
        processor = load_image_processor(self.spec, processor_cls)
        self.preprocessing = preprocessing_from_processor(processor, int(self.hf_config.vision_config.image_size))

    def _tok_key(self) -> str:
        return f"tok={self.tokenizer_name or self.spec.name_or_path}:{len(self.tokenizer)}|max_length={self.max_length}"

    def collate_text(self, items: list[str]) -> dict[str, torch.Tensor]:
        batch = tokenize(self.tokenizer, items, self.max_length)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}  # (B, T) each
