"""The interleaved benchmark harness and the fidelity metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vidaccel.bench import BenchConfig, bench_configs_from_names, run_benchmark
from vidaccel.metrics import psnr, ssim

from .conftest import make_pipeline


def test_psnr_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.random((3, 32, 32, 3)).astype(np.float32)
    assert math.isinf(psnr(a, a)) and ssim(a, a) == pytest.approx(1.0)
    b = (a.copy() * 255).round().astype(np.uint8)
    c = b.astype(np.int16)
    c[..., 0] += 10  # MSE = 100/3 (in 8-bit units) on uint8 frames
    c = np.clip(c, 0, 255).astype(np.uint8)
    expected = 10 * math.log10(255**2 / np.mean((b.astype(np.float64) - c) ** 2))
    assert psnr(b, c) == pytest.approx(expected, rel=1e-9)
    noisy = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert 0.0 < ssim(a, noisy) < ssim(a, np.clip(a + rng.normal(0, 0.02, a.shape), 0, 1)) < 1.0
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:2])
    with pytest.raises(ValueError, match="NaN"):
        psnr(a, np.full_like(a, np.nan))


def test_run_benchmark_interleaves_and_reports(tmp_path, test_techniques):
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("wan21")
    configs = [BenchConfig.from_configs("scale", ScaleAttnConfig(1.2)), *bench_configs_from_names(["fbc:0.3"])]
    report = run_benchmark(pipe, configs, prompts=["a red circle", "a blue square"], seeds=[0, 1], repeats=2,
                           call_kwargs=dict(height=32, width=32, num_frames=5, num_inference_steps=3,
                                            max_sequence_length=16), out_dir=str(tmp_path), progress=False)
    names = [r["name"] for r in report.rows]
    assert names == ["baseline", "scale", "diffusers-fbc:0.3"]
    assert len(report.runs) == 2 * 2 * 2 * 3
    base, scale, fbc = report.rows
    assert math.isinf(base["psnr"]) and base["speedup"] == 1.0 and base["ssim"] == pytest.approx(1.0)
    assert math.isfinite(scale["psnr"]) and scale["ssim"] < 1.0  # the technique changes the frames
    assert all(r["speedup"] > 0 and r["peak_mib"] > 0 for r in report.rows)
    assert scale["stats"]["test-scale-attn"]["transformer"]["attention_calls"] > 0
    # the order of configurations rotates between rounds
    order = [x["config"] for x in report.runs if x["prompt"] == "a red circle" and x["seed"] == 0]
    assert order[:3] != order[3:]
    assert type(pipe).__name__ == "WanPipeline" and not hasattr(pipe, "_vidaccel_original_class")
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| scale | vidaccel |" in report.markdown()


def test_magcache_peer_is_calibrated_here(tmp_path):
    pipe = make_pipeline("wan21")
    (mag,) = bench_configs_from_names(["magcache:0.5"])
    report = run_benchmark(pipe, [mag], prompts=["a red circle"], call_kwargs=dict(
        height=32, width=32, num_frames=5, num_inference_steps=6, max_sequence_length=16), progress=False)
    assert report.rows[1]["name"] == "diffusers-magcache:0.5"
    assert math.isfinite(report.rows[1]["speedup"])


def test_bench_config_names_validate():
    with pytest.raises(ValueError, match="not known"):
        bench_configs_from_names(["warp"])
    with pytest.raises(ValueError, match="fbc:abc"):
        bench_configs_from_names(["fbc:abc"])
    assert bench_configs_from_names(["none"]) == []


def test_pareto_front():
    from vidaccel.bench import pareto_front

    pts = [(30.0, 2.0), (25.0, 3.0), (28.0, 1.5), (20.0, 2.5), (35.0, 1.2)]
    assert pareto_front(pts) == [(25.0, 3.0), (30.0, 2.0), (35.0, 1.2)]


def test_cache_dit_peer_runs_when_installed():
    pytest.importorskip("cache_dit")
    from .conftest import run_pipe

    pipe = make_pipeline("wan21")
    before = run_pipe(pipe, num_inference_steps=8, num_frames=5)
    (cd,) = bench_configs_from_names(["cache-dit:0.5"])
    report = run_benchmark(pipe, [cd], prompts=["a red circle"], call_kwargs=dict(
        height=32, width=32, num_frames=5, num_inference_steps=8, max_sequence_length=16), progress=False)
    assert report.rows[1]["name"] == "cache-dit:0.5" and math.isfinite(report.rows[1]["psnr"])
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=8, num_frames=5), before)  # disabled again
