"""What every dataset loader shares: the ``DatasetInfo`` a model is built from, and ``DatasetError``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the data."""

    name: str
    image_size: int
    channels: int
    num_classes: int
    kind: str = "image"          # "image" or "text"


class DatasetError(ValueError):
    """Missing or malformed data: the message says what, where it looked, and how to fix it."""
