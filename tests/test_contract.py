"""The contract every registered technique keeps on every pipeline kind, written once.

A technique gets these tests by registering (with its ``noop_config()`` and ``example_config()``):

* its no-op setting is bit-identical to the baseline;
* its example setting acts (the output changes and stays finite), a second call with the same seed is
  identical, its stats are non-empty for every transformer (both Wan 2.2 experts);
* ``remove`` restores bit-identical outputs.

Pipeline kinds: tiny Wan 2.1, Wan 2.2 (two experts), CogVideoX 1.0 and 1.5, and the embedded trained model;
CFG off and a batch of two on Wan 2.1.
"""

from __future__ import annotations

import numpy as np
import pytest

import vidaccel
from vidaccel.accel import load_techniques
from vidaccel.core.technique import registered_config_types, technique_for_type
from vidaccel.families import pipeline_transformers

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe

load_techniques()
TECHNIQUES = [t for t in registered_config_types() if t.__module__.startswith("vidaccel.")]
KINDS = PIPELINE_KINDS + ["wan21-nocfg", "wan21-batch2", "embedded"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def embedded():
    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _setup(kind, embedded):
    """A fresh pipeline (the embedded one is shared and left clean by every test) and its call arguments."""
    if kind == "embedded":
        defaults = dict(embedded.vidaccel_model["defaults"], num_inference_steps=3, num_frames=9, output_type="np")
        return embedded, defaults
    base_kind = kind.split("-nocfg")[0].split("-batch2")[0]
    overrides = {}
    if kind.endswith("-nocfg"):
        overrides["guidance_scale"] = 1.0
    if kind.endswith("-batch2"):
        overrides["num_videos_per_prompt"] = 2
    return make_pipeline(base_kind), overrides


def _run(pipe, kind, kwargs):
    if kind == "embedded":
        import torch

        frames = pipe("a red circle moving right on a black background", generator=torch.Generator().manual_seed(0),
                      **kwargs).frames
        out = np.asarray(frames)
        assert np.isfinite(out).all()
        return out
    return run_pipe(pipe, num_inference_steps=8, **kwargs)  # Wan 2.2: every branch of each expert gets 4 calls


def test_every_builtin_technique_is_in_the_matrix():
    assert {t.__name__ for t in TECHNIQUES} >= {"CacheConfig", "SlidingWindowConfig", "QuantConfig",
                                               "LinearAttentionConfig"}


@pytest.mark.parametrize("config_type", TECHNIQUES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("kind", KINDS)
def test_technique_contract(kind, config_type, embedded):
    technique = technique_for_type(config_type)
    pipe, kwargs = _setup(kind, embedded)
    roles = [role for role, _ in pipeline_transformers(pipe)]
    base = _run(pipe, kind, kwargs)

    vidaccel.apply(pipe, technique.noop_config())
    try:
        np.testing.assert_array_equal(_run(pipe, kind, kwargs), base, err_msg="no-op setting changed the output")
    finally:
        vidaccel.remove(pipe)

    vidaccel.apply(pipe, technique.example_config())
    try:
        first = _run(pipe, kind, kwargs)
        stats = vidaccel.stats(pipe)[technique.name]
        second = _run(pipe, kind, kwargs)
    finally:
        vidaccel.remove(pipe)
    assert not np.array_equal(first, base), "the example setting did nothing"
    np.testing.assert_array_equal(first, second, err_msg="a second call with the same seed differs")
    assert sorted(stats) == sorted(roles) and all(stats[r] for r in roles), stats
    assert vidaccel.applied(pipe) == []
    np.testing.assert_array_equal(_run(pipe, kind, kwargs), base, err_msg="remove did not restore the output")
