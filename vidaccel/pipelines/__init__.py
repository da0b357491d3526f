"""Drop-in vidaccel pipelines: subclasses of the diffusers classes (see :mod:`vidaccel.pipelines.base`)."""

from .base import AcceleratedPipelineMixin
from .cogvideox import CogVideoXImageToVideoPipeline, CogVideoXPipeline, CogVideoXVideoToVideoPipeline
from .long_video import LongVideoOutput, LongVideoPipeline
from .wan import WanImageToVideoPipeline, WanPipeline, WanVACEPipeline, WanVideoToVideoPipeline

__all__ = [
    "AcceleratedPipelineMixin",
    "WanPipeline",
    "WanImageToVideoPipeline",
    "WanVideoToVideoPipeline",
    "WanVACEPipeline",
    "CogVideoXPipeline",
    "CogVideoXImageToVideoPipeline",
    "CogVideoXVideoToVideoPipeline",
    "LongVideoPipeline",
    "LongVideoOutput",
]
