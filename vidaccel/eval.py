"""Prompt adherence for the shapes world (:mod:`vidaccel.models.shapes`).

:func:`shapes_score` measures how well a video follows a shapes-world prompt, per aspect, each in
[0, 1]:

- ``background``: the per-frame median colour vs the prompt's background colour;
- ``color``: the median colour of the confident foreground pixels vs the prompt's colour;
- ``shape``: fill ratio (area / bounding box: circle pi/4, square 1, triangle 1/2) and
  top-vs-bottom width ratio of the foreground silhouette (the mask at half contrast), vs the
  prompt's shape;
- ``motion``: progress of the foreground centroid along the prompted direction divided by its
  path length (bounces off walls flip the expected direction; "staying still" scores low speed);
- ``overall``: the mean of the four.

Colours are scored by soft nearest-neighbour classification among the named colours (plus a
catch-all "other" class at RGB distance 0.45), so a colour scores ~1 when clearly the prompted one,
~0 when clearly another. Two-object prompts are scored per object (pixels assigned to the object
whose prompt colour is nearer, or split by position when both have the same colour) and averaged.

Example::

    >>> from vidaccel.models.shapes import render_video
    >>> from vidaccel.eval import shapes_score
    >>> p = "a red circle moving right on a black background"
    >>> s = shapes_score(render_video(p, num_frames=17, seed=0), p)
    >>> s["overall"] > 0.95
    True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vidaccel.models.shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, ShapeObject, ShapesPrompt, parse_prompt

logger = logging.getLogger(__name__)

ASPECTS = ("color", "shape", "motion", "background")

_COLOR_TAU = 0.15  # RGB distance scale of the colour classifier
_OTHER_DIST = 0.45  # distance at which the catch-all "other" colour class wins
_FG_THRESHOLD = 0.2  # RGB distance from the background above which a pixel is foreground
_MIN_AREA = 12.0  # pixels (at 128x128) below which an object counts as absent
# shape prototypes: (fill ratio, top/bottom width ratio)
_SHAPE_PROTO = {"circle": (np.pi / 4, 1.0), "square": (1.0, 1.0), "triangle": (0.5, 0.3)}
_SHAPE_TAU = (0.07, 0.18)
_SHAPE_OTHER = 2.5  # normalised distance at which "other" wins


def to_frames(frames: Any) -> np.ndarray:
    """Convert pipeline output to float32 [F, H, W, 3] in [0, 1].

    Accepts np/torch arrays [F, H, W, 3] or [1, F, H, W, 3] (float in [0, 1] or uint8) and lists
    of PIL images or of [H, W, 3] arrays.

    Raises:
        ValueError: for other shapes, or for non-finite values.
    """
    if isinstance(frames, (list, tuple)):
        if len(frames) == 0:
            raise ValueError("frames is an empty list")
        frames = np.stack([np.asarray(f) for f in frames])
    if hasattr(frames, "detach"):  # torch tensor
        frames = frames.detach().float().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 5 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"frames must have shape [F, H, W, 3] (or [1, F, H, W, 3]), got {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("frames contain NaN or inf")
    if arr.max() > 1.5:  # 0..255 floats
        arr = arr / 255.0
    return np.clip(arr, 0.0, 1.0)


def color_match(rgb: np.ndarray, target: str, names: Sequence[str]) -> float:
    """Soft probability that ``rgb`` (3,) is the named colour ``target`` among ``names``."""
    table = {**COLORS, **BACKGROUNDS}
    d2 = np.array([np.sum((rgb - np.asarray(table[n])) ** 2) for n in names])
    k = np.exp(-d2 / (2 * _COLOR_TAU**2))
    k_other = np.exp(-(_OTHER_DIST**2) / (2 * _COLOR_TAU**2))
    return float(k[list(names).index(target)] / (k.sum() + k_other))


def _shape_probs(fill: float, tb: float) -> dict[str, float]:
    z = {
        s: np.exp(-0.5 * (((fill - p[0]) / _SHAPE_TAU[0]) ** 2 + ((tb - p[1]) / _SHAPE_TAU[1]) ** 2))
        for s, p in _SHAPE_PROTO.items()
    }
    other = np.exp(-0.5 * _SHAPE_OTHER**2)
    tot = sum(z.values()) + other
    return {s: float(v / tot) for s, v in z.items()}


@dataclass
class _Track:
    """Per-frame measurements of one object. Arrays have length F (frames) or F-1 (steps)."""

    present: np.ndarray  # [F] bool
    color: np.ndarray  # [F] colour score (0 where absent)
    shape: np.ndarray  # [F] shape score (0 where absent)
    progress: np.ndarray  # [F-1] signed progress along the expected direction, pixels
    path: np.ndarray  # [F-1] path length, pixels
    still: bool
    scale: float
    silhouette: np.ndarray  # [F, 2] fill ratio and top/bottom width ratio (nan where absent)


def _object_stats(alpha: np.ndarray, fg_rgb: np.ndarray, weight_mask: np.ndarray, obj: ShapeObject):
    """Colour / shape score, centroid, bbox and (fill ratio, top/bottom width ratio) of one object in one frame.

    alpha: [H, W] soft foreground mask in [0, 1]; weight_mask: [H, W] bool, pixels of this object.
    """
    a = alpha * weight_mask
    area = float(a.sum())
    H, W = alpha.shape
    if area < _MIN_AREA * (H * W) / (128 * 128):
        return None
    conf = (a > 0.75)
    if conf.sum() < 3:
        conf = a > 0.5
    rgb = np.median(fg_rgb[conf], axis=0) if conf.any() else np.zeros(3)
    c_score = color_match(rgb, obj.color, list(COLORS))
    ys, xs = np.nonzero(a > 0.5)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bh, bw = y1 - y0, x1 - x0
    # silhouette at half contrast: robust to anti-aliasing and to the blur of a VAE decoder
    box = (a[y0:y1, x0:x1] > 0.5).astype(np.float32)
    fill = float(box.sum()) / float(bh * bw)
    q = max(bh // 4, 1)
    top = box[:q].sum() / q
    bottom = box[-q:].sum() / q
    tb = float(top / max(bottom, 1e-6))
    tb = min(tb, 1.0 / max(tb, 1e-6))  # symmetric: an upside-down triangle still reads as a triangle
    s_score = _shape_probs(fill, tb)[obj.shape]
    ygrid, xgrid = np.mgrid[0:H, 0:W]
    cx = float((a * (xgrid + 0.5)).sum() / area)
    cy = float((a * (ygrid + 0.5)).sum() / area)
    return c_score, s_score, (cx, cy), (x0, y0, x1, y1), (fill, tb)


def _analyze(video: np.ndarray, spec: ShapesPrompt) -> tuple[np.ndarray, list[_Track]]:
    """Per-frame background scores [F] and one :class:`_Track` per prompt object."""
    F, H, W, _ = video.shape
    scale = min(H, W) / 128.0
    bg = np.median(video.reshape(F, -1, 3), axis=1)  # [F, 3]
    bg_scores = np.array([color_match(b, spec.background, list(BACKGROUNDS) + list(COLORS)) for b in bg])
    dist = np.linalg.norm(video - bg[:, None, None, :], axis=-1)  # [F, H, W]
    n_obj = len(spec.objects)
    same_color = n_obj == 2 and spec.objects[0].color == spec.objects[1].color
    per_obj: list[list] = [[] for _ in range(n_obj)]
    for f in range(F):
        fg = dist[f] > _FG_THRESHOLD
        if n_obj == 1:
            masks = [np.ones((H, W), bool)]
        elif not same_color:
            # distance of each pixel to the blend line background -> object colour, so that
            # anti-aliased edge pixels go to the object they belong to
            d0 = _blend_line_distance(video[f], bg[f], spec.objects[0].rgb)
            d1 = _blend_line_distance(video[f], bg[f], spec.objects[1].rgb)
            masks = [d0 <= d1, d1 < d0]
        else:
            masks = _split_by_position(fg)
        for k, obj in enumerate(spec.objects):
            sel = fg & masks[k]
            contrast = np.percentile(dist[f][sel], 90) if sel.sum() > 3 else 1.0
            alpha = np.clip(dist[f] / max(contrast, 1e-3), 0.0, 1.0) * (dist[f] > 0.5 * _FG_THRESHOLD)
            per_obj[k].append(_object_stats(alpha, video[f], masks[k], obj))
    tracks = [_make_track(stats, obj, H, W, scale) for stats, obj in zip(per_obj, spec.objects)]
    if same_color:  # position split has no identity: pick the labelling that scores best
        tracks = _best_labelling(per_obj, spec.objects, H, W, scale, tracks)
    return bg_scores, tracks


def _blend_line_distance(img: np.ndarray, bg: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """[H, W] distance of each pixel of ``img`` [H, W, 3] to the segment bg -> rgb in RGB space."""
    u = rgb - bg
    uu = max(float(u @ u), 1e-6)
    a = np.clip(((img - bg) @ u) / uu, 0.0, 1.0)
    return np.linalg.norm(img - bg - a[..., None] * u, axis=-1)


def _split_by_position(fg: np.ndarray) -> list[np.ndarray]:
    """Split foreground pixels ([H, W] bool) into two groups by 2-means on their coordinates."""
    ys, xs = np.nonzero(fg)
    H, W = fg.shape
    if len(ys) < 2:
        return [np.ones((H, W), bool), np.zeros((H, W), bool)]
    pts = np.stack([xs, ys], 1).astype(np.float32)
    c = pts[[np.argmin(pts.sum(1)), np.argmax(pts.sum(1))]]
    for _ in range(8):
        lab = np.argmin(((pts[:, None] - c[None]) ** 2).sum(-1), axis=1)
        for j in range(2):
            if (lab == j).any():
                c[j] = pts[lab == j].mean(0)
    yy, xx = np.mgrid[0:H, 0:W]
    grid = np.stack([xx, yy], -1).astype(np.float32)
    d = ((grid[..., None, :] - c) ** 2).sum(-1)
    return [d[..., 0] <= d[..., 1], d[..., 1] < d[..., 0]]


def _best_labelling(per_obj, objects, H, W, scale, tracks):
    swapped = [_make_track(s, o, H, W, scale) for s, o in zip(per_obj[::-1], objects)]
    total = lambda ts: sum(_aggregate(t, 0, None)["motion"] + _aggregate(t, 0, None)["shape"] for t in ts)  # noqa: E731
    return swapped if total(swapped) > total(tracks) else tracks


def _make_track(stats: list, obj: ShapeObject, H: int, W: int, scale: float) -> _Track:
    F = len(stats)
    present = np.array([s is not None for s in stats])
    color = np.array([s[0] if s is not None else 0.0 for s in stats])
    shape = np.array([s[1] if s is not None else 0.0 for s in stats])
    progress = np.zeros(max(F - 1, 0))
    path = np.zeros(max(F - 1, 0))
    dx, dy = DIRECTIONS[obj.direction]
    e = np.array([dx, dy], dtype=np.float64)
    cent = np.array([s[2] if s is not None else (np.nan, np.nan) for s in stats], dtype=np.float64)
    # light temporal smoothing of the centroid (3-tap, only over present frames)
    sm = cent.copy()
    for f in range(1, F - 1):
        if present[f - 1] and present[f] and present[f + 1]:
            sm[f] = (cent[f - 1] + 2 * cent[f] + cent[f + 1]) / 4
    steps = [np.linalg.norm(sm[f + 1] - sm[f]) for f in range(F - 1) if present[f] and present[f + 1]]
    speed = float(np.median(steps)) if steps else 0.0
    margin = 1.5 + 1.5 * speed

    def near_wall(f: int) -> bool:
        x0, y0, x1, y1 = stats[f][3]
        return bool(
            (e[0] > 0 and x1 >= W - margin)
            or (e[0] < 0 and x0 <= margin)
            or (e[1] > 0 and y1 >= H - margin)
            or (e[1] < 0 and y0 <= margin)
        )

    # a bounce (flip of the expected direction) is accepted only at the wall the object was
    # heading to, after it has moved towards it for at least two frames' worth of its speed
    since_flip = 0.0
    for f in range(F - 1):
        if not (present[f] and present[f + 1]):
            continue
        v = sm[f + 1] - sm[f]
        path[f] = float(np.linalg.norm(v))
        along = float(v @ e)
        if obj.direction != "still" and since_flip > 2 * speed and (near_wall(f) or near_wall(f + 1)):
            progress[f] = abs(along)
            if along < 0:
                e = -e
                since_flip = 0.0
        else:
            progress[f] = along
            since_flip = max(since_flip + along, 0.0)
    sil = np.array([s[4] if s is not None else (np.nan, np.nan) for s in stats], dtype=np.float64).reshape(F, 2)
    return _Track(present, color, shape, progress, path, obj.direction == "still", scale, sil)


def _aggregate(t: _Track, start: int, stop: int | None) -> dict[str, float]:
    sl = slice(start, stop)
    present = t.present[sl]
    n = len(present)
    color = float(t.color[sl].sum() / n) if n else 0.0
    shape = float(t.shape[sl].sum() / n) if n else 0.0
    step_stop = None if stop is None else max(stop - 1, start)
    prog = t.progress[start:step_stop]
    path = t.path[start:step_stop]
    n_steps = len(prog)
    if n_steps == 0 or present.sum() < 2:
        motion = 0.0
    elif t.still:
        mean_speed = path.sum() / n_steps / t.scale
        motion = float(np.clip(1.0 - mean_speed / 1.0, 0.0, 1.0))
    else:
        min_path = 0.5 * t.scale * n_steps  # must move >= 0.5 px/frame (at 128 px) to count as moving
        motion = float(np.clip(prog.sum() / max(path.sum(), min_path), 0.0, 1.0))
    return {"color": color, "shape": shape, "motion": motion}


def _combine(bg_scores: np.ndarray, tracks: list[_Track], start: int, stop: int | None) -> dict[str, float]:
    per = [_aggregate(t, start, stop) for t in tracks]
    out = {k: float(np.mean([p[k] for p in per])) for k in ("color", "shape", "motion")}
    out["background"] = float(np.mean(bg_scores[start:stop]))
    out["overall"] = float(np.mean([out[k] for k in ASPECTS]))
    for k, v in out.items():
        if not np.isfinite(v):
            raise FloatingPointError(f"shapes_score produced a non-finite {k}={v}")
    return out


def shapes_score(frames: Any, prompt: str | ShapesPrompt) -> dict[str, float]:
    """Adherence of a video to a shapes-world prompt.

    Args:
        frames: [F, H, W, 3] (or [1, F, H, W, 3]) float in [0, 1] or uint8, or a list of PIL images.
        prompt: a prompt of the grammar (see :func:`vidaccel.models.shapes.parse_prompt`).

    Returns:
        ``{"color", "shape", "motion", "background", "overall"}``, each a float in [0, 1].
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    video = to_frames(frames)
    bg_scores, tracks = _analyze(video, spec)
    return _combine(bg_scores, tracks, 0, None)


def shapes_score_segments(
    frames: Any, prompt: str | ShapesPrompt, bounds: Sequence[tuple[int, int]]
) -> list[dict[str, float]]:
    """Scores of frame ranges ``[start, stop)`` of one video (e.g. the chunks of a long video).

    The motion aspect follows bounces across the whole video, so a chunk in which the object
    correctly moves back after a wall bounce still scores high.
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    video = to_frames(frames)
    F = video.shape[0]
    for a, b in bounds:
        if not 0 <= a < b <= F:
            raise ValueError(f"segment [{a}, {b}) is not inside [0, {F})")
    bg_scores, tracks = _analyze(video, spec)
    return [_combine(bg_scores, tracks, a, b) for a, b in bounds]


def mean_scores(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """Aspect-wise mean of several score dicts."""
    keys = list(ASPECTS) + ["overall"]
    return {k: float(np.mean([s[k] for s in scores])) for k in keys}


__all__ = ["ASPECTS", "SHAPES", "color_match", "mean_scores", "shapes_score", "shapes_score_segments", "to_frames"]
