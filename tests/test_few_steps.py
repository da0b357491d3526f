"""Few-step schedules (distilled 4-step models, causal chunks): every preset runs with any step count >= 1, and a
caching preset that cannot keep its schedule says so in one warning and scales down or switches off."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import vidaccel
from vidaccel.accel import CacheConfig, available_presets
from vidaccel.accel.caching.config import run_settings

from .conftest import make_pipeline, run_pipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _cache_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "CacheConfig" in r.getMessage()]


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("preset", [p for p in available_presets() if p != "none"])
def test_every_preset_runs_with_few_steps(preset, steps, caplog):
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, num_inference_steps=steps)
    vidaccel.apply(pipe, preset)
    with caplog.at_level(logging.WARNING):
        out = run_pipe(pipe, num_inference_steps=steps)
        again = run_pipe(pipe, num_inference_steps=steps)
    np.testing.assert_array_equal(out, again)
    st = vidaccel.stats(pipe)
    if "cache" in st:
        warnings = _cache_warnings(caplog)
        assert len(warnings) == 2, [w.getMessage() for w in warnings]  # one per pipeline call
        skipped = st["cache"]["transformer"]["skipped_calls"]
        if "caching is off" in warnings[0].getMessage():
            assert skipped == 0
            np.testing.assert_array_equal(out, base)  # off means no cache at all
        else:
            assert "warmup_steps 3 -> 2" in warnings[0].getMessage() and skipped > 0
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=steps), base)


@pytest.mark.parametrize("total,expected", [
    (25, (3, 5, False)), (12, (2, 2, False)), (4, (2, 2, False)), (3, (2, 2, False)), (2, (2, 2, True)),
    (1, (2, 2, True)), (None, (3, 5, False)),
])
def test_fast_preset_schedule_per_run_length(total, expected):
    cfg = CacheConfig(threshold=math.inf, policy="call", interval=5, warmup_steps=3, final_steps=0, tuned_steps=25)
    run = run_settings(cfg, total)
    assert (run.warmup_steps, run.interval, run.off) == expected
    assert (run.note is None) == (total in (25, None))


def test_interval_growth_scales_with_the_run_length():
    cfg = CacheConfig(threshold=math.inf, policy="call", interval=2, warmup_steps=2, final_steps=0,
                      interval_growth=2, tuned_steps=25)
    assert run_settings(cfg, 25).interval_growth == 2 and run_settings(cfg, 25).note is None
    short = run_settings(cfg, 10)
    assert short.interval_growth == pytest.approx(0.8) and "interval_growth 2 -> 0.8" in short.note


def test_user_config_with_too_long_warmup_degrades_instead_of_raising(caplog):
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CacheConfig(threshold=0.5, policy="block", warmup_steps=6, max_consecutive_skips=1))
    with caplog.at_level(logging.WARNING):
        out = run_pipe(pipe, num_inference_steps=4)
    assert np.isfinite(out).all()
    (warning,) = _cache_warnings(caplog)
    assert "warmup_steps 6 -> 1" in warning.getMessage()
    vidaccel.remove(pipe)


def test_generate_fast_preset_with_three_steps(tmp_path, capsys):
    from vidaccel.cli import main

    out = tmp_path / "fast3.mp4"
    assert main(["generate", "a red circle moving right on a black background", "--preset", "fast", "--steps", "3",
                 "--frames", "9", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "steps 3" in printed and out.is_file()


@pytest.mark.parametrize("schedule", [dict(num_inference_steps=3), dict(timesteps=[1000, 750, 500, 250])])
@pytest.mark.parametrize("preset", ["quality", "fast"])
def test_long_video_few_step_schedule_with_a_caching_preset(preset, schedule, caplog):
    from vidaccel.pipelines.long_video import CausalConfig, LongVideoPipeline
    from vidaccel.testing import tiny_wan_pipeline

    pipe = LongVideoPipeline(**tiny_wan_pipeline(seed=3).components)
    pipe.causal_config = CausalConfig(chunk_frames=2, window_frames=6, context_noise=0.02, max_sequence_length=16)
    kw = dict(height=32, width=32, num_frames=17, seed=0, progress=False, **schedule)
    base = pipe("a red circle", **kw).frames
    vidaccel.apply(pipe, preset)
    with caplog.at_level(logging.WARNING):
        out = pipe("a red circle", **kw).frames
    st = vidaccel.stats(pipe)["cache"]["transformer"]
    assert np.isfinite(out).all() and len(_cache_warnings(caplog)) == 1
    assert st["calls"] == 3 * len(schedule.get("timesteps", [0] * 3)) and st["skipped_calls"] > 0
    assert not np.array_equal(out, base)
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(pipe("a red circle", **kw).frames, base)
