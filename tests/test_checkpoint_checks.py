"""Quantized checkpoints are verified before anything is loaded: a corrupt data section, a file from a model with
another config, a stale expert file in a reused folder and files of different saves are all refused with the file
(and tensor) named, and the target model is left exactly as it was."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch

import vidaccel
from vidaccel.accel.quantization import load_quantized, save_quantized

from .conftest import make_pipeline
from .test_api_guarantees import snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def _saved(kind: str, folder, **overrides):
    from vidaccel import testing

    pipe = make_pipeline(kind) if not overrides else testing.tiny_wan_pipeline(**overrides)
    vidaccel.apply(pipe, vidaccel.QuantConfig(format="fp8"))
    save_quantized(pipe, folder)
    return folder


def _corrupt(path, key: str, value: float = float("nan")) -> None:
    """Overwrite every element of float tensor ``key`` in a safetensors file with ``value``, in place."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    start, end = header[key]["data_offsets"]
    assert header[key]["dtype"] == "F32"
    data = struct.pack("<f", value) * ((end - start) // 4)
    path.write_bytes(raw[:8 + n + start] + data + raw[8 + n + end:])


@pytest.mark.parametrize("tensor", ["blocks.0.attn1.to_q.weight_scale", "proj_out.weight", "blocks.1.norm2.bias"])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, tensor):
    folder = _saved("wan21", tmp_path / "q")
    _corrupt(folder / "transformer.safetensors", tensor)
    pipe = make_pipeline("wan21")
    before = snapshot(pipe)
    with pytest.raises(ValueError, match=rf"transformer.safetensors: tensor '{tensor}' holds \d+ non-finite"):
        load_quantized(pipe, folder)
    assert snapshot(pipe) == before and vidaccel.applied(pipe) == []


def test_a_checkpoint_of_another_config_with_the_same_shapes_is_refused(tmp_path):
    folder = _saved("wan21", tmp_path / "q", rope_max_seq_len=64)  # same parameters, another position table
    pipe = make_pipeline("wan21")
    before = snapshot(pipe)
    with pytest.raises(ValueError, match="saved from a model with another config.*rope_max_seq_len: file 64 vs"):
        load_quantized(pipe, folder)
    assert snapshot(pipe) == before


def test_a_stale_expert_file_is_refused(tmp_path):
    folder = _saved("wan22", tmp_path / "q")
    _saved("wan21", folder)  # the reused folder keeps the Wan 2.2 save's transformer_2.safetensors
    pipe = make_pipeline("wan21")
    before = snapshot(pipe)
    with pytest.raises(ValueError, match="transformer_2.safetensors: the target has no transformer_2"):
        load_quantized(pipe, folder)
    assert snapshot(pipe) == before
    base = tmp_path / "base"
    make_pipeline("wan21").save_pretrained(base)
    from vidaccel.pipelines import WanPipeline

    with pytest.raises(ValueError, match="the target has no transformer_2"):
        WanPipeline.from_pretrained(str(base), quantized=folder)


def test_files_of_different_saves_are_refused(tmp_path):
    first = _saved("wan22", tmp_path / "a")
    second = _saved("wan22", tmp_path / "b")
    shutil.copy(second / "transformer_2.safetensors", first / "transformer_2.safetensors")
    pipe = make_pipeline("wan22")
    before = snapshot(pipe)
    with pytest.raises(ValueError, match="its files come from different saves"):
        load_quantized(pipe, first)
    assert snapshot(pipe) == before


def test_a_verified_checkpoint_still_loads_bit_identically(tmp_path):
    from .conftest import run_pipe

    source = make_pipeline("wan22")
    vidaccel.apply(source, vidaccel.QuantConfig(format="fp8"))
    expected = run_pipe(source, num_inference_steps=4)
    save_quantized(source, tmp_path)
    pipe = make_pipeline("wan22")
    load_quantized(pipe, tmp_path)
    assert torch.equal(torch.from_numpy(run_pipe(pipe, num_inference_steps=4)), torch.from_numpy(expected))
