"""``SlidingWindowConfig`` (see :mod:`vidaccel.accel.sliding_window`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.validation import INT64_MAX, bad_value, check_choice, check_indices, check_int
from ...kernels import backend_names

__all__ = ["SlidingWindowConfig"]

BACKENDS = backend_names.ATTENTION


def _triple(name: str, value, optional: bool = False):
    if value is None and optional:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(
        isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= INT64_MAX for x in value)
    if not ok:
        raise bad_value("SlidingWindowConfig", name, value, "it must be three integers (t, h, w) in tokens, each >= 1"
                        + (" (or None)" if optional else ""))
    return tuple(value)


@dataclass
class SlidingWindowConfig:
    """Sliding-tile self-attention.

    Args:
        window: ``(wt, wh, ww)`` window in tokens of the token grid (after patching), rounded up to whole
            tiles. A window ≥ the grid computes dense attention (a warning says so). ``None`` only with
            ``train_grid`` (then the window is the training grid).
        tile: ``(tt, th, tw)`` tokens per tile (default: the tile that pads the token grid least,
            :func:`vidaccel.kernels.attention.default_tile`). Tiles are the
            unit kept or skipped; smaller tiles follow the window more closely, larger ones run faster.
        dense_steps: the first denoising steps that keep dense attention.
        dense_layers: block indices whose self-attention stays dense.
        backend: kernel backend, one of ``"auto"``, ``"triton"``, ``"flex"``, ``"gather"``, ``"torch"``.
        train_grid: FreeSwim mode: the token grid of the model's training size ``(T, H, W)``.
        cross_attn_every: FreeSwim mode: recompute the dense branch's cross-attention outputs every this
            many steps (0: no dense branch). Needs a model with cross-attention (Wan).
    """

    window: tuple[int, int, int] | None = None
    tile: tuple[int, int, int] | None = None
    dense_steps: int = 0
    dense_layers: tuple[int, ...] = field(default_factory=tuple)
    backend: str = "auto"
    train_grid: tuple[int, int, int] | None = None
    cross_attn_every: int = 0

    _technique_module: ClassVar[str] = "vidaccel.accel.sliding_window.technique"

    def __post_init__(self):
        self.train_grid = _triple("train_grid", self.train_grid, optional=True)
        if self.window is None:
            if self.train_grid is None:
                raise ValueError("SlidingWindowConfig.window=None is not allowed with train_grid=None: give "
                                 "window=(wt, wh, ww) in tokens, or train_grid=(T, H, W) (FreeSwim mode)")
            self.window = self.train_grid
        self.window = _triple("window", self.window)
        self.tile = _triple("tile", self.tile, optional=True)
        for name in ("dense_steps", "cross_attn_every"):
            setattr(self, name, check_int("SlidingWindowConfig", name, getattr(self, name), lo=0))
        self.dense_layers = check_indices("SlidingWindowConfig", "dense_layers", self.dense_layers)
        self.backend = check_choice("SlidingWindowConfig", "backend", self.backend, BACKENDS)
