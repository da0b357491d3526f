"""One module per technique; importing this package registers each technique and its presets."""

from .base import Technique, register_technique
from .caching import CacheConfig
from .kv_cache import RollingKVCache
from .linear_attention import LinearAttentionConfig, linearize
from .quantization import QuantConfig, load_quantized, load_quantized_transformer, quant_report, save_quantized
from .sliding_window import SlidingWindowConfig

__all__: list[str] = [
    "Technique",
    "register_technique",
    "CacheConfig",
    "SlidingWindowConfig",
    "QuantConfig",
    "save_quantized",
    "load_quantized",
    "load_quantized_transformer",
    "quant_report",
    "RollingKVCache",
    "LinearAttentionConfig",
    "linearize",
]
