"""The shapes world: a procedural, seed-deterministic video generator with a prompt grammar.

Videos show one or two anti-aliased objects (circle, square, triangle) in named colours moving
left / right / up / down (or staying still) over a plain or gently textured background. Objects
bounce off the walls, so a video can be rendered at any length: frame ``t`` of a long render is
identical to frame ``t`` of a short render with the same seed.

Prompt grammar (core form first)::

    a {color} {shape} moving {direction} on a {background} background
    a {color} {shape} moving {speed} {direction} on a {background} background     speed: slowly | quickly
    a {color} {shape} staying still on a {background} background
    a {color} {shape} moving {direction} and a {color} {shape} moving {direction} on a {background} background

Example::

    >>> from vidaccel.models.shapes import render_video
    >>> video = render_video("a red circle moving right on a black background", num_frames=17,
    ...                      height=128, width=128, seed=0)
    >>> video.shape, video.dtype
    ((17, 128, 128, 3), dtype('uint8'))
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

#: Foreground colours, sRGB in [0, 1] (usual hues: red 0°, yellow 60°, green 120°, blue 240°).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.8, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "white": (1.0, 1.0, 1.0),
}
#: Background colours, sRGB in [0, 1].
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "navy": (0.0, 0.0, 0.4),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) in image coordinates (y down)
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
#: Speed in pixels per frame at a 128-pixel frame (scaled with the frame size).
SPEEDS: dict[str, float] = {"slowly": 1.5, "normal": 2.5, "quickly": 4.0}
#: Reference clip length used to place objects so that short clips mostly do not bounce.
REFERENCE_FRAMES = 17
#: Where objects start: ``"centered"`` (the default: each object's reference-clip path is centred on an
#: anchor point, jittered by up to 8 px per axis at 128 px) or ``"anywhere"`` (uniform over the frame).
LAYOUTS: tuple[str, ...] = ("centered", "anywhere")
_LAYOUT_JITTER = 8.0
#: Half-size range of objects (centre to edge, pixels at a 128-pixel frame), drawn uniformly per object.
HALF_SIZE_RANGE: tuple[float, float] = (17.0, 23.0)
#: Words of the grammar that are not attribute values.
GRAMMAR_WORDS: tuple[str, ...] = ("a", "moving", "on", "background", "and", "staying")

VOCAB: dict[str, list[str]] = {
    "colors": list(COLORS),
    "shapes": list(SHAPES),
    "directions": [d for d in DIRECTIONS if d != "still"],
    "backgrounds": list(BACKGROUNDS),
    "speeds": ["slowly", "quickly"],
    "still": ["still"],
    "grammar": list(GRAMMAR_WORDS),
}


def vocabulary_words() -> list[str]:
    """All words the embedded models know, sorted, no duplicates."""
    return sorted({w for words in VOCAB.values() for w in words})


@dataclass(frozen=True)
class ShapeObject:
    """One object of a prompt: colour name, shape name, direction name and speed name."""

    color: str
    shape: str
    direction: str
    speed: str = "normal"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("color", self.color, COLORS),
            ("shape", self.shape, SHAPES),
            ("direction", self.direction, DIRECTIONS),
            ("speed", self.speed, SPEEDS),
        ):
            if value not in allowed:
                raise ValueError(f"ShapeObject.{name}={value!r} is not one of {sorted(allowed)}")

    @property
    def rgb(self) -> np.ndarray:
        return np.asarray(COLORS[self.color], dtype=np.float32)

    def describe(self) -> str:
        if self.direction == "still":
            return f"a {self.color} {self.shape} staying still"
        speed = "" if self.speed == "normal" else f"{self.speed} "
        return f"a {self.color} {self.shape} moving {speed}{self.direction}"


@dataclass(frozen=True)
class ShapesPrompt:
    """A parsed prompt: one or two objects over a background."""

    objects: tuple[ShapeObject, ...]
    background: str
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"ShapesPrompt.objects has {len(self.objects)} objects; allowed: 1 or 2")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"ShapesPrompt.background={self.background!r} is not one of {sorted(BACKGROUNDS)}")

    @property
    def background_rgb(self) -> np.ndarray:
        return np.asarray(BACKGROUNDS[self.background], dtype=np.float32)

    def to_text(self) -> str:
        """The canonical prompt text, which :func:`parse_prompt` maps back to this prompt."""
        return " and ".join(o.describe() for o in self.objects) + f" on a {self.background} background"


def _tokens(prompt: str) -> list[str]:
    return re.findall(r"[a-z]+", prompt.lower())


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` that the embedded models were not trained on, in order, without repeats.

    ``[]`` for every prompt of the grammar. Case and punctuation are ignored; words in any script count (the
    tokenizer turns letters it lacks, such as ``é`` or ``日``, into unknown tokens), as do numbers.
    """
    known = set(vocabulary_words())
    out: list[str] = []
    for w in re.findall(r"[^\W_]+", prompt.lower()):
        if w not in known and w not in out:
            out.append(w)
    return out


