"""Frames in, mp4 out (imageio-ffmpeg ships its own ffmpeg, so this works offline)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["to_uint8_frames", "save_video", "read_video"]


def to_uint8_frames(frames) -> np.ndarray:
    """Pipeline output (np float in [0, 1], uint8, torch, or a list of PIL images) → uint8 ``[F, H, W, 3]``.

    A leading batch dimension of size 1 is dropped; a larger batch raises ``ValueError``.
    """
    if isinstance(frames, (list, tuple)) and frames and hasattr(frames[0], "convert"):
        frames = np.stack([np.asarray(im.convert("RGB")) for im in frames])
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 5:
        if arr.shape[0] != 1:
            raise ValueError(f"frames has a batch of {arr.shape[0]} videos; pass one video [F, H, W, 3]")
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must have shape [F, H, W, 3], got {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if not np.isfinite(arr).all():
        raise ValueError("frames contain NaN or Inf")
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_video(frames, path: str | os.PathLike, fps: int = 16, quality: int = 8) -> str:
    """Write ``frames`` to an H.264 mp4 at ``path`` and return the path."""
    import imageio.v2 as imageio

    arr = to_uint8_frames(frames)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=quality, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for frame in arr:
            writer.append_data(frame)
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read an mp4 back as uint8 ``[F, H, W, 3]``."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(os.fspath(path))
    try:
        return np.stack([frame for frame in reader.iter_data()])  # list(reader) asks len() = inf
    finally:
        reader.close()
