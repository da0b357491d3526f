"""``pipe.transformer = torch.compile(pipe.transformer)`` (an ``OptimizedModule``) with every technique, compiled
before or after ``apply``; dynamo's ``eager`` backend keeps the numbers identical to the uncompiled run, so the
test checks the wiring (attach, stats, reset per call, remove), not inductor's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.accel import CacheConfig, QuantConfig, load_techniques
from vidaccel.core.technique import registered_config_types, technique_for_type
from vidaccel.families import pipeline_transformers, unwrap_compiled

from .conftest import make_pipeline, run_pipe

load_techniques()
pytestmark = pytest.mark.usefixtures("one_thread")
TECHNIQUES = [t for t in registered_config_types() if t.__module__.startswith("vidaccel.")]


def _compile(pipe):
    for role, _ in pipeline_transformers(pipe):
        setattr(pipe, role, torch.compile(getattr(pipe, role), backend="eager"))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# every technique compiled after apply (the recommended order); both orders for the module-swapping and the
# hook-based technique; Wan 2.2's two compiled experts and CogVideoX once each (dynamo tracing is the cost here)
CASES = [("wan21", t, "apply_then_compile") for t in TECHNIQUES]
CASES += [("wan21", QuantConfig, "compile_then_apply"), ("wan21", CacheConfig, "compile_then_apply"),
          ("wan22", QuantConfig, "apply_then_compile"), ("cogvideox-1.5", CacheConfig, "compile_then_apply")]


@pytest.mark.parametrize("kind,config_type,order", CASES, ids=lambda v: getattr(v, "__name__", v))
def test_compiled_transformer_with_every_technique(kind, config_type, order):
    config = technique_for_type(config_type).example_config
    steps = dict(num_inference_steps=8 if kind == "wan22" else 4)
    ref = make_pipeline(kind)
    base = run_pipe(ref, **steps)
    vidaccel.apply(ref, config())
    expected = run_pipe(ref, **steps)
    pipe = make_pipeline(kind)
    if order == "compile_then_apply":
        _compile(pipe)
        vidaccel.apply(pipe, config())
    else:
        vidaccel.apply(pipe, config())
        _compile(pipe)
    assert type(pipe.transformer).__name__ == "OptimizedModule"
    out = run_pipe(pipe, **steps)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(run_pipe(pipe, **steps), out)  # state reset per call reaches the inner module
    assert vidaccel.stats(pipe) == vidaccel.stats(ref) and pipe.last_run["techniques"] == vidaccel.applied(ref)
    vidaccel.remove(pipe)
    assert type(pipe.transformer).__name__ == "OptimizedModule"  # the user's wrapper stays
    np.testing.assert_array_equal(run_pipe(pipe, **steps), base)


def test_unwrap_compiled_gives_the_inner_module():
    pipe = make_pipeline("wan21")
    inner = pipe.transformer
    compiled = torch.compile(inner, backend="eager")
    assert unwrap_compiled(compiled) is inner and unwrap_compiled(inner) is inner
    vidaccel.apply(compiled, vidaccel.CacheConfig(threshold=0.0))
    assert vidaccel.applied(inner) == ["cache"] and vidaccel.applied(compiled) == ["cache"]
    vidaccel.remove(compiled)
    assert vidaccel.applied(inner) == []
