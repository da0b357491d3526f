"""Every technique on the transformers of the eight published configs (tests/real_configs.py: real widths and
head dims, 1 layer, random bf16 weights, small token grids), Wan2.2-A14B as a pipeline with both experts.

Matrix: 8 configs x every registered built-in technique x 4 checks (no-op bit-exact; the technique's example
setting finite and changed; remove bit-exact; stats non-empty for every transformer). A bare transformer's "run"
is one call at t=999 (three calls, t=999/666/333, for caching, which needs a run to skip in), the pipeline's two
steps without CFG (six for caching); the model is built once per config and shared by its techniques."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.accel import load_techniques
from vidaccel.core.technique import registered_config_types, technique_for_type
from vidaccel.pipelines.long_video import CausalConfig

from .conftest import run_pipe
from .real_configs import REAL_CONFIGS, a14b_pipeline, build, call_inputs

load_techniques()
TECHNIQUES = [t for t in registered_config_types() if t.__module__.startswith("vidaccel.")]
CHECKS = ("noop_bit_exact", "example_finite_and_changed", "remove_bit_exact", "stats")
PIPELINE = "Wan2.2-A14B"
#: matrix size reported in the issue's closing note
MATRIX = (len(REAL_CONFIGS), len(TECHNIQUES), len(CHECKS))


class Subject:
    """A built config and its baseline runs (cached by run length)."""

    def __init__(self, name: str):
        self.name = name
        self.pipeline = a14b_pipeline() if name == PIPELINE else None
        self.model = None if self.pipeline is not None else build(name)
        self.target = self.pipeline if self.pipeline is not None else self.model
        self._base: dict = {}

    def run(self, technique_name: str) -> np.ndarray:
        if self.pipeline is not None:  # no CFG; 2 steps: 1 call per expert, 6 for caching: 3 per expert
            steps = 6 if technique_name == "cache" else 2
            return run_pipe(self.pipeline, num_inference_steps=steps, guidance_scale=1.0)
        steps = (999, 666, 333) if technique_name == "cache" else (999,)
        vidaccel.reset(self.model)
        with torch.no_grad():
            outs = [self.model(**call_inputs(self.model, t))[0].float() for t in steps]
        vidaccel.finish_run(self.model)
        out = torch.stack(outs).numpy()
        assert np.isfinite(out).all(), f"{self.name}: NaN/Inf"
        return out

    def base(self, technique_name: str) -> np.ndarray:
        key = technique_name == "cache"
        if key not in self._base:
            self._base[key] = self.run(technique_name)
        return self._base[key]


@pytest.fixture(scope="module", params=list(REAL_CONFIGS))
def subject(request):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    s = Subject(request.param)
    yield s
    del s
    gc.collect()


def test_matrix_size():
    assert MATRIX == (8, len(TECHNIQUES), 4) and len(TECHNIQUES) >= 4


@pytest.mark.parametrize("config_type", TECHNIQUES, ids=lambda t: t.__name__)
def test_technique_on_real_config(subject, config_type):
    technique = technique_for_type(config_type)
    name = technique.name
    base = subject.base(name)
    roles = ["transformer", "transformer_2"] if subject.pipeline is not None else ["transformer"]
    if technique.needs_pipeline and subject.pipeline is None:  # refused on a bare transformer, nothing changed
        with pytest.raises(ValueError, match="needs a pipeline"):
            vidaccel.apply(subject.target, technique.example_config())
        assert vidaccel.applied(subject.target) == []
        np.testing.assert_array_equal(subject.run(name), base)
        return

    vidaccel.apply(subject.target, technique.noop_config())
    try:
        np.testing.assert_array_equal(subject.run(name), base, err_msg=f"{subject.name}: no-op changed the output")
    finally:
        vidaccel.remove(subject.target)

    vidaccel.apply(subject.target, technique.example_config())
    try:
        out = subject.run(name)
        stats = vidaccel.stats(subject.target)[name]
    finally:
        vidaccel.remove(subject.target)
    assert np.isfinite(out).all() and not np.array_equal(out, base), f"{subject.name}: {name} did nothing"
    assert sorted(stats) == roles and all(stats[r] for r in roles), stats
    assert vidaccel.applied(subject.target) == []
    np.testing.assert_array_equal(subject.run(name), base, err_msg=f"{subject.name}: remove did not restore")


@pytest.mark.parametrize("name", ["Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.2-TI2V-5B", "Wan2.2-A14B"])
def test_causal_config_from_each_text_to_video_wan_config(name):
    cc = CausalConfig.for_model(REAL_CONFIGS[name][1])  # built on the meta device: no weights
    assert (cc.chunk_frames, cc.window_frames, cc.context_noise, cc.max_sequence_length) == (3, 21, 0.0, 512)


def test_causal_config_refuses_the_i2v_config():
    with pytest.raises(ValueError, match="36 input channels for 16 output channels"):
        CausalConfig.for_model(REAL_CONFIGS["Wan2.1-I2V-14B-480P"][1])
