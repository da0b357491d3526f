"""Offline random-weight tiny pipelines for tests and examples.

Every factory builds real diffusers classes (transformer, VAE, text encoder, tokenizer, scheduler) with
tiny configs and a fixed seed, entirely offline: the tokenizer is a T5 Unigram tokenizer built from an
in-memory vocabulary. They save with ``save_pretrained`` and reload with ``from_pretrained`` like any
checkpoint, which is how tests exercise the real loading path.

``tiny_call_kwargs(pipe)`` gives call arguments that fit each tiny pipeline (small size, few steps).

Example::

    from vidaccel.testing import tiny_wan_pipeline, tiny_call_kwargs
    pipe = tiny_wan_pipeline()
    frames = pipe("a red circle", **tiny_call_kwargs(pipe)).frames[0]   # (9, 32, 32, 3) float in [0, 1]
"""

from __future__ import annotations

import string
from typing import Any

import torch

__all__ = [
    "tiny_wan_pipeline",
    "tiny_wan22_pipeline",
    "tiny_cogvideox_pipeline",
    "tiny_call_kwargs",
    "tiny_tokenizer",
    "TINY_WORDS",
]

#: Whole-word pieces of the tiny tokenizer; anything else falls back to single letters.
TINY_WORDS = (
    "a an the on in of and with moving left right up down still slowly quickly background "
    "red green blue yellow white black gray navy purple orange circle square triangle ball box "
    "cat dog car city night sky sea forest video of blurry low quality"
).split()


def tiny_tokenizer():
    """A ``T5Tokenizer`` (Unigram) built from an in-memory vocabulary: no files, no network."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -1.0) for w in TINY_WORDS]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits + ",.'-"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _seeded(seed: int):
    torch.manual_seed(seed)


def _wan_transformer(seed: int, **overrides):
    from diffusers import WanTransformer3DModel

    cfg: dict[str, Any] = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=4,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    cfg.update(overrides)
    _seeded(seed)
    return WanTransformer3DModel(**cfg).eval()


def _wan_components(seed: int, scheduler: str):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_tokenizer()
    _seeded(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    _seeded(seed + 1)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=max(128, len(tokenizer)), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8,
        )
    ).eval()
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    elif scheduler == "euler":
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    else:
        raise ValueError(f"scheduler={scheduler!r} is not supported; use 'unipc' or 'euler'")
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sched)


_WAN_VARIANTS = ("t2v", "i2v", "v2v")


def tiny_wan_pipeline(*, variant: str = "t2v", seed: int = 0, scheduler: str = "unipc", **overrides):
    """A tiny random-weight Wan 2.1 pipeline.

    Args:
        variant: ``"t2v"`` (``WanPipeline``), ``"i2v"`` (``WanImageToVideoPipeline`` in the Wan 2.2 A14B
            style: no CLIP image encoder, two experts, 36 input channels) or ``"v2v"``
            (``WanVideoToVideoPipeline``).
        seed: weight seed.
        scheduler: ``"unipc"`` (Wan's default, flow prediction) or ``"euler"``.
        **overrides: ``WanTransformer3DModel`` config overrides (``num_layers=6``, ``attention_head_dim=64``...).
    """
    import diffusers

    if variant not in _WAN_VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; allowed: {', '.join(_WAN_VARIANTS)}")
    parts = _wan_components(seed, scheduler)
    if variant == "i2v":
        overrides.setdefault("in_channels", 36)
        t1 = _wan_transformer(seed + 2, **overrides)
        t2 = _wan_transformer(seed + 3, **overrides)
        return diffusers.WanImageToVideoPipeline(transformer=t1, transformer_2=t2, boundary_ratio=0.875, **parts)
    cls = diffusers.WanPipeline if variant == "t2v" else diffusers.WanVideoToVideoPipeline
    return cls(transformer=_wan_transformer(seed + 2, **overrides), **parts)


def tiny_wan22_pipeline(*, seed: int = 0, boundary_ratio: float = 0.875, scheduler: str = "unipc", **overrides):
    """A tiny random-weight Wan 2.2 A14B-style T2V pipeline: two experts split at ``boundary_ratio``."""
    import diffusers

    parts = _wan_components(seed, scheduler)
    return diffusers.WanPipeline(
        transformer=_wan_transformer(seed + 2, **overrides),
        transformer_2=_wan_transformer(seed + 3, **overrides),
        boundary_ratio=boundary_ratio,
        **parts,
    )


_COG_VERSIONS = ("1.0", "1.5")
_COG_VARIANTS = ("t2v", "i2v", "v2v")


def tiny_cogvideox_pipeline(version: str = "1.0", *, variant: str = "t2v", seed: int = 0, **overrides):
    """A tiny random-weight CogVideoX pipeline.

    Args:
        version: ``"1.0"`` (CogVideoX-2b style: sin-cos positions, no temporal patching) or ``"1.5"``
            (CogVideoX1.5-5b style: rotary positions, ``patch_size_t=2``).
        variant: ``"t2v"``, ``"i2v"`` (image latents concatenated: twice the input channels) or ``"v2v"``.
        **overrides: ``CogVideoXTransformer3DModel`` config overrides.
    """
    import diffusers
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    if version not in _COG_VERSIONS:
        raise ValueError(f"version={version!r} is not supported; allowed: {', '.join(_COG_VERSIONS)}")
    if variant not in _COG_VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; allowed: {', '.join(_COG_VARIANTS)}")
    cfg: dict[str, Any] = dict(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=4,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
    )
    if version == "1.5":
        cfg.update(attention_head_dim=16, patch_size_t=2, use_rotary_positional_embeddings=True)
    if variant == "i2v":
        cfg.update(in_channels=8)
        if version == "1.5":
            cfg.update(ofs_embed_dim=2)
        else:  # CogVideoX-5b-I2V: rotary positions + learned positional embeddings
            cfg.update(attention_head_dim=16, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True)
    cfg.update(overrides)
    _seeded(seed + 2)
    transformer = CogVideoXTransformer3DModel(**cfg).eval()
    _seeded(seed)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()
    _seeded(seed + 1)
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=max(128, len(tokenizer)), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8)
    ).eval()
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing")
    cls = {
        "t2v": diffusers.CogVideoXPipeline,
        "i2v": diffusers.CogVideoXImageToVideoPipeline,
        "v2v": diffusers.CogVideoXVideoToVideoPipeline,
    }[variant]
    return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)


def tiny_call_kwargs(pipe, **overrides) -> dict:
    """Small call arguments that fit a tiny pipeline: 9 frames, 32×32 (Wan) or 16×16 latents, 4 steps."""
    from .families import unwrap_compiled

    model = pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.transformer_2
    family = type(unwrap_compiled(model)).__name__
    if family.startswith("CogVideoX"):
        pt = pipe.transformer.config.patch_size_t or 1
        kw = dict(height=32, width=32, num_frames=9 if pt == 1 else 13, num_inference_steps=4, guidance_scale=6.0,
                  max_sequence_length=pipe.transformer.config.max_text_seq_length, output_type="np")
        if "v2v" in type(pipe).__name__.lower() or "VideoToVideo" in type(pipe).__name__:
            kw.pop("num_frames")
    else:
        kw = dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=5.0, max_sequence_length=16,
                  output_type="np")
        if "VideoToVideo" in type(pipe).__name__:
            kw.pop("num_frames")
    kw.update(overrides)
    return kw
