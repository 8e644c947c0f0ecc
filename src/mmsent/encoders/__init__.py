"""Encoders: one module per backbone, a registry to create them by name, and the feature cache."""

from mmsent.encoders.base import Encoder, ImageEncoder, TextEncoder
from mmsent.encoders.registry import create_encoder, list_encoders, register_encoder

__all__ = ["Encoder", "ImageEncoder", "TextEncoder", "create_encoder", "list_encoders", "register_encoder"]
