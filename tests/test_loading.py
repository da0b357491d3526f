"""save_pretrained → load_pipeline / drop-in from_pretrained give the diffusers class's exact frames."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.pipelines import CogVideoXPipeline, WanPipeline

from .conftest import make_pipeline, run_pipe


@pytest.mark.parametrize("kind,vidaccel_cls,diffusers_cls", [
    ("wan21", WanPipeline, diffusers.WanPipeline),
    ("wan22", WanPipeline, diffusers.WanPipeline),
    ("cogvideox-1.0", CogVideoXPipeline, diffusers.CogVideoXPipeline),
    ("cogvideox-1.5", CogVideoXPipeline, diffusers.CogVideoXPipeline),
])
def test_saved_folder_loads_bit_identically(tmp_path, kind, vidaccel_cls, diffusers_cls):
    make_pipeline(kind).save_pretrained(tmp_path)
    reference = diffusers_cls.from_pretrained(tmp_path)
    reference.set_progress_bar_config(disable=True)
    expected = run_pipe(reference)

    dropin = vidaccel_cls.from_pretrained(tmp_path)
    dropin.set_progress_bar_config(disable=True)
    assert isinstance(dropin, diffusers_cls) and type(dropin) is vidaccel_cls
    np.testing.assert_array_equal(run_pipe(dropin), expected)

    loaded = vidaccel.load_pipeline(str(tmp_path), device="cpu")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is vidaccel_cls
    np.testing.assert_array_equal(run_pipe(loaded), expected)
    if kind == "wan22":
        assert loaded.transformer_2 is not None and loaded.config.boundary_ratio == 0.875


def test_from_pretrained_accel_applies_and_validates_first(tmp_path, test_techniques):
    ScaleAttnConfig, _ = test_techniques
    make_pipeline("wan21").save_pretrained(tmp_path)
    pipe = WanPipeline.from_pretrained(tmp_path, accel=[ScaleAttnConfig(1.5)])
    assert vidaccel.applied(pipe) == ["test-scale-attn"]
    with pytest.raises(ValueError, match="preset='warp'"):
        WanPipeline.from_pretrained(tmp_path, accel="warp")


def test_save_from_vidaccel_class_loads_in_diffusers(tmp_path):
    pipe = WanPipeline(**make_pipeline("wan21").components)
    pipe.save_pretrained(tmp_path)
    plain = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert type(plain) is diffusers.WanPipeline


def test_load_pipeline_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype='fp12'.*allowed"):
        vidaccel.load_pipeline("embedded", dtype="fp12")
    with pytest.raises(ValueError, match="device='tpu:x'"):
        vidaccel.load_pipeline("embedded", device="tpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            vidaccel.load_pipeline("embedded", device="cuda")


def test_load_pipeline_rejects_unsupported_model_class(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    pipe = diffusers.DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                                    down_block_types=("DownBlock2D",) * 2,
                                                    up_block_types=("UpBlock2D",) * 2),
                                  scheduler=DDPMScheduler())
    pipe.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="DDPMPipeline"):
        vidaccel.load_pipeline(str(tmp_path))


def test_embedded_model_loads_offline():
    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    info = pipe.vidaccel_model
    assert info["name"] in ("shapes-t2v", "tiny-random")
    d = info["defaults"]
    out = pipe(prompt="a red circle moving right on a black background", num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np",
               **{k: v for k, v in d.items() if k in ("height", "width", "num_frames")}).frames[0]
    assert out.shape == (d["num_frames"], d["height"], d["width"], 3)
    assert np.isfinite(out).all()
