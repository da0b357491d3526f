"""FP8 quantization quantizes each attention input once for its q/k/v projections (the family names them),
with the same numbers as quantizing per layer, and keeps no activation alive between transformer calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.accel.quantization import Fp8Linear, QuantConfig
from vidaccel.core.technique import attached
from vidaccel.families import family_for
from vidaccel.kernels.fp8 import wrapper as fp8_wrapper

from .conftest import make_pipeline, run_pipe

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny shapes, no contention

# latent output (no VAE decode): the transformer's numbers, not the decoder's rounding of them
CALL = dict(height=32, width=32, num_frames=9, num_inference_steps=2, output_type="latent")
KINDS = ["wan21", "cogvideox-1.0"]


def _quant(pipe):
    return attached(pipe.transformer)["quant"]


def _cached_layers(pipe) -> list[str]:
    return sorted(n for n, m in pipe.transformer.named_modules() if isinstance(m, Fp8Linear) and m.act_cache)


@pytest.mark.parametrize("kind", KINDS)
def test_family_names_the_projections_that_read_one_input(kind):
    pipe = make_pipeline(kind)
    model = pipe.transformer
    family = family_for(model)
    groups = family.attention_input_projections(model)
    blocks = len(family.blocks(model))
    prefix = family.blocks_attr
    want = []
    for i in range(blocks):
        want.append(tuple(f"{prefix}.{i}.attn1.{p}" for p in ("to_q", "to_k", "to_v")))
        if family.cross_attn_attr is not None:  # text k/v; the tiny T2V model has no image keys
            want.append((f"{prefix}.{i}.attn2.to_k", f"{prefix}.{i}.attn2.to_v"))
    assert groups == want
    names = dict(model.named_modules())
    assert all(isinstance(names[n], torch.nn.Linear) for g in groups for n in g)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["torch", "auto", "triton"])
def test_shared_quantization_gives_the_per_layer_numbers(kind, backend, monkeypatch):
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    pipe = make_pipeline(kind)
    vidaccel.apply(pipe, QuantConfig(format="fp8", backend=backend, measure_sqnr="off"))
    tech = _quant(pipe)
    groups = tech.family.attention_input_projections(pipe.transformer)
    assert _cached_layers(pipe) == sorted(n for g in groups for n in g)  # every projection, nothing else
    shared = run_pipe(pipe, **CALL)
    assert tech.act_cache._x is None and tech.act_cache._act is None  # reset at the end of each call
    layers = [m for m in pipe.transformer.modules() if isinstance(m, Fp8Linear) and m.act_cache is not None]
    for m in layers:
        m.act_cache = None
    per_layer = run_pipe(pipe, **CALL)
    np.testing.assert_array_equal(shared, per_layer)
    vidaccel.remove(pipe)
    assert not any(getattr(m, "act_cache", None) for m in layers)


def _count_per_group(pipe, calls, cache) -> dict[tuple[str, ...], set[tuple[int, int]]]:
    """Run the pipeline; for each projection group, the set of (quantizations, of which by the shared cache)
    made from its first projection's start to its last one's end, over every attention call."""
    model = pipe.transformer
    names = dict(model.named_modules())
    seen: dict[tuple[str, ...], list] = {}
    handles = []
    for group in family_for(model).attention_input_projections(model):
        def pre(module, args, group=group):
            seen.setdefault(group, []).append((len(calls), cache.quantizations))

        def post(module, args, output, group=group):
            start, cached = seen[group][-1]
            seen[group][-1] = (len(calls) - start, cache.quantizations - cached)

        handles += [names[group[0]].register_forward_pre_hook(pre), names[group[-1]].register_forward_hook(post)]
    try:
        run_pipe(pipe, **CALL)
    finally:
        for h in handles:
            h.remove()
    return {g: set(v) for g, v in seen.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_one_quantization_per_attention_input(kind, monkeypatch):
    """q, k, v of the hidden states quantize them once (three times per layer without the shared cache); k, v
    of Wan's text once (twice)."""
    calls = []
    real = fp8_wrapper.quantize_activation

    def counting(x, backend="auto"):
        calls.append(1)
        return real(x, backend)

    monkeypatch.setattr(fp8_wrapper, "quantize_activation", counting)
    pipe = make_pipeline(kind)
    vidaccel.apply(pipe, QuantConfig(format="fp8", backend="torch", measure_sqnr="off"))
    cache = _quant(pipe).act_cache
    groups = _quant(pipe).family.attention_input_projections(pipe.transformer)
    shared = _count_per_group(pipe, calls, cache)
    assert set(shared) == set(groups)
    assert all(v == {(1, 1)} for v in shared.values()), shared
    for m in pipe.transformer.modules():
        if isinstance(m, Fp8Linear):
            m.act_cache = None
    per_layer = _count_per_group(pipe, calls, cache)
    assert per_layer == {g: {(len(g), 0)} for g in groups}
    assert {len(g) for g in groups} == ({3, 2} if kind.startswith("wan") else {3})


def test_the_cache_is_released_when_the_call_fails():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, QuantConfig(format="fp8", backend="torch", measure_sqnr="off"))
    cache = _quant(pipe).act_cache
    block = pipe.transformer.blocks[-1]

    def boom(module, args):
        assert cache._x is not None  # the first blocks' attention inputs went through it
        raise RuntimeError("planted failure")

    h = block.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="planted failure"):
        run_pipe(pipe, **CALL)
    h.remove()
    assert cache._x is None and cache._act is None
