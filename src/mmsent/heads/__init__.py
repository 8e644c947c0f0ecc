"""Fusion heads: one module per head, created by name from the registry."""

from mmsent.heads.registry import create_head, list_heads, register_head

__all__ = ["create_head", "list_heads", "register_head"]
