"""Quantized checkpoints that travel: vidaccel → diffusers + torchao layout (loaded by stock diffusers), torchao's
own checkpoints → vidaccel's kernels, and both formats by hub id from a local hub cache, offline."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.accel.quantization import QuantConfig, QuantLinear
from vidaccel.accel.quantization.torchao_format import (from_blocked, load_quantized_checkpoint,
                                                        load_torchao_transformer, save_torchao, to_blocked)

from .conftest import make_pipeline, run_pipe

torchao = pytest.importorskip("torchao")
pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "nvfp4": QuantConfig(format="nvfp4"),
    "fp8-weight": QuantConfig(format="fp8", activations="none"),
    "nvfp4-preset": QuantConfig(format="nvfp4", skip_format="fp8", quantize_fragile=("text",)),  # FqnToConfig mix
}


def _forward(model):
    g = torch.Generator().manual_seed(0)
    x, enc = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 16, 32, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=enc, return_dict=False)[0]


def test_swizzle_matches_torchao():
    from torchao.prototype.mx_formats.utils import to_blocked as ao_to_blocked

    for rows, cols in [(200, 24), (128, 4), (1, 1), (300, 70)]:
        x = torch.randn(rows, cols).to(torch.float8_e4m3fn)
        assert torch.equal(to_blocked(x).view(torch.uint8).flatten(), ao_to_blocked(x).view(torch.uint8))
        assert torch.equal(from_blocked(to_blocked(x), rows, cols).view(torch.uint8), x.view(torch.uint8))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_saved_layout_loads_in_stock_diffusers_and_back(name, tmp_path):
    from diffusers import WanTransformer3DModel

    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, CONFIGS[name])
    ours = _forward(pipe.transformer)
    (folder,) = save_torchao(pipe, tmp_path)
    assert folder == os.path.join(tmp_path, "transformer")
    qc = json.loads(open(os.path.join(folder, "config.json")).read())["quantization_config"]
    assert qc["quant_method"] == "torchao"
    assert ("proj_out" in qc["modules_to_not_convert"]) == (CONFIGS[name].skip_format == "none")
    stock = WanTransformer3DModel.from_pretrained(folder, dtype=torch.float32)  # diffusers + torchao, no vidaccel
    assert type(stock.blocks[0].attn1.to_q.weight).__name__ in ("NVFP4Tensor", "Float8Tensor")
    assert torch.equal(_forward(stock), ours)
    back = load_torchao_transformer(tmp_path)
    assert isinstance(back.blocks[0].attn1.to_q, QuantLinear)
    assert torch.equal(_forward(back), ours)
    with pytest.raises(ValueError, match="loaded from a quantized checkpoint.*nothing was removed"):
        vidaccel.remove(back)


def test_w8a8_and_lora_are_refused(tmp_path):
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, QuantConfig(format="fp8"))  # dynamic activations
    with pytest.raises(ValueError, match="W8A8"):
        save_torchao(pipe, tmp_path)
    with pytest.raises(ValueError, match="not quantized"):
        save_torchao(make_pipeline("wan21"), tmp_path)


@pytest.mark.parametrize("kind", ["nvfp4", "fp8"])
def test_checkpoints_quantized_by_torchao_load_into_vidaccel(kind, tmp_path):
    from diffusers import TorchAoConfig, WanTransformer3DModel
    from torchao.prototype.mx_formats import NVFP4WeightOnlyConfig
    from torchao.quantization import Float8WeightOnlyConfig

    make_pipeline("wan21").transformer.save_pretrained(tmp_path / "plain")
    qt = NVFP4WeightOnlyConfig(use_dynamic_per_tensor_scale=True) if kind == "nvfp4" else Float8WeightOnlyConfig()
    skip = ["patch_embedding", "proj_out", "condition_embedder.time_proj"]
    ao = WanTransformer3DModel.from_pretrained(tmp_path / "plain", dtype=torch.float32, quantization_config=TorchAoConfig(
        qt, modules_to_not_convert=skip))
    ao.save_pretrained(tmp_path / "ao")
    ref = _forward(ao)
    ours = load_torchao_transformer(tmp_path / "ao")
    n = sum(isinstance(m, QuantLinear) for m in ours.modules())
    assert n == sum(type(m.weight).__name__.endswith("Tensor") and type(m.weight) is not torch.nn.Parameter
                    for m in ao.modules() if isinstance(m, torch.nn.Linear))
    out = _forward(ours)
    assert torch.isfinite(out).all()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < (1e-6 if kind == "nvfp4" else 1e-2), err  # fp8: torchao divides by the scale, vidaccel multiplies
    st = vidaccel.stats(ours)["quant"]["transformer"]
    assert st["loaded"] and st["counts"]["nvfp4" if kind == "nvfp4" else "fp8-weight"] == n


def test_unsupported_torchao_types_are_refused_by_name(tmp_path):
    from diffusers import TorchAoConfig, WanTransformer3DModel
    from torchao.quantization import Int8WeightOnlyConfig

    make_pipeline("wan21").transformer.save_pretrained(tmp_path / "plain")
    ao = WanTransformer3DModel.from_pretrained(tmp_path / "plain", dtype=torch.float32, quantization_config=TorchAoConfig(
        Int8WeightOnlyConfig(), modules_to_not_convert=["patch_embedding"]))
    ao.save_pretrained(tmp_path / "int8")
    with pytest.raises(ValueError, match=r"is a '(Int8Tensor|IntxUnpackedToInt8Tensor)'.*NVFP4Tensor"):
        load_torchao_transformer(tmp_path / "int8")


def _add_to_hub_cache(cache, repo_id: str, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay ``folder`` out as huggingface_hub's cache does: refs/main, snapshots/<commit>/..., blobs/<sha256>."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    for root, _, files in os.walk(folder):
        for name in files:
            src = os.path.join(root, name)
            dst = os.path.join(repo, "snapshots", commit, os.path.relpath(src, folder))
            data = open(src, "rb").read()
            blob = os.path.join(repo, "blobs", hashlib.sha256(data).hexdigest())
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(blob, "wb") as f:
                f.write(data)
            os.symlink(os.path.relpath(blob, os.path.dirname(dst)), dst)


def test_load_by_hub_id_from_a_local_hub_cache(tmp_path):
    from vidaccel.pipelines import WanPipeline

    cache = tmp_path / "hub"
    pipe = make_pipeline("wan21")
    pipe.save_pretrained(tmp_path / "base")
    _add_to_hub_cache(cache, "tiny-org/wan-base", tmp_path / "base")
    vidaccel.apply(pipe, QuantConfig(format="nvfp4"))
    expected = run_pipe(pipe)
    vidaccel.save_quantized(pipe, tmp_path / "vq")
    _add_to_hub_cache(cache, "tiny-org/wan-nvfp4-vidaccel", tmp_path / "vq")
    save_torchao(pipe, tmp_path / "ao")
    _add_to_hub_cache(cache, "tiny-org/wan-nvfp4-torchao", tmp_path / "ao")

    for repo in ("tiny-org/wan-nvfp4-vidaccel", "tiny-org/wan-nvfp4-torchao"):
        tr = load_quantized_checkpoint(repo, cache_dir=cache, local_files_only=True)
        assert torch.equal(_forward(tr), _forward(pipe.transformer))
        loaded = WanPipeline.from_pretrained("tiny-org/wan-base", quantized=repo, cache_dir=cache, local_files_only=True)
        loaded.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(run_pipe(loaded), expected)
    with pytest.raises(ValueError, match="hub could not provide it"):
        load_quantized_checkpoint("tiny-org/absent", cache_dir=cache, local_files_only=True)


def test_vidaccel_header_checks_hold_by_hub_id(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"x": torch.zeros(2)}, str(bad / "transformer.safetensors"), metadata={"format": "other"})
    _add_to_hub_cache(tmp_path / "hub", "tiny-org/bad", bad)
    with pytest.raises(ValueError, match="header has format='other'"):
        load_quantized_checkpoint("tiny-org/bad", cache_dir=tmp_path / "hub", local_files_only=True)
