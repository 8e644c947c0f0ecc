"""The encoder registry: every backbone is created by name, with options from the config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmsent.encoders.base import Encoder

_ENCODERS: dict[str, Callable[..., Encoder]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_encoder(name: str, description: str = "") -> Callable:
    """Class or factory decorator adding an encoder under `name`."""

    def deco(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _ENCODERS[name] = factory
        _DESCRIPTIONS[name] = description or (factory.__doc__ or "").strip().splitlines()[0]
        return factory

    return deco


def _ensure_builtins() -> None:
    # imported lazily so `import mmsent` loads no model code
    from mmsent.encoders import (  # noqa: F401
        bert,
        blip,
        clip,
        e5,
        efficientnet_lite,
        lexicon,
        minilm,
        resnet,
        tfidf,
        vader,
    )


def list_encoders() -> dict[str, str]:
    _ensure_builtins()
    return dict(sorted(_DESCRIPTIONS.items()))


def encoder_accepts(name: str, option: str) -> bool:
    """Whether the encoder registered as `name` takes keyword `option`."""
    import inspect

    _ensure_builtins()
    factory = _ENCODERS.get(name)
    return factory is not None and option in inspect.signature(factory).parameters


def create_encoder(name: str, **options: Any) -> Encoder:
    """Build the encoder registered as `name`; unknown names list the known ones."""
    from mmsent.errors import ConfigError

    _ensure_builtins()
    if name not in _ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; known encoders: {', '.join(sorted(_ENCODERS))}")
    try:
        return _ENCODERS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for encoder {name!r}: {exc}") from None
