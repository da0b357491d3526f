"""Prompt schedules of long videos: ``[(time, prompt), ...]`` turned into pixel frames, validated."""

from __future__ import annotations

import math
from typing import Sequence

from ...core.validation import shown

__all__ = ["parse_schedule"]


def parse_schedule(prompt: str | Sequence[tuple[float, str]], total_frames: int, fps: float,
                   unit: str = "seconds") -> list[tuple[int, str]]:
    """``prompt`` or ``[(time, prompt), ...]`` → ``[(pixel_frame, prompt), ...]``, validated.

    Times are seconds (``unit="seconds"``) or pixel frames (``unit="frames"``); they must start at 0, be
    strictly increasing and lie before the end; prompts must be non-empty.
    """
    if isinstance(prompt, str):
        prompt = [(0, prompt)]
    if unit not in ("seconds", "frames"):
        raise ValueError(f"schedule unit={unit!r} is not allowed; use 'seconds' or 'frames'")
    if not isinstance(prompt, (list, tuple)):
        raise ValueError(f"prompt={shown(prompt)} is not allowed: give a string or a schedule [(time, prompt), ...]")
    entries = list(prompt)
    if not entries:
        raise ValueError("prompt schedule is empty: give a prompt or [(time, prompt), ...]")
    out: list[tuple[int, str]] = []
    for i, entry in enumerate(entries):
        try:
            when, text = entry
        except (TypeError, ValueError):
            raise ValueError(f"schedule entry {i}={entry!r} is not a (time, prompt) pair") from None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"schedule entry {i} has an empty prompt {shown(text)}: it is not allowed")
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when) or when < 0 \
                or when * (fps if unit == "seconds" else 1) > 2**62:
            raise ValueError(f"schedule entry {i} time={shown(when)} is not allowed: it must be a finite number >= 0")
        frame = int(round(when * fps)) if unit == "seconds" else int(when)
        if i == 0 and frame != 0:
            raise ValueError(f"schedule entry 0 time={when!r} is not allowed: the first prompt must start at 0")
        if out and frame <= out[-1][0]:
            raise ValueError(f"schedule entry {i} time={when!r} is not allowed: times must be strictly increasing")
        if frame >= total_frames:
            raise ValueError(f"schedule entry {i} time={when!r} is not allowed: it is at or past the end of the video "
                             f"({total_frames} frames = {total_frames / fps:.2f} s)")
        out.append((frame, text))
    return out
