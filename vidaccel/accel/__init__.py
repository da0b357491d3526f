"""One module per technique; importing this package registers each technique and its presets."""

from .base import Technique, register_technique
from .caching import CacheConfig
from .sliding_window import SlidingWindowConfig

__all__: list[str] = ["Technique", "register_technique", "CacheConfig", "SlidingWindowConfig"]
