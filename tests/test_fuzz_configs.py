"""Fuzz every field of every config and every argument of the public entry points.

Each case sets one field (on top of a few base settings that unlock the field's rules) to a hostile value (the
fixed :data:`fuzzing.HOSTILE` list, then hypothesis-generated values of every type). The outcome must be one of:

* accepted, and the value lies in the field's documented domain (the ``VALID`` predicates below: a value outside
  it that is accepted is a bug, e.g. ``QuantConfig(sqnr_tokens=1.5)``);
* a ``ValueError`` naming the field, showing the value and saying what is allowed (never a bare ``TypeError``,
  ``OverflowError`` or ``KeyError``).

Accepted extreme values are then applied to a tiny pipeline and run (:func:`test_accepted_extremes_run`).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given

from vidaccel.accel import (CacheConfig, FrameMergeConfig, LinearAttentionConfig, QuantAttentionConfig, QuantConfig,
                            SlidingWindowConfig)
from vidaccel.accel.quant_attention.config import PV_MODES
from vidaccel.accel.caching.config import POLICIES
from vidaccel.accel.quantization.config import ACTIVATIONS, FORMATS, KEEP_ORIGINAL, SKIP_FORMATS, SQNR_MODES
from vidaccel.families.base import FRAGILE_KINDS
from vidaccel.kernels import backend_names
from vidaccel.pipelines.long_video import CausalConfig, RollingKVCache

from .fuzzing import ANY, COUNTS, FUZZ, HOSTILE, check_refusal, is_int, is_num


def _triple(v):
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(is_int(x, 1) for x in v)


def _regexes(v):
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or not all(isinstance(p, str) for p in v):
        return False
    try:
        [re.compile(p) for p in v]
    except re.error:
        return False
    return True


def _indices(v):
    return isinstance(v, (list, tuple, set, frozenset, range)) and all(is_int(i, 0) for i in v)


def _prompts(v):
    if isinstance(v, str):
        return bool(v.strip())
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(p, str) and p.strip() for p in v)


#: config -> (base settings to fuzz on, {field: documented domain})
SPECS = {
    CacheConfig: ([{}, {"policy": "call", "threshold": math.inf}, {"policy": "step"}, {"policy": "profiled"}], {
        "threshold": lambda v: is_num(v, 0, inf=True),
        "policy": lambda v: v in POLICIES,
        "forecast_order": lambda v: is_int(v, 0, 2),
        "compute_front": lambda v: v is None or is_int(v, 0),
        "compute_back": lambda v: is_int(v, 0),
        "warmup_steps": lambda v: is_int(v, 0),
        "max_consecutive_skips": lambda v: is_int(v, 1),
        "final_steps": lambda v: is_int(v, 0),
        "cache_ratio": lambda v: is_num(v, 0, 1, lo_open=True),
        "cfg_interval": lambda v: is_int(v, 0) and v != 1,
        "interval": lambda v: is_int(v, 1),
        "interval_growth": lambda v: is_num(v, 0),
        "num_inference_steps": lambda v: v is None or is_int(v, 1),
        "tuned_steps": lambda v: v is None or is_int(v, 1),
    }),
    SlidingWindowConfig: ([{"window": (3, 16, 16)}, {"window": None, "train_grid": (4, 8, 8)}], {
        "window": lambda v: _triple(v) or v is None,
        "tile": lambda v: v is None or _triple(v),
        "dense_steps": lambda v: is_int(v, 0),
        "dense_layers": _indices,
        "backend": lambda v: v in backend_names.ATTENTION,
        "train_grid": lambda v: v is None or _triple(v),
        "cross_attn_every": lambda v: is_int(v, 0),
    }),
    QuantConfig: ([{}, {"format": "mixed"}, {"format": "nvfp4"}], {
        "format": lambda v: v in FORMATS,
        "activations": lambda v: v is None or v in ACTIVATIONS,
        "skip": lambda v: v is None or _regexes(v),
        "skip_format": lambda v: v in SKIP_FORMATS,
        "mixed_fp8_fraction": lambda v: is_num(v, 0, 1),
        "plan": lambda v: v is None or isinstance(v, dict),
        "keep_original": lambda v: v in KEEP_ORIGINAL,
        "measure_sqnr": lambda v: v in SQNR_MODES,
        "sqnr_tokens": lambda v: is_int(v, 1, 2**31 - 1),
        "backend": lambda v: v in backend_names.FP8,
        "quantize_fragile": lambda v: isinstance(v, (list, tuple)) and all(k in FRAGILE_KINDS for k in v),
    }),
    LinearAttentionConfig: ([{}, {"layers": [0]}], {
        "layers": lambda v: v == "auto" or _indices(v),
        "num_layers": lambda v: v is None or is_int(v, 0),
        "feature_map": lambda v: v in backend_names.LINEAR_ATTENTION_FEATURE_MAPS,
        "rope": lambda v: v in ("numerator", "none"),
        "backend": lambda v: v in backend_names.LINEAR_ATTENTION,
        "adapter": lambda v: v is None,  # no adapter file exists among the fuzz values
        "calibration_prompts": _prompts,
        "calibration_kwargs": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
        "eps": lambda v: is_num(v, 0, lo_open=True),
        "adapter_metadata": lambda v: v is None,
    }),
    QuantAttentionConfig: ([{}], {
        "dense_steps": lambda v: is_int(v, 0),
        "dense_layers": _indices,
        "smooth_q": lambda v: isinstance(v, bool),
        "pv": lambda v: v in PV_MODES,
        "backend": lambda v: v in backend_names.QUANT_ATTENTION,
    }),
    FrameMergeConfig: ([{}, {"merge_at": 0.0, "split_at": 1.0}], {
        "threshold": lambda v: is_num(v, 0, inf=True),
        "max_group": lambda v: is_int(v, 2),
        "merge_at": lambda v: is_num(v, 0, 1),
        "split_at": lambda v: is_num(v, 0, 1),
        "keep_first": lambda v: isinstance(v, bool),
    }),
    CausalConfig: ([{}], {
        "chunk_frames": lambda v: is_int(v, 1, 2**31 - 1),
        "window_frames": lambda v: is_int(v, 2, 2**31 - 1),
        "context_noise": lambda v: is_num(v, 0, 1, hi_open=True),
        "max_sequence_length": lambda v: is_int(v, 1, 2**20),
    }),
}

CASES = [(cls, name) for cls, (_, fields) in SPECS.items() for name in fields]


def test_every_field_has_a_domain():
    for cls, (_, fields) in SPECS.items():
        assert set(fields) == {f.name for f in dataclasses.fields(cls)}, cls.__name__


def _try_config(cls, name, value):
    bases, fields = SPECS[cls]
    for base in bases:
        COUNTS[cls.__name__] += 1
        try:
            cls(**{**base, name: value})
        except ValueError as e:
            check_refusal(e, name, value)
            continue
        assert fields[name](value), f"{cls.__name__}({base}, {name}={value!r}) was accepted but is outside the domain"


@pytest.mark.parametrize("cls,name", CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_hostile_values(cls, name):
    for value in HOSTILE:
        _try_config(cls, name, value)


@pytest.mark.parametrize("cls,name", CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_generated_values(cls, name):
    @FUZZ
    @given(value=ANY)
    def run(value):
        _try_config(cls, name, value)

    run()


# -- RollingKVCache --------------------------------------------------------------------------------------------
KV_BASE = dict(num_layers=2, batch=1, heads=2, head_dim=8, tokens_per_frame=4, sink_frames=1, window_frames=3)
KV_DOMAINS = {
    "num_layers": lambda v: is_int(v, 1, 2**31 - 1), "batch": lambda v: is_int(v, 1, 2**31 - 1),
    "heads": lambda v: is_int(v, 1, 2**31 - 1), "head_dim": lambda v: is_int(v, 1, 2**31 - 1),
    "tokens_per_frame": lambda v: is_int(v, 1, 2**31 - 1), "sink_frames": lambda v: is_int(v, 0, 2**31 - 1),
    "window_frames": lambda v: is_int(v, 1, 2**31 - 1),
    "ema_decay": lambda v: v is None or is_num(v, 0, 1, hi_open=True),
    "dtype": lambda v: isinstance(v, torch.dtype) and v.is_floating_point,
    "device": lambda v: v in ("cpu", torch.device("cpu")),
}


@pytest.fixture
def small_memory(monkeypatch):
    """64 MiB "available": every accepted huge cache must be refused by the memory check, never allocated."""
    import vidaccel.pipelines.long_video.kv_cache as kv

    monkeypatch.setattr(kv, "available_bytes", lambda device: 64 * 2**20)


def _try_cache(name, value):
    COUNTS["RollingKVCache"] += 1
    try:
        RollingKVCache(**{**KV_BASE, name: value})
    except ValueError as e:
        check_refusal(e, name, value)
        return
    assert KV_DOMAINS[name](value), f"RollingKVCache({name}={value!r}) was accepted"


@pytest.mark.parametrize("name", list(KV_DOMAINS))
def test_kv_cache_arguments(name, small_memory):
    for value in HOSTILE + ["cuda", "cuda:9", "meta", torch.int8, torch.bool, torch.float16]:
        _try_cache(name, value)

    @FUZZ
    @given(value=ANY)
    def run(value):
        _try_cache(name, value)

    run()


def test_kv_cache_beyond_memory_is_refused_before_allocating(small_memory):
    with pytest.raises(ValueError, match=r"window_frames=100000\) is not allowed: its key/value buffers need"):
        RollingKVCache(**{**KV_BASE, "window_frames": 100_000})


# -- LongVideoPipeline call arguments ------------------------------------------------------------------------
class _Started(Exception):
    """Raised where the first chunk would start: the arguments were accepted."""


@pytest.fixture(scope="module")
def long_pipe():
    from vidaccel.pipelines.long_video import LongVideoPipeline
    from vidaccel.testing import tiny_wan_pipeline

    pipe = LongVideoPipeline(**tiny_wan_pipeline(seed=3).components)
    pipe.causal_config = CausalConfig(chunk_frames=2, window_frames=6, context_noise=0.02, max_sequence_length=16)
    return pipe


LONG_BASE = dict(num_frames=9, height=32, width=32, num_inference_steps=2, progress=False)
LONG_DOMAINS = {
    "num_frames": lambda v: is_int(v, 1),
    "seconds": lambda v: v is None,  # with num_frames given, any length is one too many
    "fps": lambda v: is_num(v, 0, 1000, lo_open=True),
    "schedule_unit": lambda v: v in ("seconds", "frames"),
    "chunk_frames": lambda v: v is None or is_int(v, 1, 2**31 - 1),
    "window_frames": lambda v: v is None or is_int(v, 1, 2**31 - 1),
    "sink_frames": lambda v: is_int(v, 0, 2**31 - 1),
    "num_inference_steps": lambda v: v is None or is_int(v, 1, 10_000),
    "timesteps": lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) > 0),
    "guidance_scale": lambda v: v is None or is_num(v, 0),
    "negative_prompt": lambda v: v is None or isinstance(v, str),
    "seed": lambda v: is_int(v, 0),
    "height": lambda v: v is None or (is_int(v, 16, 2**20) and v % 16 == 0),
    "width": lambda v: v is None or (is_int(v, 16, 2**20) and v % 16 == 0),
    "use_kv_cache": lambda v: isinstance(v, bool),
    "ema_decay": lambda v: v is None or is_num(v, 0, 1, hi_open=True),
    "positions": lambda v: v in ("relative", "absolute"),
    "reuse_context_attention": lambda v: isinstance(v, bool),
    "context_noise": lambda v: v is None or is_num(v, 0, 1, hi_open=True),
    "output": lambda v: v is None or (isinstance(v, str) and v.lower().endswith(".mp4")),
    "progress": lambda v: isinstance(v, bool),
    "max_sequence_length": lambda v: v is None or is_int(v, 1, 2**20),
    "return_frames": lambda v: isinstance(v, bool),
}


def _try_long(pipe, name, value):
    COUNTS["LongVideoPipeline.__call__"] += 1
    kwargs = {**LONG_BASE, name: value}
    if name == "ema_decay":
        kwargs["sink_frames"] = 1
    try:
        pipe("a red circle", **kwargs)
    except _Started:
        assert LONG_DOMAINS[name](value), f"LongVideoPipeline({name}={value!r}) was accepted"
    except ValueError as e:
        check_refusal(e, name, value)
    else:
        raise AssertionError(f"{name}={value!r}: the call neither started nor refused")


@pytest.mark.parametrize("name", list(LONG_DOMAINS))
def test_long_video_arguments(long_pipe, name, monkeypatch, tmp_path, small_memory):
    monkeypatch.chdir(tmp_path)  # a generated relative '.mp4' name lands here

    def started(*args, **kwargs):
        raise _Started

    monkeypatch.setattr(type(long_pipe), "_denoise_chunk", started)
    for value in HOSTILE:
        _try_long(long_pipe, name, value)

    @FUZZ
    @given(value=ANY)
    def run(value):
        _try_long(long_pipe, name, value)

    run()
    assert not list(tmp_path.rglob("*.mp4")), "a refused or stopped call left a file"


def test_long_video_prompt_schedules(long_pipe, monkeypatch):
    monkeypatch.setattr(type(long_pipe), "_denoise_chunk", lambda *a, **k: (_ for _ in ()).throw(_Started()))
    bad = [None, 5, [], [5], [(0,)], [(0, "a"), (math.nan, "b")], [(0, "a"), (math.inf, "b")], [(0, 5)],
           [("x", "a")], [(0, "a"), (1e300, "b")], [(True, "a")], "", "   "]
    for schedule in bad:
        COUNTS["LongVideoPipeline.__call__"] += 1
        with pytest.raises(ValueError) as e:
            long_pipe(schedule, **LONG_BASE)
        assert "not allowed" in str(e.value) or "schedule" in str(e.value), str(e.value)


# -- load_pipeline -------------------------------------------------------------------------------------------
LOAD_DOMAINS = {
    "model": lambda v: isinstance(v, str) and bool(v) and "\x00" not in v,
    "dtype": lambda v: v is None or v in ("float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half",
                                          torch.float32, torch.bfloat16, torch.float16),
    "device": lambda v: v is None or v in ("cpu", torch.device("cpu")),
    "accel": lambda v: v is None or v in ("none", "fast", "balanced", "quality", "fp8", "nvfp4") or v == [],
}


def _try_load(name, value):
    from vidaccel.loading import load_pipeline

    COUNTS["load_pipeline"] += 1
    kwargs = {"model": "embedded", "device": "cpu", name: value}
    try:
        load_pipeline(**kwargs)
    except _Started:
        assert LOAD_DOMAINS[name](value), f"load_pipeline({name}={value!r}) started loading"
    except ValueError as e:
        check_refusal(e, name, value)


@pytest.mark.parametrize("name", list(LOAD_DOMAINS))
def test_load_pipeline_arguments(name, monkeypatch, tmp_path):
    import diffusers

    import vidaccel.loading as loading

    def started(*args, **kwargs):
        raise _Started

    monkeypatch.setattr(loading, "_embedded_pipeline", started)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", started)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for value in HOSTILE + ["afile", "adir", "gpu", "cuda", "cuda:3", torch.int8, torch.float64, "warp", [5],
                            CacheConfig, object]:
        _try_load(name, value)

    @FUZZ
    @given(value=ANY)
    def run(value):
        _try_load(name, value)

    run()


# -- accepted extremes work --------------------------------------------------------------------------------
EXTREMES = [
    CacheConfig(threshold=1e308), CacheConfig(threshold=math.inf, policy="call", interval=2**62, warmup_steps=2,
                                              final_steps=0),
    CacheConfig(max_consecutive_skips=2**62, warmup_steps=0, final_steps=2**62), CacheConfig(cache_ratio=1e-300,
                                                                                              policy="profiled"),
    SlidingWindowConfig(window=(2**62, 2**62, 2**62)), SlidingWindowConfig(window=(1, 1, 1), tile=(2**40, 1, 1)),
    SlidingWindowConfig(window=(1, 1, 1), dense_steps=2**62, dense_layers=[2**62]),
    QuantConfig(skip=[""]), QuantConfig(sqnr_tokens=2**31 - 1), QuantConfig(format="mixed", mixed_fp8_fraction=0.0),
    LinearAttentionConfig(layers=[0], feature_map="relu", eps=1e300),
    LinearAttentionConfig(layers=[0], feature_map="elu", eps=1e-300),
]


@pytest.mark.parametrize("config", EXTREMES, ids=lambda c: f"{type(c).__name__}")
def test_accepted_extremes_run(config, one_thread):
    """Values a config accepts at the edge of its domain either run (finite output) or are refused by apply /
    the call with a ValueError; nothing crashes later in a kernel."""
    import vidaccel
    from vidaccel.testing import tiny_call_kwargs, tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    COUNTS["accepted extremes"] += 1
    try:
        vidaccel.apply(pipe, config)
    except ValueError as e:
        assert "not allowed" in str(e) or "out of range" in str(e), str(e)
        return
    try:
        out = pipe("a red circle", generator=torch.Generator().manual_seed(0),
                   **tiny_call_kwargs(pipe, num_inference_steps=3)).frames
    except ValueError as e:
        assert "not allowed" in str(e), str(e)
        return
    finally:
        vidaccel.remove(pipe)
    assert np.isfinite(np.asarray(out)).all()
