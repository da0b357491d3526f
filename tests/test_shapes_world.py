"""The shapes world: determinism, rendering properties, prompt grammar."""

import colorsys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidaccel.models.shapes import (
    BACKGROUNDS,
    COLORS,
    HALF_SIZE_RANGE,
    HELDOUT_SEED_BASE,
    SHAPES,
    VOCAB,
    ShapeObject,
    ShapesPrompt,
    all_core_prompts,
    core_prompt,
    heldout_prompts,
    parse_prompt,
    plan_scene,
    random_prompt,
    render_video,
    unknown_words,
)

P = "a red circle moving right on a black background"


def test_render_shape_dtype_and_determinism():
    a = render_video(P, num_frames=9, height=128, width=128, seed=3)
    b = render_video(P, num_frames=9, height=128, width=128, seed=3)
    c = render_video(P, num_frames=9, height=128, width=128, seed=4)
    assert a.shape == (9, 128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_any_length_prefix_is_stable():
    short = render_video(P, num_frames=17, seed=1)
    long = render_video(P, num_frames=100, seed=1)
    np.testing.assert_array_equal(short, long[:17])


def test_non_square_and_other_sizes():
    v = render_video("a blue square moving up on a gray background", num_frames=3, height=96, width=160, seed=0)
    assert v.shape == (3, 96, 160, 3)


@pytest.mark.parametrize("color", list(COLORS))
def test_colors_have_their_usual_hue(color):
    v = render_video(f"a {color} square staying still on a black background", num_frames=1, seed=0)[0]
    plan = plan_scene(f"a {color} square staying still on a black background", height=128, width=128, seed=0)
    cx, cy = plan.positions(1)[0, 0]
    r, g, b = v[int(cy), int(cx)] / 255.0
    h, s, val = colorsys.rgb_to_hsv(r, g, b)
    expected = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 240.0}
    if color == "white":
        assert s < 0.05 and val > 0.95
    else:
        hue = h * 360.0
        assert min(abs(hue - expected[color]), 360 - abs(hue - expected[color])) < 10, hue
        assert s > 0.9


@pytest.mark.parametrize("bg", list(BACKGROUNDS))
def test_background_is_its_colour(bg):
    v = render_video(f"a white circle moving left on a {bg} background", num_frames=1, seed=0, texture=0.0)[0]
    corner = v[0, 0] / 255.0
    np.testing.assert_allclose(corner, BACKGROUNDS[bg], atol=1 / 255)


def test_texture_is_gentle():
    v = render_video("a white circle moving left on a gray background", num_frames=1, seed=0, texture=0.03)[0]
    corner = v[:20, :20].reshape(-1, 3) / 255.0
    assert corner.std() > 0.001  # textured
    assert np.abs(corner - 0.5).max() <= 0.031 + 1 / 255  # but gently


def test_anti_aliased_edges():
    v = render_video("a white circle staying still on a black background", num_frames=1, seed=2)[0, ..., 0]
    partial = (v > 10) & (v < 245)
    full = v >= 245
    # the rim of a circle is made of partial-coverage pixels: ~ perimeter in count
    assert partial.sum() > 0.3 * 2 * np.sqrt(np.pi * full.sum())


