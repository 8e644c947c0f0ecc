"""The head registry: fusion heads are created by name from the modality input sizes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

_HEADS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_head(name: str) -> Callable:
    def deco(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _HEADS[name] = cls
        _DESCRIPTIONS[name] = (cls.__doc__ or "").strip().splitlines()[0]
        return cls

    return deco


def _ensure_builtins() -> None:
    from mmsent.heads import bilinear, concat, cross_attention, gated, late, linear  # noqa: F401


def list_heads() -> dict[str, str]:
    _ensure_builtins()
    return dict(sorted(_DESCRIPTIONS.items()))


def head_is_token_level(name: str) -> bool:
    """Whether head `name` takes token sequences rather than pooled vectors."""
    _ensure_builtins()
    return bool(getattr(_HEADS.get(name), "token_level", False))


def head_parameters(cls: Callable[..., nn.Module]) -> set[str]:
    """The keyword arguments a head takes: its own, and its base class's where it passes **kwargs on."""
    names: set[str] = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        parameters = inspect.signature(klass.__init__ if isinstance(klass, type) else klass).parameters
        names |= {n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return names


def create_head(name: str, input_dims: dict[str, int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build head `name` for inputs {modality: dim}; it returns logits (B, num_classes)."""
    from mmsent.errors import ConfigError

    _ensure_builtins()
    if name not in _HEADS:
        raise ConfigError(f"unknown head {name!r}; known heads: {', '.join(sorted(_HEADS))}")
    if not input_dims:
        raise ConfigError("a head needs at least one modality input")
    accepted = head_parameters(_HEADS[name])
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        options = sorted(accepted - {"input_dims", "num_classes", "hidden_dim", "dropout", "layernorm"})
        raise ConfigError(f"head {name!r} takes no option {unknown[0]!r} (model.head_options); its options: "
                          f"{', '.join(options) or 'none'}")
    return _HEADS[name](input_dims=dict(input_dims), num_classes=num_classes, **kwargs)
