"""``FrameMergeConfig`` and its presets (see :mod:`vidaccel.accel.frame_merge`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ...core.presets import register_preset

__all__ = ["FrameMergeConfig"]


@dataclass
class FrameMergeConfig:
    """Dynamic latent frame rate (VGDFR): merge the token frames of low-motion stretches for the middle steps.

    Args:
        threshold: motion below which token frames merge: the relative L1 distance between their predicted
            clean latents (mean |x̂0_i − x̂0_j| over mean |x̂0|, the largest over the batch and CFG branches),
            measured at the last full-rate step. Every pair of frames in a group must be below it. ``0`` never
            merges (bit-identical to no merging); ``math.inf`` merges every run of ``max_group`` frames.
        max_group: most token frames in one merged group (2: at most halves the frames; 4: at most quarters).
        merge_at: fraction of the denoising steps run at full rate before merging (at least one step is: the
            motion is measured on its prediction).
        split_at: fraction of the steps after which the frames are split back; the rest run at full rate.
        keep_first: never merge the first token frame (the first latent frame, which the causal VAEs of Wan and
            CogVideoX decode to a single pixel frame, unlike every later one).
    """

    threshold: float = 0.35
    max_group: int = 2
    merge_at: float = 0.25
    split_at: float = 0.5
    keep_first: bool = True

    _technique_module: ClassVar[str] = "vidaccel.accel.frame_merge.technique"

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or \
                math.isnan(self.threshold) or self.threshold < 0:
            raise ValueError(f"FrameMergeConfig.threshold={self.threshold!r} is not allowed: it must be a number >= 0 "
                             f"(math.inf merges every group)")
        if isinstance(self.max_group, bool) or not isinstance(self.max_group, int) or self.max_group < 2:
            raise ValueError(f"FrameMergeConfig.max_group={self.max_group!r} is not allowed: it must be an int >= 2")
        for name in ("merge_at", "split_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"FrameMergeConfig.{name}={value!r} is not allowed: it must be a fraction of the "
                                 f"steps in [0, 1]")
        if self.split_at <= self.merge_at:
            raise ValueError(f"FrameMergeConfig.split_at={self.split_at!r} is not allowed: it must be greater than "
                             f"merge_at={self.merge_at!r}")
        if not isinstance(self.keep_first, bool):
            raise ValueError(f"FrameMergeConfig.keep_first={self.keep_first!r} is not allowed: it must be True or "
                             f"False")


register_preset("frame-merge", lambda: [FrameMergeConfig()],
                "dynamic latent frame rate (VGDFR): low-motion token frames merged in pairs from 25 % to 50 % of the steps")