@pytest.mark.parametrize("shape,fill", [("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_shape_fill_ratio(shape, fill):
    v = render_video(f"a white {shape} staying still on a black background", num_frames=1, seed=5)[0, ..., 0] / 255.0
    ys, xs = np.nonzero(v > 0.5)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert abs(v.sum() / box - fill) < 0.06


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_motion_direction_and_bounce(direction):
    prompt = f"a green square moving quickly {direction} on a black background"
    plan = plan_scene(prompt, height=128, width=128, seed=7)
    pos = plan.positions(200)[:, 0]
    half = plan.objects[0].half_size
    axis = 0 if direction in ("left", "right") else 1
    sign = 1 if direction in ("right", "down") else -1
    step = np.diff(pos[:, axis])
    assert sign * step[0] > 0  # starts moving the prompted way
    assert np.all(np.abs(np.diff(pos[:, 1 - axis])) < 1e-9)  # no drift on the other axis
    assert pos[:, axis].min() >= half - 1e-6 and pos[:, axis].max() <= 128 - half + 1e-6  # stays inside
    assert (np.sign(step[1:]) != np.sign(step[:-1])).sum() >= 4  # keeps bouncing
    # the 17-frame reference clip does not bounce
    assert np.all(sign * step[:16] > 0)


def test_parse_core_and_extended_forms():
    p = parse_prompt(P)
    assert p.objects == (ShapeObject("red", "circle", "right"),) and p.background == "black"
    p = parse_prompt("A Yellow triangle moving quickly up on a navy background.")
    assert p.objects[0].speed == "quickly" and p.objects[0].direction == "up"
    p = parse_prompt("a red circle moving left and a blue square staying still on a gray background")
    assert len(p.objects) == 2 and p.objects[1].direction == "still"


@pytest.mark.parametrize(
    "bad",
    [
        "a purple circle moving right on a black background",
        "a red hexagon moving right on a black background",
        "a red circle moving sideways on a black background",
        "a red circle moving right on a pink background",
        "a red circle moving right",
        "hello world",
        "a red circle moving right and a blue square moving left and a white circle moving up on a black background",
    ],
)
def test_parse_errors_name_the_prompt(bad):
    with pytest.raises(ValueError) as e:
        parse_prompt(bad)
    assert repr(bad) in str(e.value)


def test_unknown_words():
    assert unknown_words(P) == []
    assert unknown_words("a purple hexagon moving right on a purple background") == ["purple", "hexagon"]
    for p in all_core_prompts():
        assert unknown_words(p) == []


def test_vocab_and_core_prompts():
    assert set(VOCAB["colors"]) >= {"red", "green", "blue", "yellow", "white"}
    assert set(VOCAB["shapes"]) >= {"circle", "square", "triangle"}
    assert set(VOCAB["directions"]) == {"left", "right", "up", "down"}
    assert {"black", "gray"} <= set(VOCAB["backgrounds"])
    assert core_prompt("red", "circle", "right", "black") == P
    assert len(all_core_prompts()) == len(set(all_core_prompts())) == 5 * 3 * 4 * len(BACKGROUNDS)


def test_spec_validation():
    with pytest.raises(ValueError, match="color"):
        ShapeObject("purple", "circle", "left")
    with pytest.raises(ValueError, match="background"):
        ShapesPrompt((ShapeObject("red", "circle", "left"),), "pink")
    with pytest.raises(ValueError, match="num_frames"):
        render_video(P, num_frames=0)


def test_heldout_prompts_are_core_and_unseen():
    from training.train import TrainConfig, _clip_list

    held = heldout_prompts(24)
    assert len(held) == 24 and len({s for _, s in held}) == 24
    assert all(s >= HELDOUT_SEED_BASE for _, s in held)
    for p, _ in held:
        assert p in all_core_prompts()
    assert {parse_prompt(p).objects[0].color for p, _ in held} == set(COLORS)
    cfg = TrainConfig()
    train_seeds = {s for _, s in _clip_list(cfg, "short")} | {s for _, s in _clip_list(cfg, "long")}
    assert max(train_seeds) < HELDOUT_SEED_BASE


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_prompts_round_trip(seed):
    p = random_prompt(np.random.default_rng(seed))
    spec = parse_prompt(p)
    assert spec.to_text() == p
    assert parse_prompt(spec.to_text()) == spec
    assert unknown_words(p) == []
    assert all(o.shape in SHAPES for o in spec.objects)


def test_layouts_centered_paths_and_anywhere_spread():
    from vidaccel.models.shapes import plan_scene

    prompt = "a red circle moving right on a black background"
    mids = []
    for seed in range(40):
        plan = plan_scene(prompt, height=128, width=128, seed=seed)
        path = plan.positions(17)[:, 0]
        mids.append(path[8])  # the middle of the reference clip
        assert path[-1, 0] > path[0, 0]  # still moves right
    mids = np.array(mids)
    assert np.abs(mids - 64).max() <= 8.0 + 1e-6
    spread = np.array([plan_scene(prompt, height=128, width=128, seed=s, layout="anywhere").objects[0].y0
                       for s in range(40)])
    assert spread.max() - spread.min() > 50
    with pytest.raises(ValueError, match="layout='grid' is not allowed"):
        plan_scene(prompt, height=128, width=128, seed=0, layout="grid")


def test_half_size_range_sets_the_object_size():
    """``half_size_range`` overrides the world's object size for one call (the default stays HALF_SIZE_RANGE)."""
    p = "a white square staying still on a black background"

    def side(**kw):  # the still square's side in pixels (1.8 x the half-size), from its anti-aliased area
        frame = render_video(p, num_frames=1, seed=11, **kw)[0]
        return float(np.sqrt(frame.astype(np.float64).mean(-1).sum() / 255.0))

    assert abs(side(half_size_range=(10.0, 10.0)) - 18) < 0.2 and abs(side(half_size_range=(20.0, 20.0)) - 36) < 0.2
    lo, hi = HALF_SIZE_RANGE
    assert 1.8 * lo - 0.2 <= side() <= 1.8 * hi + 0.2
    # every object of a two-object scene draws its size from the range
    for seed in range(20):
        plan = plan_scene("a red circle moving left and a blue square moving up on a gray background",
                          height=128, width=128, seed=seed, layout="anywhere")
        assert all(lo <= o.half_size <= hi for o in plan.objects), [o.half_size for o in plan.objects]
    with pytest.raises(ValueError, match=r"half_size_range=\(0.0, 5.0\); allowed"):
        render_video(p, num_frames=1, half_size_range=(0.0, 5.0))
    with pytest.raises(ValueError, match=r"half_size_range=\(9.0, 8.0\)"):
        plan_scene(p, height=128, width=128, seed=0, half_size_range=(9.0, 8.0))
