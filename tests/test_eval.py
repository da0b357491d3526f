"""Validation of the adherence score on ground-truth shapes-world videos."""

import numpy as np
import pytest
from PIL import Image

from vidaccel.eval import ASPECTS, color_match, mean_scores, shapes_score, shapes_score_segments, to_frames
from training.ar_reference import chunk_pixel_bounds
from vidaccel.models.shapes import BACKGROUNDS, COLORS, SHAPES, core_prompt, heldout_prompts, parse_prompt, render_video

KEYS = set(ASPECTS) | {"overall"}


@pytest.fixture(scope="module")
def heldout_gt():
    return [(p, render_video(p, num_frames=17, seed=s, texture=None)) for p, s in heldout_prompts(24)]


def test_ground_truth_scores_high(heldout_gt):
    scores = [shapes_score(v, p) for p, v in heldout_gt]
    for s in scores:
        assert set(s) == KEYS
        assert all(0.0 <= x <= 1.0 and np.isfinite(x) for x in s.values())
    m = mean_scores(scores)
    assert m["overall"] >= 0.95, m
    assert min(s["overall"] for s in scores) >= 0.9


def _swap(prompt, field, table):
    spec = parse_prompt(prompt).objects[0]
    cur = getattr(spec, field)
    return [w for w in table if w != cur]


def test_wrong_color_scores_lower_on_color(heldout_gt):
    for p, v in heldout_gt[:8]:
        good = shapes_score(v, p)
        spec = parse_prompt(p)
        for c in _swap(p, "color", COLORS):
            bad = shapes_score(v, core_prompt(c, spec.objects[0].shape, spec.objects[0].direction, spec.background))
            assert bad["color"] < 0.2 < 0.9 < good["color"], (p, c, bad)
            assert bad["overall"] < good["overall"] - 0.15
            # the other aspects do not depend on the colour word
            assert bad["motion"] == pytest.approx(good["motion"]) and bad["shape"] == pytest.approx(good["shape"])


def test_wrong_direction_scores_lower_on_motion(heldout_gt):
    for p, v in heldout_gt[:8]:
        good = shapes_score(v, p)
        o = parse_prompt(p).objects[0]
        for d in ("left", "right", "up", "down"):
            if d == o.direction:
                continue
            bad = shapes_score(v, core_prompt(o.color, o.shape, d, parse_prompt(p).background))
            assert bad["motion"] < 0.2 < 0.9 < good["motion"], (p, d, bad)
            assert bad["color"] == pytest.approx(good["color"])


def test_wrong_shape_and_background_score_lower(heldout_gt):
    for p, v in heldout_gt[:6]:
        good = shapes_score(v, p)
        spec = parse_prompt(p)
        o = spec.objects[0]
        for s in SHAPES:
            if s != o.shape:
                assert shapes_score(v, core_prompt(o.color, s, o.direction, spec.background))["shape"] < good["shape"] - 0.5
        for b in BACKGROUNDS:
            if b != spec.background:
                assert shapes_score(v, core_prompt(o.color, o.shape, o.direction, b))["background"] < good["background"] - 0.5


def test_silhouette_measurements_match_the_shapes():
    """The per-frame (fill ratio, top/bottom width ratio) the shape score is built from, on ground truth:
    square ~1 / ~1, circle ~pi/4 / ~1, triangle ~1/2 / small."""
    from vidaccel.eval import _analyze

    expect = {"square": (1.0, 1.0), "circle": (np.pi / 4, 1.0), "triangle": (0.5, 0.2)}
    for seed, shape in enumerate(SHAPES):
        p = core_prompt("yellow", shape, "left", "navy")
        track = _analyze(to_frames(render_video(p, num_frames=9, seed=seed)), parse_prompt(p))[1][0]
        assert track.silhouette.shape == (9, 2) and np.isfinite(track.silhouette).all()
        fill, tb = track.silhouette.mean(0)
        assert abs(fill - expect[shape][0]) < 0.06 and abs(tb - expect[shape][1]) < 0.12, (shape, fill, tb)


def test_static_and_noise_videos_score_low():
    p = "a red circle moving right on a black background"
    still = np.repeat(render_video(p, num_frames=1, seed=0), 17, axis=0)
    assert shapes_score(still, p)["motion"] < 0.05
    noise = np.random.default_rng(0).random((17, 128, 128, 3)).astype(np.float32)
    assert shapes_score(noise, p)["overall"] < 0.5
    blank = np.zeros((17, 128, 128, 3), np.float32)
    s = shapes_score(blank, p)
    assert s["color"] == 0.0 and s["shape"] == 0.0 and s["motion"] == 0.0 and s["background"] > 0.9


