"""Drop-in CogVideoX pipelines (1.0 and 1.5): change only the import line.

Example::

    from vidaccel.pipelines import CogVideoXPipeline
    pipe = CogVideoXPipeline.from_pretrained("THUDM/CogVideoX-2b", dtype=torch.float16, accel="balanced")
"""

from __future__ import annotations

import diffusers

from .base import AcceleratedPipelineMixin, register_accelerated_class

__all__ = ["CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline"]


class CogVideoXPipeline(AcceleratedPipelineMixin, diffusers.CogVideoXPipeline):
    """``diffusers.CogVideoXPipeline`` with vidaccel techniques."""


class CogVideoXImageToVideoPipeline(AcceleratedPipelineMixin, diffusers.CogVideoXImageToVideoPipeline):
    """``diffusers.CogVideoXImageToVideoPipeline`` with vidaccel techniques."""


class CogVideoXVideoToVideoPipeline(AcceleratedPipelineMixin, diffusers.CogVideoXVideoToVideoPipeline):
    """``diffusers.CogVideoXVideoToVideoPipeline`` with vidaccel techniques."""


for _cls in (CogVideoXPipeline, CogVideoXImageToVideoPipeline, CogVideoXVideoToVideoPipeline):
    register_accelerated_class(_cls.__mro__[2], _cls)
