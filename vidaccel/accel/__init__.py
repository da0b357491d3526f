"""The techniques: one package each, with the same roles in every one.

* ``config.py``: the validated ``@dataclass`` config (and the technique's presets); importing it is cheap;
* ``technique.py``: the :class:`~vidaccel.core.technique.Technique` subclass registered for that config
  (imported when the config is first applied);
Importing this package registers the built-in presets, so preset names resolve through its
:func:`resolve_accel` / :func:`available_presets` (re-exported from :mod:`vidaccel.core.presets`), and its
config types load from preset files (:func:`read_preset` / :func:`write_preset`, :mod:`vidaccel.core.preset_file`).

* further modules where a technique has them: ``state.py`` (caching), ``selection.py`` / ``distill.py`` /
  ``adapter.py`` (linear attention), ``modules.py`` / ``layers.py`` / ``calibration.py`` / ``checkpoint.py``
  / ``report.py`` (quantization).
"""

from __future__ import annotations

import importlib

from ..core.preset_file import RoleConfigs, read_preset, register_config_type, write_preset
from ..core.presets import available_presets, preset_configs, preset_description, register_preset, resolve_accel
from .caching import CacheConfig
from .frame_merge import FrameMergeConfig
from .linear_attention import LinearAttentionConfig
from .quant_attention import QuantAttentionConfig
from .quantization import QuantConfig
from .sliding_window import SlidingWindowConfig

__all__ = ["CacheConfig", "SlidingWindowConfig", "QuantConfig", "LinearAttentionConfig", "QuantAttentionConfig",
           "FrameMergeConfig", "CONFIG_TYPES",
           "load_techniques", "available_presets", "preset_configs", "preset_description", "register_preset",
           "resolve_accel", "RoleConfigs", "read_preset", "write_preset"]

#: The built-in technique config types.
CONFIG_TYPES = (CacheConfig, SlidingWindowConfig, QuantConfig, LinearAttentionConfig, QuantAttentionConfig,
                FrameMergeConfig)
for _config_type in CONFIG_TYPES:  # preset files name configs by class name
    register_config_type(_config_type)


def load_techniques() -> list[type]:
    """Import every built-in technique (registering it) and return the config types."""
    for config_type in CONFIG_TYPES:
        importlib.import_module(config_type._technique_module)
    return list(CONFIG_TYPES)