def test_staying_still_prompt():
    p = "a white triangle staying still on a gray background"
    v = render_video(p, num_frames=17, seed=3)
    assert shapes_score(v, p)["overall"] >= 0.9
    moving = render_video("a white triangle moving left on a gray background", num_frames=17, seed=3)
    assert shapes_score(moving, p)["motion"] < 0.1


def test_two_objects():
    p = "a red circle moving right and a blue square moving down on a gray background"
    v = render_video(p, num_frames=17, seed=11)
    s = shapes_score(v, p)
    assert s["overall"] >= 0.9, s
    swapped = "a red circle moving down and a blue square moving right on a gray background"
    assert shapes_score(v, swapped)["motion"] < s["motion"] - 0.5


def test_input_formats_agree():
    p = "a yellow square moving up on a navy background"
    u8 = render_video(p, num_frames=9, seed=5)
    f = u8.astype(np.float32) / 255.0
    ref = shapes_score(u8, p)
    for frames in (f, f[None], [Image.fromarray(x) for x in u8], list(u8)):
        s = shapes_score(frames, p)
        for k in KEYS:
            assert s[k] == pytest.approx(ref[k], abs=1e-6)
    torch = pytest.importorskip("torch")
    assert shapes_score(torch.from_numpy(f), p)["overall"] == pytest.approx(ref["overall"], abs=1e-6)


def test_nan_and_bad_shapes_raise():
    p = "a yellow square moving up on a navy background"
    f = render_video(p, num_frames=3, seed=5).astype(np.float32) / 255.0
    f[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        shapes_score(f, p)
    with pytest.raises(ValueError, match="shape"):
        to_frames(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="cannot parse"):
        shapes_score(np.zeros((3, 32, 32, 3)), "a cat")


def test_segments_follow_bounces():
    p = "a green triangle moving quickly left on a black background"
    v = render_video(p, num_frames=69, seed=2)
    bounds = chunk_pixel_bounds(9, 2)
    assert bounds[0] == (0, 5) and bounds[-1] == (61, 69)
    segs = shapes_score_segments(v, p, bounds)
    assert len(segs) == 9
    assert all(s["overall"] >= 0.9 for s in segs), [round(s["motion"], 2) for s in segs]
    with pytest.raises(ValueError):
        shapes_score_segments(v, p, [(60, 80)])


def test_color_match_is_a_soft_classifier():
    assert color_match(np.array([1.0, 0.0, 0.0]), "red", list(COLORS)) > 0.95
    assert color_match(np.array([0.9, 0.1, 0.1]), "red", list(COLORS)) > 0.9
    assert color_match(np.array([1.0, 0.5, 0.0]), "red", list(COLORS)) < 0.6  # orange is ambiguous
    assert color_match(np.array([1.0, 1.0, 0.0]), "red", list(COLORS)) < 0.01


def test_shape_by_prompted_shape_groups_the_held_out_scores(heldout_gt):
    from training.evaluate import shape_by_prompted_shape

    pairs = heldout_prompts(24)
    scores = [shapes_score(v, p) for p, v in heldout_gt]
    # a scorer that reads every object as a circle: circles keep their score, the others get 0
    fake = [{**s, "shape": s["shape"] if " circle " in p else 0.0} for (p, _), s in zip(pairs, scores)]
    by = shape_by_prompted_shape(pairs, fake)
    assert set(by) == {"circle", "square", "triangle"}
    assert by["circle"] >= 0.9 and by["square"] == 0.0 and by["triangle"] == 0.0
    true_by = shape_by_prompted_shape(pairs, scores)
    assert all(v >= 0.9 for v in true_by.values()), true_by
    assert np.isnan(shape_by_prompted_shape(pairs[:1], scores[:1])["square" if " circle " in pairs[0][0] else "circle"])


def test_validation_split_never_reuses_a_held_out_seed():
    from training.evaluate import split_prompts

    held = split_prompts("heldout", 24)
    assert held == heldout_prompts(24)
    val = split_prompts("validation", 48)
    assert [p for p, _ in val] == [p for p, _ in heldout_prompts(48)]
    assert not {s for _, s in val} & {s for _, s in held}
    with pytest.raises(ValueError, match="split='test'.*heldout, validation"):
        split_prompts("test")


def test_validation_split_moves_clashing_seeds(monkeypatch):
    """Even a validation split drawn from the held-out split's own seed keeps n pairs, none of them reported."""
    from training import evaluate

    monkeypatch.setitem(evaluate.SPLITS, "validation", evaluate.SPLITS["heldout"])
    val, held = evaluate.split_prompts("validation", 30), evaluate.split_prompts("heldout", 30)
    assert len(val) == 30 and [p for p, _ in val] == [p for p, _ in held]
    assert not {s for _, s in val} & {s for _, s in held}
