"""Memory choices for small machines: ``keep_original`` (``"disk"``, ``"none"``), empty inputs of quantized layers,
and diffusers' offload hooks (model CPU offload, group offload) with every technique, in both orders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import vidaccel
from vidaccel.accel import load_techniques
from vidaccel.accel.quantization import QuantConfig, QuantLinear
from vidaccel.core.technique import registered_config_types, technique_for_type

from .conftest import make_pipeline, run_pipe

load_techniques()
pytestmark = pytest.mark.usefixtures("one_thread")
TECHNIQUES = [t for t in registered_config_types() if t.__module__.startswith("vidaccel.")]


def _saved_pipeline(tmp_path, **load_kwargs):
    import diffusers

    make_pipeline("wan21").save_pretrained(tmp_path / "wan")
    pipe = diffusers.WanPipeline.from_pretrained(tmp_path / "wan", **load_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _originals_in_memory(pipe) -> int:
    return sum(m.original is not None for m in pipe.transformer.modules() if isinstance(m, QuantLinear))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_original_disk_rereads_the_checkpoint(tmp_path, dtype):
    pipe = _saved_pipeline(tmp_path, dtype=dtype)
    base = run_pipe(pipe)
    vidaccel.apply(pipe, QuantConfig(format="fp8", keep_original="cpu"))
    kept = run_pipe(pipe)
    vidaccel.remove(pipe)
    vidaccel.apply(pipe, QuantConfig(format="fp8", keep_original="disk"))
    assert _originals_in_memory(pipe) == 0
    np.testing.assert_array_equal(run_pipe(pipe), kept)
    assert vidaccel.stats(pipe)["quant"]["transformer"]["sqnr_db_mean"] is None  # no original to compare with
    vidaccel.remove(pipe)
    assert not any(isinstance(m, QuantLinear) for m in pipe.transformer.modules())
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == dtype
    np.testing.assert_array_equal(run_pipe(pipe), base)


def test_keep_original_disk_reads_sharded_checkpoints(tmp_path):
    import diffusers

    pipe = make_pipeline("wan21")
    pipe.transformer.save_pretrained(tmp_path / "tr", max_shard_size="40KB")
    assert (tmp_path / "tr" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    tr = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "tr")
    x = torch.randn(1, 16, 2, 8, 8)
    enc = torch.randn(1, 16, 32)
    with torch.no_grad():
        ref = tr(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=enc, return_dict=False)[0]
        vidaccel.apply(tr, QuantConfig(format="nvfp4", keep_original="disk"))
        vidaccel.remove(tr)
        out = tr(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=enc, return_dict=False)[0]
    assert torch.equal(out, ref)


def test_keep_original_disk_is_refused_without_a_matching_checkpoint(tmp_path):
    pipe = make_pipeline("wan21")  # built in memory: no file to read back from
    with pytest.raises(ValueError, match="keep_original='disk' needs the transformer to come from a safetensors"):
        vidaccel.apply(pipe, QuantConfig(format="fp8", keep_original="disk"))
    assert vidaccel.applied(pipe) == [] and not any(isinstance(m, QuantLinear) for m in pipe.transformer.modules())
    saved = _saved_pipeline(tmp_path)
    with torch.no_grad():
        saved.transformer.blocks[0].attn1.to_k.weight.mul_(1.5)  # changed after loading (as a fused LoRA does)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn1\.to_k\.weight in memory differs"):
        vidaccel.apply(saved, QuantConfig(format="fp8", keep_original="disk"))
    assert vidaccel.applied(saved) == []


def test_keep_original_none_frees_the_originals_and_refuses_remove():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, QuantConfig(format="nvfp4"))
    kept = run_pipe(pipe)
    vidaccel.remove(pipe)
    vidaccel.apply(pipe, QuantConfig(format="nvfp4", keep_original="none"))
    assert _originals_in_memory(pipe) == 0
    np.testing.assert_array_equal(run_pipe(pipe), kept)
    with pytest.raises(ValueError, match="keep_original='none'.*reload the model.*nothing was removed"):
        vidaccel.remove(pipe)
    assert vidaccel.applied(pipe) == ["quant"]  # the refusal changed nothing
    np.testing.assert_array_equal(run_pipe(pipe), kept)


def test_keep_original_rejects_unknown_values():
    with pytest.raises(ValueError, match="keep_original='ram' is not allowed; allowed: 'cpu', 'device', 'disk', 'none'"):
        QuantConfig(keep_original="ram")


@pytest.mark.parametrize("shape", [(0, 64), (1, 0, 64), (2, 0, 64)])
@pytest.mark.parametrize("kind", ["linear", "fp8", "fp8-weight", "nvfp4"])
def test_linear_layers_accept_empty_inputs(kind, shape):
    from vidaccel.accel.quantization.layers import build_quantized

    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = linear if kind == "linear" else build_quantized(linear, kind, QuantConfig(), "x")
    for dtype in (torch.float32, torch.bfloat16):
        y = layer.to(dtype) if kind == "linear" else layer
        out = y(torch.randn(shape, dtype=dtype))
        assert out.shape == shape[:-1] + (48,) and out.dtype == dtype


def test_image_keys_of_an_i2v_transformer_go_through_fp8_with_a_text_only_call():
    """diffusers slices the image context off the text; without image embeddings that slice has 0 tokens."""
    from vidaccel.testing import _wan_transformer

    tr = _wan_transformer(0, image_dim=32, added_kv_proj_dim=32, num_layers=1)
    x, enc = torch.randn(1, 16, 2, 8, 8), torch.randn(1, 16, 32)
    with torch.no_grad():
        ref = tr(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=enc, return_dict=False)[0]
        vidaccel.apply(tr, QuantConfig(format="fp8", skip=[]))
        assert isinstance(tr.blocks[0].attn2.add_k_proj, QuantLinear)
        out = tr(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=enc, return_dict=False)[0]
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    vidaccel.remove(tr)


# -- offload hooks -------------------------------------------------------------------------------------
OFFLOADS = {
    "model_cpu_offload": lambda pipe: pipe.enable_model_cpu_offload(device="cpu"),
    "group_block": lambda pipe: pipe.enable_group_offload(torch.device("cpu"), torch.device("cpu"),
                                                          offload_type="block_level", num_blocks_per_group=1),
    "group_leaf": lambda pipe: pipe.enable_group_offload(torch.device("cpu"), torch.device("cpu"),
                                                         offload_type="leaf_level"),
}


@pytest.mark.parametrize("order", ["offload_then_apply", "apply_then_offload"])
@pytest.mark.parametrize("offload", list(OFFLOADS))
@pytest.mark.parametrize("config_type", TECHNIQUES, ids=lambda t: t.__name__)
def test_offload_hooks_compose_with_every_technique(config_type, offload, order):
    config = technique_for_type(config_type).example_config
    ref = make_pipeline("wan21")
    vidaccel.apply(ref, config())
    expected = run_pipe(ref)
    stats = vidaccel.stats(ref)
    pipe = make_pipeline("wan21")
    if order == "offload_then_apply":
        OFFLOADS[offload](pipe)
        vidaccel.apply(pipe, config())
    else:
        vidaccel.apply(pipe, config())
        OFFLOADS[offload](pipe)
    np.testing.assert_array_equal(run_pipe(pipe), expected)
    assert vidaccel.stats(pipe) == stats
    vidaccel.remove(pipe)
    vidaccel.remove(ref)
    np.testing.assert_array_equal(run_pipe(pipe), run_pipe(ref))