def _parse_object(words: list[str], prompt: str) -> ShapeObject:
    err = ValueError(
        f"cannot parse {prompt!r}: expected 'a {{color}} {{shape}} moving [slowly|quickly] {{direction}}' "
        f"or 'a {{color}} {{shape}} staying still', got {' '.join(words)!r}; "
        f"colors={VOCAB['colors']}, shapes={VOCAB['shapes']}, directions={VOCAB['directions']}"
    )
    if len(words) < 4 or words[0] not in ("a", "an"):
        raise err
    color, shape = words[1], words[2]
    if color not in COLORS or shape not in SHAPES:
        raise err
    rest = words[3:]
    if rest == ["staying", "still"]:
        return ShapeObject(color, shape, "still")
    if rest[0] != "moving":
        raise err
    if len(rest) == 2 and rest[1] in DIRECTIONS and rest[1] != "still":
        return ShapeObject(color, shape, rest[1])
    if len(rest) == 3 and rest[1] in ("slowly", "quickly") and rest[2] in DIRECTIONS and rest[2] != "still":
        return ShapeObject(color, shape, rest[2], rest[1])
    raise err


def parse_prompt(prompt: str) -> ShapesPrompt:
    """Parse a prompt of the grammar (see module docstring) into a :class:`ShapesPrompt`.

    Raises:
        ValueError: naming the prompt, if it does not follow the grammar.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
    words = _tokens(prompt)
    # "... on a {background} background"
    if len(words) < 8 or words[-1] != "background" or words[-4:-2] != ["on", "a"]:
        raise ValueError(
            f"cannot parse {prompt!r}: expected '... on a {{background}} background' with "
            f"background in {VOCAB['backgrounds']}"
        )
    background = words[-2]
    if background not in BACKGROUNDS:
        raise ValueError(f"cannot parse {prompt!r}: background {background!r} is not one of {VOCAB['backgrounds']}")
    body = words[:-4]
    parts: list[list[str]] = [[]]
    for i, w in enumerate(body):
        # "and" separates objects only when followed by an article
        if w == "and" and i + 1 < len(body) and body[i + 1] in ("a", "an"):
            parts.append([])
        else:
            parts[-1].append(w)
    if len(parts) > 2:
        raise ValueError(f"cannot parse {prompt!r}: at most two objects are supported, got {len(parts)}")
    objects = tuple(_parse_object(p, prompt) for p in parts)
    return ShapesPrompt(objects=objects, background=background, text=prompt)


def core_prompt(color: str, shape: str, direction: str, background: str) -> str:
    """The core form ``a {color} {shape} moving {direction} on a {background} background``."""
    return f"a {color} {shape} moving {direction} on a {background} background"


def all_core_prompts() -> list[str]:
    """Every prompt of the core form, in a fixed order (5 colours x 3 shapes x 4 directions x 3 backgrounds)."""
    return [
        core_prompt(c, s, d, b)
        for c in VOCAB["colors"]
        for s in VOCAB["shapes"]
        for d in VOCAB["directions"]
        for b in VOCAB["backgrounds"]
    ]


def random_prompt(rng: np.random.Generator, *, p_core: float = 0.7, p_two: float = 0.1) -> str:
    """A random prompt of the grammar: the core form with probability ``p_core``, two objects with
    probability ``p_two``, otherwise a speed word ("slowly"/"quickly") or "staying still".
    """
    def obj(extra: bool) -> ShapeObject:
        color = VOCAB["colors"][rng.integers(len(VOCAB["colors"]))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        direction = VOCAB["directions"][rng.integers(4)]
        speed = "normal"
        if extra:
            r = rng.random()
            if r < 0.2:
                direction = "still"
            else:
                speed = ("slowly", "quickly")[rng.integers(2)]
        return ShapeObject(color, shape, direction, speed)

    background = VOCAB["backgrounds"][rng.integers(len(VOCAB["backgrounds"]))]
    u = rng.random()
    if u < p_core:
        objects = (obj(False),)
    elif u < p_core + p_two:
        objects = (obj(False), obj(False))
    else:
        objects = (obj(True),)
    return ShapesPrompt(objects, background).to_text()


#: Seeds at or above this value are never used for training data.
HELDOUT_SEED_BASE = 1_000_000


def heldout_prompts(n: int = 24, *, seed: int = 12345) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs of the core form for evaluation; seeds are >= HELDOUT_SEED_BASE,
    which training never uses. Prompts cycle through every colour, direction, shape and background
    evenly (n=24 covers each colour 4-5 times, each direction 6 times)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        color = VOCAB["colors"][i % 5]
        direction = VOCAB["directions"][i % 4]
        shape = SHAPES[(i // 4) % 3]
        background = VOCAB["backgrounds"][(i // 2) % 3]
        out.append((core_prompt(color, shape, direction, background), HELDOUT_SEED_BASE + int(rng.integers(1 << 30))))
    return out


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectPlan:
    """Concrete, sampled parameters of one object, in pixels (x right, y down)."""

    obj: ShapeObject
    half_size: float
    x0: float
    y0: float
    vx: float
    vy: float


@dataclass(frozen=True)
class ScenePlan:
    prompt: ShapesPrompt
    objects: tuple[ObjectPlan, ...]
    height: int
    width: int
    texture: np.ndarray | None  # [H, W] float32 offsets, or None for a plain background

    def positions(self, num_frames: int) -> np.ndarray:
        """Object centres for frames 0..num_frames-1, shape [num_frames, num_objects, 2] (x, y)."""
        t = np.arange(num_frames, dtype=np.float64)
        out = np.zeros((num_frames, len(self.objects), 2))
        for k, p in enumerate(self.objects):
            out[:, k, 0] = _bounce(p.x0 + p.vx * t, p.half_size, self.width - p.half_size)
            out[:, k, 1] = _bounce(p.y0 + p.vy * t, p.half_size, self.height - p.half_size)
        return out


def _bounce(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect an unbounded 1-D trajectory into [lo, hi] (elastic bounces off both walls)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(u, (lo + hi) / 2)
    v = np.mod(u - lo, 2 * span)
    return lo + np.where(v > span, 2 * span - v, v)


def _smooth_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], shape [H, W] (bilinear upsampling of an 4x4 grid)."""
    grid = rng.uniform(-1, 1, size=(5, 5))
    ys = np.linspace(0, 4, height)
    xs = np.linspace(0, 4, width)
    y0 = np.clip(ys.astype(int), 0, 3)
    x0 = np.clip(xs.astype(int), 0, 3)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return ((g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy).astype(np.float32)


def plan_scene(
    prompt: str | ShapesPrompt,
    *,
    height: int,
    width: int,
    seed: int,
    texture: float | None = 0.0,
    layout: str = "centered",
    half_size_range: tuple[float, float] | None = None,
) -> ScenePlan:
    """Sample sizes, start positions and velocities for ``prompt`` deterministically from ``seed``.

    The plan does not depend on the video length. Start positions along the motion axis are drawn
    so that a :data:`REFERENCE_FRAMES`-frame clip usually travels without bouncing.

    Args:
        texture: amplitude (in [0, 0.1]) of a gentle static background texture; ``None`` draws it
            from the seed (0 with probability 1/2, else uniform in [0, 0.03]).
        layout: one of :data:`LAYOUTS`. ``"centered"`` places the middle of each object's
            :data:`REFERENCE_FRAMES`-frame path near an anchor (the frame centre for one object; the
            points at 35 % and 65 % of both axes for two), so a prompt decides the layout up to a small
            jitter; ``"anywhere"`` draws start positions uniformly.
        half_size_range: (low, high) object half-size in pixels at 128x128 (scaled with the frame);
            ``None`` = :data:`HALF_SIZE_RANGE`, the world the embedded models were trained on.
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    size_lo, size_hi = HALF_SIZE_RANGE if half_size_range is None else half_size_range
    if not 1.0 <= size_lo <= size_hi <= 32.0:
        raise ValueError(f"half_size_range={half_size_range!r}; allowed: (low, high) with 1 <= low <= high <= 32 px")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not allowed; choose one of {', '.join(LAYOUTS)}")
    if height < 32 or width < 32:
        raise ValueError(f"height={height}, width={width}: both must be >= 32")
    rng = np.random.default_rng(seed)
    scale = min(height, width) / 128.0
    plans = []
    anchors = (0.5,) if len(spec.objects) == 1 else (0.35, 0.65)
    for k, obj in enumerate(spec.objects):
        half = float(rng.uniform(size_lo, size_hi) * scale)
        dx, dy = DIRECTIONS[obj.direction]
        speed = SPEEDS[obj.speed] * scale
        travel = speed * (REFERENCE_FRAMES - 1)
        pos = []
        for axis_len, d in ((width, dx), (height, dy)):
            lo, hi = half, axis_len - half
            if layout == "centered":
                mid = anchors[k % len(anchors)] * axis_len + float(rng.uniform(-1.0, 1.0)) * _LAYOUT_JITTER * scale
                pos.append(float(np.clip(mid - d * travel / 2, lo, hi)))
            elif d == 0:
                pos.append(float(rng.uniform(lo, hi)))
            else:
                frac = float(rng.uniform(0.0, 1.0))
                room = max(hi - lo - travel, 0.15 * (hi - lo))
                start = lo + frac * room
                pos.append(start if d > 0 else hi - (start - lo))
        plans.append(ObjectPlan(obj, half, pos[0], pos[1], dx * speed, dy * speed))
    if texture is None:
        texture = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.03))
    if not 0.0 <= texture <= 0.1:
        raise ValueError(f"texture={texture} must be in [0, 0.1]")
    tex = _smooth_texture(rng, height, width) * texture if texture > 0 else None
    return ScenePlan(spec, tuple(plans), height, width, tex)


def _coverage(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, half: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape centred at (cx, cy) with half-size ``half``.

    Uses a signed distance d (pixels, negative inside) and coverage = clip(0.5 - d, 0, 1), i.e. a
    one-pixel linear ramp across the edge.
    """
    px = xs - cx
    py = ys - cy
    if shape == "circle":
        d = np.sqrt(px * px + py * py) - half
    elif shape == "square":
        d = np.maximum(np.abs(px), np.abs(py)) - half * 0.9
    elif shape == "triangle":
        # isosceles, apex up: base y = +half, apex at (0, -half); sides through apex and base corners
        inv = 1.0 / np.sqrt(5.0)  # edge normal for slope 2 (width 2h, height 2h)
        d_base = py - half
        d_left = (-2.0 * px - py - half) * inv
        d_right = (2.0 * px - py - half) * inv
        d = np.maximum(d_base, np.maximum(d_left, d_right))
    else:  # pragma: no cover - ShapeObject validates
        raise ValueError(f"shape={shape!r} is not one of {SHAPES}")
    return np.clip(0.5 - d, 0.0, 1.0)


def render_plan(plan: ScenePlan, num_frames: int, *, start_frame: int = 0) -> np.ndarray:
    """Render frames ``start_frame .. start_frame + num_frames - 1`` of a plan.

    Returns:
        uint8 array [num_frames, H, W, 3].
    """
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")
    H, W = plan.height, plan.width
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    ys += 0.5
    xs += 0.5
    bg = np.broadcast_to(plan.prompt.background_rgb, (H, W, 3)).astype(np.float32)
    if plan.texture is not None:
        bg = np.clip(bg + plan.texture[..., None], 0.0, 1.0)
    centres = plan.positions(start_frame + num_frames)[start_frame:]
    out = np.empty((num_frames, H, W, 3), dtype=np.uint8)
    for f in range(num_frames):
        img = bg.copy()
        for k, p in enumerate(plan.objects):
            cx, cy = centres[f, k]
            r = int(np.ceil(p.half_size)) + 2
            y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, H)
            x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, W)
            a = _coverage(p.obj.shape, xs[y0:y1, x0:x1], ys[y0:y1, x0:x1], cx, cy, p.half_size)[..., None]
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + p.obj.rgb * a
        out[f] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return out


def render_video(
    prompt_or_spec: str | ShapesPrompt | ScenePlan,
    *,
    num_frames: int,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
    texture: float | None = 0.0,
    layout: str = "centered",
    half_size_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Render a shapes-world video.

    Args:
        prompt_or_spec: a prompt of the grammar, a parsed :class:`ShapesPrompt` or a :class:`ScenePlan`
            (then ``height``/``width``/``seed``/``texture`` are taken from the plan).
        num_frames: any length >= 1; objects keep moving and bouncing.
        seed: determines sizes, positions and texture.
        layout, half_size_range: see :func:`plan_scene`.

    Returns:
        uint8 array [num_frames, height, width, 3].
    """
    plan = (
        prompt_or_spec
        if isinstance(prompt_or_spec, ScenePlan)
        else plan_scene(prompt_or_spec, height=height, width=width, seed=seed, texture=texture, layout=layout,
                        half_size_range=half_size_range)
    )
    return render_plan(plan, num_frames)
