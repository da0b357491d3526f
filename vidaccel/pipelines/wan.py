"""Drop-in Wan pipelines: change ``from diffusers import WanPipeline`` to ``from vidaccel.pipelines import WanPipeline``.

Example::

    from vidaccel.pipelines import WanPipeline
    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dtype=torch.bfloat16, accel="balanced")
    video = pipe("a cat surfing", num_frames=81).frames[0]
    print(pipe.last_run)   # seconds per stage, steps, technique stats
"""

from __future__ import annotations

import diffusers

from .base import DropInPipelineMixin, register_drop_in

__all__ = ["WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline", "WanVACEPipeline"]


class WanPipeline(DropInPipelineMixin, diffusers.WanPipeline):
    """``diffusers.WanPipeline`` (Wan 2.1 and Wan 2.2 with ``transformer_2``) with vidaccel techniques."""


class WanImageToVideoPipeline(DropInPipelineMixin, diffusers.WanImageToVideoPipeline):
    """``diffusers.WanImageToVideoPipeline`` with vidaccel techniques."""


class WanVideoToVideoPipeline(DropInPipelineMixin, diffusers.WanVideoToVideoPipeline):
    """``diffusers.WanVideoToVideoPipeline`` with vidaccel techniques."""


class WanVACEPipeline(DropInPipelineMixin, diffusers.WanVACEPipeline):
    """``diffusers.WanVACEPipeline`` with vidaccel techniques."""


register_drop_in(WanPipeline, WanImageToVideoPipeline, WanVideoToVideoPipeline, WanVACEPipeline)
