"""Feature caching: exactness at threshold 0, per-branch/per-expert state, guards, policies, compile."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel import CacheConfig
from vidaccel.accel.caching.state import History

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe

POLICY_CONFIGS = {
    "block": dict(policy="block"),
    "block-taylor2": dict(policy="block", forecast_order=2),
    "step": dict(policy="step"),
    "profiled": dict(policy="profiled", forecast_order=1),
    "call": dict(policy="call", interval=3),
}


def cache_stats(pipe, role="transformer"):
    return vidaccel.stats(pipe)["cache"][role]


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
@pytest.mark.parametrize("policy", list(POLICY_CONFIGS))
def test_threshold_zero_is_bit_exact(kind, policy):
    pipe = make_pipeline(kind)
    base = run_pipe(pipe, num_inference_steps=6)
    vidaccel.apply(pipe, CacheConfig(threshold=0.0, **POLICY_CONFIGS[policy]))
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=6), base)
    assert cache_stats(pipe)["blocks_skipped"] == 0


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
@pytest.mark.parametrize("policy", list(POLICY_CONFIGS))
def test_every_policy_skips_and_repeats_exactly(kind, policy):
    """Per policy: it skips, and its state does not leak between calls (remove: tests/test_contract.py)."""
    pipe = make_pipeline(kind)
    base = run_pipe(pipe, num_inference_steps=12)
    vidaccel.apply(pipe, CacheConfig(threshold=0.5, **POLICY_CONFIGS[policy]))
    first = run_pipe(pipe, num_inference_steps=12)
    s1 = cache_stats(pipe)
    second = run_pipe(pipe, num_inference_steps=12)  # no state may leak from the first call
    s2 = cache_stats(pipe)
    np.testing.assert_array_equal(first, second)
    assert s1["blocks_skipped"] == s2["blocks_skipped"] > 0
    assert not np.array_equal(first, base)


@pytest.mark.parametrize("cfg_scale,contexts", [(5.0, {"cond", "uncond"}), (1.0, {"cond"})], ids=["cfg", "nocfg"])
def test_wan_cfg_branches_keep_separate_state(cfg_scale, contexts):
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CacheConfig(threshold=0.5))
    run_pipe(pipe, num_inference_steps=10, guidance_scale=cfg_scale)
    steps = cache_stats(pipe)["per_step"]
    assert {s["context"] for s in steps} == contexts
    for ctx in contexts:
        mine = [s for s in steps if s["context"] == ctx]
        assert [s["step"] for s in mine] == list(range(10))
        assert mine[0]["computed"] and mine[1]["computed"]  # warm-up per branch
        assert mine[-1]["computed"]  # final step


def test_cogvideox_batched_cfg_is_one_branch():
    pipe = make_pipeline("cogvideox-1.0")
    vidaccel.apply(pipe, CacheConfig(threshold=0.5))
    run_pipe(pipe, num_inference_steps=10)
    assert {s["context"] for s in cache_stats(pipe)["per_step"]} == {"cond_uncond"}


def test_batch_and_num_videos_per_prompt():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CacheConfig(threshold=0.5))
    two = run_pipe(pipe, prompt=["a red circle", "a blue square"], num_inference_steps=10)
    assert two.shape[0] == 2 and cache_stats(pipe)["blocks_skipped"] > 0
    per = run_pipe(pipe, prompt="a red circle", num_videos_per_prompt=2, num_inference_steps=10)
    assert per.shape[0] == 2 and not np.array_equal(per[0], per[1])


def test_wan22_experts_keep_their_own_state():
    pipe = make_pipeline("wan22")
    vidaccel.apply(pipe, CacheConfig(threshold=0.5, warmup_steps=2))
    run_pipe(pipe, num_inference_steps=16)
    high, low = cache_stats(pipe, "transformer"), cache_stats(pipe, "transformer_2")
    assert high["calls"] > 0 and low["calls"] > 0 and high["calls"] + low["calls"] == 2 * 16
    for stats in (high, low):
        for ctx in ("cond", "uncond"):
            mine = [s for s in stats["per_step"] if s["context"] == ctx]
            assert mine[0]["computed"] and mine[1]["computed"], "each expert warms up on its own first calls"
    boundary = min(s["step"] for s in low["per_step"])
    assert max(s["step"] for s in high["per_step"]) == boundary - 1
    assert low["skipped_calls"] > 0


@pytest.mark.parametrize("policy", ["block", "call"])
@pytest.mark.parametrize("variant", ["wan-i2v", "wan-v2v", "cogvideox-i2v", "cogvideox-1.5-i2v"])
def test_pipeline_variants_run_without_context_errors(variant, policy):
    from PIL import Image

    from vidaccel import testing

    if variant.startswith("wan"):
        pipe = testing.tiny_wan_pipeline(variant=variant.split("-")[1])
    else:
        pipe = testing.tiny_cogvideox_pipeline("1.5" if "1.5" in variant else "1.0", variant="i2v")
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    extra = {"video": [image] * 9} if variant.endswith("v2v") else {"image": image}
    vidaccel.apply(pipe, CacheConfig(threshold=0.5, policy=policy, interval=3, warmup_steps=2))
    kwargs = testing.tiny_call_kwargs(pipe, num_inference_steps=10)
    out = pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **extra, **kwargs).frames
    assert np.isfinite(np.asarray(out)).all()
    assert sum(s["skipped_calls"] for s in vidaccel.stats(pipe)["cache"].values()) > 0


def test_bare_transformer_without_context_uses_default_state_and_detects_new_runs():
    pipe = make_pipeline("wan21")
    model = pipe.transformer
    vidaccel.apply(model, CacheConfig(threshold=0.5, num_inference_steps=8))
    torch.manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4)
    text = torch.randn(1, 16, 32)

    def denoise():
        outs = []
        with torch.no_grad():
            for t in torch.linspace(999, 100, 8):
                outs.append(model(hidden_states=x, timestep=t.reshape(1), encoder_hidden_states=text,
                                  return_dict=False)[0])
        return torch.stack(outs)

    first = denoise()
    second = denoise()  # the timestep going back up starts a new run: identical results
    assert torch.equal(first, second)
    stats = cache_stats(model)
    assert {s["context"] for s in stats["per_step"]} == {"default"}
    assert stats["skipped_calls"] > 0 and stats["per_step"][-1]["computed"]


def test_guards_warmup_cap_and_final_steps():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CacheConfig(threshold=10.0, warmup_steps=3, max_consecutive_skips=2, final_steps=2))
    run_pipe(pipe, num_inference_steps=14, guidance_scale=1.0)
    flags = [s["computed"] for s in cache_stats(pipe)["per_step"]]
    assert flags[:3] == [True] * 3 and flags[-2:] == [True, True]
    run = longest = 0
    for computed in flags:
        run = 0 if computed else run + 1
        longest = max(longest, run)
    assert longest == 2  # the cap is reached (threshold 10 skips whenever allowed) but never exceeded


def test_profiled_caches_the_stable_fraction():
    pipe = make_pipeline("wan21")  # 4 blocks, compute_front=1 → 3 cacheable, ratio 0.67 → 2 cached
    vidaccel.apply(pipe, CacheConfig(threshold=0.5, policy="profiled", cache_ratio=0.67, warmup_steps=3))
    run_pipe(pipe, num_inference_steps=12)
    stats = cache_stats(pipe)
    for ctx, cached in stats["cached_blocks"].items():
        assert len(cached) == 2 and set(cached) <= {1, 2, 3}
        ranking = stats["block_stability"][ctx]
        assert [i for i, _ in ranking][:2] == sorted(cached, key=[i for i, _ in ranking].index)
    per_block = stats["per_block"]
    volatile = ({1, 2, 3} - set(stats["cached_blocks"]["cond"])).pop()
    assert per_block["skipped"][0] == 0 and per_block["skipped"][volatile] == 0


def test_stats_per_block_and_per_step_add_up():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CacheConfig(threshold=0.5))
    run_pipe(pipe, num_inference_steps=10)
    st = cache_stats(pipe)
    layers = pipe.transformer.config.num_layers
    assert st["calls"] == 20 == len(st["per_step"])
    assert st["blocks_computed"] + st["blocks_skipped"] == 20 * layers
    assert st["per_block"]["skipped"][0] == 0  # the front block always runs
    assert st["blocks_skipped"] == st["skipped_calls"] * (layers - 1)


def test_warns_when_nothing_is_skipped(caplog):
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CacheConfig(threshold=1e-9))
    with caplog.at_level(logging.WARNING, logger="vidaccel.accel.caching"):
        run_pipe(pipe, num_inference_steps=6)
    assert any("skipped nothing" in r.message for r in caplog.records)


@pytest.mark.parametrize("kwargs,field", [
    (dict(threshold=-0.1), "threshold"),
    (dict(policy="magic"), "policy"),
    (dict(forecast_order=3), "forecast_order"),
    (dict(compute_front=-1), "compute_front"),
    (dict(policy="block", compute_front=0), "compute_front"),
    (dict(policy="step", warmup_steps=1), "warmup_steps"),
    (dict(max_consecutive_skips=0), "max_consecutive_skips"),
    (dict(cache_ratio=0.0), "cache_ratio"),
    (dict(cfg_interval=1), "cfg_interval"),
    (dict(cfg_interval=-2), "cfg_interval"),
    (dict(policy="call", cfg_interval=2), "cfg_interval"),
    (dict(policy="call", interval=0), "interval"),
    (dict(policy="call", compute_front=1), "compute_front"),
    (dict(policy="call", compute_back=2), "compute_back"),
    (dict(policy="call", forecast_order=1, warmup_steps=2), "warmup_steps"),
    (dict(policy="call", interval_growth=-1), "interval_growth"),
    (dict(policy="call", interval_growth=math.nan), "interval_growth"),
    (dict(policy="block", interval_growth=1), "interval_growth"),
])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"CacheConfig.{field}"):
        CacheConfig(**kwargs)


def test_warmup_beyond_steps_degrades_and_too_many_fixed_blocks_raise(caplog):
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CacheConfig(threshold=0.1, warmup_steps=8))
    with caplog.at_level(logging.WARNING):
        assert np.isfinite(run_pipe(pipe, num_inference_steps=4)).all()
    notes = [r.getMessage() for r in caplog.records if "warmup_steps 8 -> 1" in r.getMessage()]
    assert len(notes) == 1, notes  # one warning, not one per call; test_few_steps.py covers the schedules
    with pytest.raises(ValueError, match="compute_front \\+ compute_back = 4 .* 4 blocks"):
        vidaccel.apply(make_pipeline("wan21"), CacheConfig(compute_front=2, compute_back=2))


def test_taylor_history_is_exact_on_polynomials():
    h1, h2 = History(2), History(3)
    for t in (900.0, 800.0, 650.0):
        h1.push(t, (torch.tensor([2.0 * t + 1.0]),))
        h2.push(t, (torch.tensor([0.001 * t * t - t + 3.0]),))
    assert torch.allclose(h1.predict(500.0)[0], torch.tensor([1001.0]))
    assert torch.allclose(h2.predict(500.0)[0], torch.tensor([0.001 * 500 * 500 - 500 + 3.0]), rtol=1e-5)
    assert h1.predict(650.0)[0].item() == 1301.0


def test_presets_are_registered_and_apply():
    assert {"quality", "balanced", "fast"} <= set(vidaccel.available_presets())
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, "fast")
    assert vidaccel.applied(pipe) == ["cache"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["block", "call"])
def test_compiled_blocks_break_at_most_once_per_call(policy):
    import torch._dynamo
    from torch._dynamo.utils import counters

    pipe = make_pipeline("wan21")
    torch._dynamo.reset()
    try:
        vidaccel.apply(pipe, CacheConfig(threshold=0.5, policy=policy, interval=3, warmup_steps=2))
        pipe.transformer.compile_repeated_blocks(backend="eager")
        base_breaks = sum(counters["graph_break"].values())
        out = run_pipe(pipe, num_inference_steps=8)
        calls = cache_stats(pipe)["calls"]
        breaks = sum(counters["graph_break"].values()) - base_breaks
        assert np.isfinite(out).all() and cache_stats(pipe)["skipped_calls"] > 0
        assert breaks <= calls, f"{breaks} graph breaks over {calls} transformer calls"
    finally:
        torch._dynamo.reset()


def _uncond_steps(stats):
    return [s for s in stats["per_step"] if s["context"] == "uncond"]


def test_cfg_interval_reuses_the_cond_residual_on_uncond_calls():
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, num_inference_steps=12)
    # a threshold no change stays under: only the CFG reuse can skip
    vidaccel.apply(pipe, CacheConfig(threshold=1e-12, cfg_interval=3))
    first = run_pipe(pipe, num_inference_steps=12)
    stats = cache_stats(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=12), first)  # no state leaks
    assert all(s["computed"] for s in stats["per_step"] if s["context"] == "cond")
    unc = _uncond_steps(stats)
    assert [s["cfg_reuse"] for s in unc] == [False, False, True, True, False, True, True, False, True, True, False, False]
    assert stats["cfg_reused_calls"] == 6 and stats["skipped_calls"] == 6
    assert not np.array_equal(first, base)
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=12), base)


def test_cfg_reuse_is_exact_when_both_branches_see_the_same_prompt():
    # cond and uncond identical -> the measured difference is 0 and the reused residual is the exact one
    pipe = make_pipeline("wan21")
    kw = dict(num_inference_steps=10, negative_prompt="a red circle moving right")
    base = run_pipe(pipe, **kw)
    vidaccel.apply(pipe, CacheConfig(threshold=1e-12, cfg_interval=4))
    out = run_pipe(pipe, **kw)
    assert cache_stats(pipe)["cfg_reused_calls"] > 0
    np.testing.assert_allclose(out, base, atol=1e-5, rtol=0)


def test_cfg_interval_without_cfg_or_with_batched_cfg_does_nothing_and_says_so(caplog):
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CacheConfig(threshold=1e-12, cfg_interval=3))
    run_pipe(pipe, num_inference_steps=8, guidance_scale=1.0)
    assert cache_stats(pipe)["cfg_reused_calls"] == 0
    cog = make_pipeline("cogvideox-1.0")
    with caplog.at_level(logging.WARNING, logger="vidaccel.accel.caching"):
        vidaccel.apply(cog, CacheConfig(threshold=0.5, cfg_interval=3))
    assert "cfg_interval=3 has no effect" in caplog.text
    run_pipe(cog, num_inference_steps=8)
    assert cache_stats(cog)["cfg_reused_calls"] == 0


def test_cfg_interval_per_wan22_expert_and_with_the_step_policy():
    pipe = make_pipeline("wan22")
    vidaccel.apply(pipe, CacheConfig(threshold=1e-12, policy="step", cfg_interval=2))
    run_pipe(pipe, num_inference_steps=16)
    for role in ("transformer", "transformer_2"):
        stats = cache_stats(pipe, role)
        unc = _uncond_steps(stats)
        assert not unc[0]["cfg_reuse"] and not unc[1]["cfg_reuse"]  # each expert measures its own difference
        assert stats["cfg_reused_calls"] > 0
    with pytest.raises(ValueError, match="CacheConfig.cfg_interval=2 is not allowed with policy='profiled'"):
        CacheConfig(policy="profiled", cfg_interval=2)


def test_call_policy_skips_whole_calls_on_its_interval():
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, num_inference_steps=12)
    vidaccel.apply(pipe, CacheConfig(threshold=10.0, policy="call", interval=3, warmup_steps=3))
    out = run_pipe(pipe, num_inference_steps=12)
    stats = cache_stats(pipe)
    layers = pipe.transformer.config.num_layers
    for ctx in ("cond", "uncond"):
        flags = [s["computed"] for s in stats["per_step"] if s["context"] == ctx]
        # a threshold no error reaches: warm-up 0-2, then every 3rd call (2, 5, 8), the final step (11)
        assert flags == [True, True, True, False, False, True, False, False, True, False, False, True]
    assert stats["blocks_skipped"] == stats["skipped_calls"] * layers == 12 * layers
    assert stats["per_block"]["computed"] == [12] * layers
    assert np.isfinite(out).all() and not np.array_equal(out, base)
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=12), out)


@pytest.mark.parametrize("order", [0, 1])
def test_call_policy_returns_the_cached_or_extrapolated_output(order):
    """A skipped call returns the last computed output (order 0) or the first-order extrapolation in the
    step index of the last two (order 1), for any step pattern, without running the model."""
    pipe = make_pipeline("wan21")
    model = pipe.transformer
    vidaccel.apply(model, CacheConfig(threshold=10.0, policy="call", interval=4, forecast_order=order,
                                      warmup_steps=3, num_inference_steps=10))
    x = torch.randn(1, 16, 3, 4, 4)
    text = torch.randn(1, 16, 32)
    outs = []
    with torch.no_grad():
        for k in range(10):
            outs.append(model(hidden_states=x * (1.0 + 0.1 * k), timestep=torch.full((1,), 900.0 - k),
                              encoder_hidden_states=text, return_dict=False)[0])
    stats = cache_stats(model)
    assert stats["skipped_calls"] > 0
    computed = [k for k, s in enumerate(stats["per_step"]) if s["computed"]]
    for k, s in enumerate(stats["per_step"]):
        if not s["computed"]:
            k1, k0 = [c for c in computed if c < k][-1], [c for c in computed if c < k][-2]
            expected = outs[k1] if order == 0 else outs[k1] + (outs[k1] - outs[k0]) * (k - k1) / (k1 - k0)
            torch.testing.assert_close(outs[k], expected, rtol=0, atol=1e-6)


def test_call_policy_picks_each_gap_from_the_measured_error_rate():
    pipe = make_pipeline("wan21")
    thr, interval = 0.35, 5
    vidaccel.apply(pipe, CacheConfig(threshold=thr, policy="call", interval=interval, warmup_steps=2))
    run_pipe(pipe, num_inference_steps=20, guidance_scale=1.0)
    steps = cache_stats(pipe)["per_step"]
    computed = [s["step"] for s in steps if s["computed"]]
    gaps = {computed[j]: computed[j + 1] - computed[j] for j in range(len(computed) - 1)}
    checked = 0
    for j, step in enumerate(computed[1:-1], start=1):
        rate = steps[step]["indicator"] / (step - computed[j - 1])
        expected = max([g for g in range(1, interval + 1) if g == 1 or rate * g <= thr])
        if step + expected < 20 - 1:  # the final-step guard cuts the last gap short
            assert gaps[step] == expected, (step, rate, gaps)
            checked += 1
    assert checked >= 3 and len(set(gaps.values())) > 1, gaps  # the gap really adapts


@pytest.mark.parametrize("kwargs,expected", [
    (dict(interval=2, warmup_steps=2, interval_growth=2), [0, 1, 3, 7, 13, 21]),
    (dict(interval=3, warmup_steps=3, interval_growth=1.5), [0, 1, 2, 5, 10, 16, 24]),  # gaps 3, 4.5 -> 5, 6, 7.5 -> 8
    (dict(interval=5, warmup_steps=3), [0, 1, 2, 7, 12, 17, 22]),  # no growth: every 5th
])
def test_call_schedule_gaps_grow_after_the_warmup(kwargs, expected):
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, num_inference_steps=25)
    vidaccel.apply(pipe, CacheConfig(threshold=math.inf, policy="call", final_steps=0, **kwargs))
    out = run_pipe(pipe, num_inference_steps=25)
    for context in ("cond", "uncond"):
        computed = [s["step"] for s in cache_stats(pipe)["per_step"] if s["computed"] and s["context"] == context]
        assert computed == expected, (context, computed)
    assert np.isfinite(out).all() and not np.array_equal(out, base)
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=25), base)


def test_adaptive_call_gaps_are_capped_by_the_grown_interval():
    """With a threshold no skip stays under, growth does not skip: the cap grows, the measured error decides."""
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, num_inference_steps=12)
    vidaccel.apply(pipe, CacheConfig(threshold=1e-12, policy="call", interval=2, warmup_steps=2, interval_growth=3))
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=12), base)
    assert cache_stats(pipe)["skipped_calls"] == 0
    vidaccel.remove(pipe)
