"""Shared fixtures: tiny offline pipelines and a throw-away technique for exercising the registry."""

from __future__ import annotations

import os

# Before anything imports triton: its tl.max/tl.sum/tl.zeros helpers only work in the CPU interpreter when
# TRITON_INTERPRET is set at import time.
os.environ.setdefault("TRITON_INTERPRET", "1")

from dataclasses import dataclass  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch

from vidaccel.core.technique import Technique, register_technique, unregister_technique
from vidaccel.core.processors import ProcessorSwap, ProcessorWrapper, wrap_processor

torch.set_num_threads(min(2, os.cpu_count() or 1))


# -- a test-only technique: scales every self-attention output ------------------------------------
@dataclass
class ScaleAttnConfig:
    factor: float = 1.5


class _Scaled(ProcessorWrapper):
    def __init__(self, inner, layer, technique):
        super().__init__(inner, layer)
        self.technique = technique

    def __call__(self, attn, *args, **kwargs):
        self.technique.calls += 1
        out = self.inner(attn, *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] * self.technique.config.factor,) + tuple(out[1:])
        return out * self.technique.config.factor


class ScaleAttn(Technique):
    name = "test-scale-attn"

    def attach(self):
        self.calls = 0
        self.resets = 0
        self.swap = ProcessorSwap(self.family, self.model, lambda p, i: wrap_processor(_Scaled, p, i, technique=self))
        self.swap.attach()

    def detach(self):
        self.swap.detach()

    def reset(self):
        self.calls = 0
        self.resets += 1

    def stats(self):
        return {"attention_calls": self.calls, "resets": self.resets}


@dataclass
class OffsetOutputConfig:
    offset: float = 0.25


class OffsetOutput(Technique):
    """Adds a constant to the transformer output through a forward hook (a second, stackable technique)."""

    name = "test-offset-output"

    def attach(self):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + self.config.offset,) + tuple(output[1:])
            output.sample = output.sample + self.config.offset
            return output

        self.handle = self.model.register_forward_hook(hook)

    def detach(self):
        self.handle.remove()


@pytest.fixture
def test_techniques():
    register_technique(ScaleAttnConfig)(ScaleAttn)
    register_technique(OffsetOutputConfig)(OffsetOutput)
    yield ScaleAttnConfig, OffsetOutputConfig
    unregister_technique(ScaleAttnConfig)
    unregister_technique(OffsetOutputConfig)


# -- pipelines ---------------------------------------------------------------------------------------
PIPELINE_KINDS = ["wan21", "wan22", "cogvideox-1.0", "cogvideox-1.5"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-shape tests: on the shared 2-core machine two threads contend
    and run 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_pipeline(kind: str):
    from vidaccel import testing

    if kind == "wan21":
        pipe = testing.tiny_wan_pipeline()
    elif kind == "wan22":
        pipe = testing.tiny_wan22_pipeline()
    elif kind.startswith("cogvideox-"):
        pipe = testing.tiny_cogvideox_pipeline(kind.split("-")[1])
    else:
        raise ValueError(kind)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipe(pipe, prompt="a red circle moving right", seed=0, **overrides) -> np.ndarray:
    from vidaccel.testing import tiny_call_kwargs

    kwargs = tiny_call_kwargs(pipe, **overrides)
    generator = torch.Generator().manual_seed(seed)
    out = pipe(prompt=prompt, generator=generator, **kwargs).frames
    out = np.asarray(out)
    assert np.isfinite(out).all(), "pipeline produced NaN/Inf"
    return out


# -- fuzz case counts ------------------------------------------------------------------------------------------
def pytest_terminal_summary(terminalreporter):
    """Print the fuzz cases tried per config / call / subcommand (and write them as JSON to
    ``$VIDACCEL_FUZZ_COUNTS`` when set)."""
    import json
    import sys

    fuzzing = sys.modules.get("tests.fuzzing")
    if fuzzing is None or not fuzzing.COUNTS:
        return
    counts = dict(sorted(fuzzing.COUNTS.items()))
    terminalreporter.write_line(f"fuzz cases tried: {sum(counts.values())} " + json.dumps(counts))
    path = os.environ.get("VIDACCEL_FUZZ_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump(counts, f, indent=2)
