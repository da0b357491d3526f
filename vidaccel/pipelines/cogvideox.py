"""Drop-in CogVideoX pipelines (1.0 and 1.5): change only the import line.

Example::

    from vidaccel.pipelines import CogVideoXPipeline
    pipe = CogVideoXPipeline.from_pretrained("THUDM/CogVideoX-2b", dtype=torch.float16, accel="balanced")
"""

from __future__ import annotations

import diffusers

from .base import DropInPipelineMixin, register_drop_in

__all__ = ["CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline"]


class CogVideoXPipeline(DropInPipelineMixin, diffusers.CogVideoXPipeline):
    """``diffusers.CogVideoXPipeline`` with vidaccel techniques."""


class CogVideoXImageToVideoPipeline(DropInPipelineMixin, diffusers.CogVideoXImageToVideoPipeline):
    """``diffusers.CogVideoXImageToVideoPipeline`` with vidaccel techniques."""


class CogVideoXVideoToVideoPipeline(DropInPipelineMixin, diffusers.CogVideoXVideoToVideoPipeline):
    """``diffusers.CogVideoXVideoToVideoPipeline`` with vidaccel techniques."""


register_drop_in(CogVideoXPipeline, CogVideoXImageToVideoPipeline, CogVideoXVideoToVideoPipeline)
