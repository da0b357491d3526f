"""SlidingWindowConfig on every family: full windows equal the baseline, small ones change it, remove restores."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import logging

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.core.technique import technique_for_type
from vidaccel.accel.sliding_window import SlidingWindowConfig
from vidaccel.accel.sliding_window.technique import SlidingWindowTechnique

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe

# Latent outputs (no VAE decode): Wan and CogVideoX 1.0 see 3×4×4 tokens (+16 text tokens for CogVideoX);
# the tiny CogVideoX 1.5's rotary table only fits 32×32 (a 2×2×2 token grid).
SIZE = dict(height=64, width=64, output_type="latent")
SIZES = {"cogvideox-1.5": dict(height=32, width=32, output_type="latent")}


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_importing_the_module_registers_the_technique():
    assert technique_for_type(SlidingWindowConfig) is SlidingWindowTechnique


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
def test_full_window_equals_dense_small_window_is_sparse(kind, caplog):
    """Window semantics per family (no-op, repeat and remove: tests/test_contract.py)."""
    pipe = make_pipeline(kind)
    size = SIZES.get(kind, SIZE)
    base = run_pipe(pipe, **size)
    # a window covering the grid: vidaccel's own q/k/v path runs, and equals dense attention
    vidaccel.apply(pipe, SlidingWindowConfig(window=(16, 16, 16), tile=(1, 2, 2)))
    with caplog.at_level(logging.WARNING, logger="vidaccel.accel.sliding_window"):
        full = run_pipe(pipe, **size)
    assert rel(full, base) <= 1e-5
    for s in vidaccel.stats(pipe)["sliding_window"].values():
        assert s["sparse_calls"] > 0 and s["density"] == 1.0
    assert "computes dense attention" in caplog.text
    vidaccel.remove(pipe)
    # a small window changes the output, stays finite (run_pipe asserts it) and reports its density
    vidaccel.apply(pipe, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2)))
    small = run_pipe(pipe, **size)
    assert np.abs(small - base).max() > 1e-4
    for role, s in vidaccel.stats(pipe)["sliding_window"].items():
        assert 0 < s["density"] < 1, role
        assert s["window_tiles"] == [1, 1, 1]


def test_dense_steps_and_dense_layers():
    pipe = make_pipeline("wan21")  # 4 layers; CFG: 2 transformer calls per step
    kw = dict(num_inference_steps=3, **SIZE)
    base = run_pipe(pipe, **kw)
    vidaccel.apply(pipe, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2), dense_steps=1, dense_layers=[0, 3]))
    run_pipe(pipe, **kw)
    s = vidaccel.stats(pipe)["sliding_window"]["transformer"]
    assert s["dense_calls"] == 1 * 2 * 4 + 2 * 2 * 2 and s["sparse_calls"] == 2 * 2 * 2
    vidaccel.remove(pipe)
    # every step dense: the original processors run, bit-identical
    vidaccel.apply(pipe, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2), dense_steps=3))
    np.testing.assert_array_equal(run_pipe(pipe, **kw), base)
    assert vidaccel.stats(pipe)["sliding_window"]["transformer"]["density"] == 1.0


def test_cogvideox_dense_steps_follow_the_scheduler():
    pipe = make_pipeline("cogvideox-1.0")  # CFG batched: one transformer call per step, 4 layers
    vidaccel.apply(pipe, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2), dense_steps=2))
    run_pipe(pipe, **SIZE)  # 4 steps
    s = vidaccel.stats(pipe)["sliding_window"]["transformer"]
    assert s["dense_calls"] == 2 * 4 and s["sparse_calls"] == 2 * 4


def test_wan22_dense_steps_count_pipeline_steps_across_experts():
    pipe = make_pipeline("wan22")
    vidaccel.apply(pipe, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2), dense_steps=1))
    run_pipe(pipe, **SIZE)
    s = vidaccel.stats(pipe)["sliding_window"]
    # step 0 belongs to the high-noise expert; the low-noise expert never sees a dense step
    assert s["transformer"]["dense_calls"] == 1 * 2 * 4
    assert s["transformer_2"]["dense_calls"] == 0 and s["transformer_2"]["sparse_calls"] > 0


def test_bare_transformer_counts_steps_from_timesteps():
    model = make_pipeline("wan21").transformer
    torch.manual_seed(0)
    x, text = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 16, 32)

    def fwd(t):
        with torch.no_grad():
            return model(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=text, return_dict=False)[0]

    base = [fwd(900.0), fwd(800.0)]
    vidaccel.apply(model, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2), dense_steps=1))
    assert torch.equal(fwd(900.0), base[0])  # step 0: dense
    assert not torch.allclose(fwd(800.0), base[1])  # step 1: windowed
    assert torch.equal(fwd(900.0), base[0])  # a rising timestep starts a new run
    vidaccel.remove(model)
    assert torch.equal(fwd(800.0), base[1])


def test_triton_backend_in_a_pipeline_matches_gather():
    pipe = make_pipeline("cogvideox-1.5")
    kw = dict(num_inference_steps=1, guidance_scale=1.0, **SIZES["cogvideox-1.5"])
    outs = {}
    for backend in ("gather", "triton"):
        vidaccel.apply(pipe, SlidingWindowConfig(window=(1, 2, 2), tile=(1, 2, 2), backend=backend))
        outs[backend] = run_pipe(pipe, **kw)
        vidaccel.remove(pipe)
    assert rel(outs["triton"], outs["gather"]) < 1e-4


def test_freeswim_mode_overrides_cross_attention():
    pipe = make_pipeline("wan21")
    kw = dict(num_inference_steps=3, **SIZE)
    base = run_pipe(pipe, **kw)
    # window ≥ grid and a dense branch every step: its cross-attention equals the windowed branch's
    vidaccel.apply(pipe, SlidingWindowConfig(window=(16, 16, 16), tile=(1, 2, 2), cross_attn_every=1))
    assert rel(run_pipe(pipe, **kw), base) <= 1e-5
    vidaccel.remove(pipe)

    plain = SlidingWindowConfig(train_grid=(1, 2, 2), tile=(1, 2, 2))
    assert plain.window == (1, 2, 2)
    vidaccel.apply(pipe, plain)
    windowed = run_pipe(pipe, **kw)
    vidaccel.remove(pipe)
    vidaccel.apply(pipe, SlidingWindowConfig(train_grid=(1, 2, 2), tile=(1, 2, 2), cross_attn_every=2))
    swim = run_pipe(pipe, **kw)
    s = vidaccel.stats(pipe)["sliding_window"]["transformer"]
    assert s["dense_branch_calls"] == 2 * 2  # steps 0 and 2, cond and uncond
    assert s["cross_attn_overrides"] == 3 * 2 * 4  # every windowed call, every layer
    assert np.abs(swim - windowed).max() > 1e-5
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, **kw), base)


def test_config_errors_name_field_value_and_allowed():
    with pytest.raises(ValueError, match=r"window=\(0, 2, 2\).*>= 1"):
        SlidingWindowConfig(window=(0, 2, 2))
    with pytest.raises(ValueError, match=r"tile=\(2, 2\).*three integers"):
        SlidingWindowConfig(window=(1, 2, 2), tile=(2, 2))
    with pytest.raises(ValueError, match="window=None.*train_grid"):
        SlidingWindowConfig()
    with pytest.raises(ValueError, match="dense_steps=-1.*>= 0"):
        SlidingWindowConfig(window=(1, 2, 2), dense_steps=-1)
    with pytest.raises(ValueError, match="backend='cuda'.*allowed: auto, triton"):
        SlidingWindowConfig(window=(1, 2, 2), backend="cuda")
    with pytest.raises(ValueError, match="dense_layers"):
        SlidingWindowConfig(window=(1, 2, 2), dense_layers=[-1])
    pipe = make_pipeline("wan21")
    with pytest.raises(ValueError, match=r"dense_layers=\[1, 7\] is out of range.*has 4 layers"):
        vidaccel.apply(pipe, SlidingWindowConfig(window=(1, 2, 2), dense_layers=[1, 7]))
    assert vidaccel.applied(pipe) == []
    with pytest.raises(ValueError, match="cross_attn_every=2 needs cross-attention"):
        vidaccel.apply(make_pipeline("cogvideox-1.0"), SlidingWindowConfig(window=(1, 2, 2), cross_attn_every=2))
