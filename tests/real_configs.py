"""The transformers of the published checkpoints, from their ``config.json`` values (written in: no network).

Real widths, head dims, channel counts, text widths, RoPE / positional-embedding settings; only ``num_layers``
is cut (to 1 by default) and weights are random. Sources (``transformer/config.json`` of each repository):

=========================  ==========================================  ================================
name                       repository                                   differs from its family's base
=========================  ==========================================  ================================
Wan2.1-T2V-1.3B            Wan-AI/Wan2.1-T2V-1.3B-Diffusers             12 heads x 128, ffn 8960, 30 layers
Wan2.1-T2V-14B             Wan-AI/Wan2.1-T2V-14B-Diffusers              40 heads x 128, ffn 13824, 40 layers
Wan2.1-I2V-14B-480P        Wan-AI/Wan2.1-I2V-14B-480P-Diffusers         + in 36, image_dim 1280, added kv 5120
Wan2.2-TI2V-5B             Wan-AI/Wan2.2-TI2V-5B-Diffusers              24 heads x 128, ffn 14336, in/out 48
Wan2.2-A14B                Wan-AI/Wan2.2-T2V-A14B-Diffusers             two 14B experts, boundary_ratio 0.875
CogVideoX-2b               THUDM/CogVideoX-2b                           30 heads x 64, sin-cos positions
CogVideoX-5b               THUDM/CogVideoX-5b                           48 heads x 64, 42 layers, RoPE
CogVideoX1.5-5B            THUDM/CogVideoX1.5-5B                        + patch_size_t 2, sample 81x300x300
=========================  ==========================================  ================================
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

_WAN = dict(patch_size=[1, 2, 2], attention_head_dim=128, freq_dim=256, text_dim=4096, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, image_dim=None, added_kv_proj_dim=None,
            pos_embed_seq_len=None, in_channels=16, out_channels=16)
_WAN14 = dict(_WAN, num_attention_heads=40, ffn_dim=13824, num_layers=40)
_COG = dict(activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, dropout=0.0,
            flip_sin_to_cos=True, freq_shift=0, in_channels=16, max_text_seq_length=226, norm_elementwise_affine=True,
            norm_eps=1e-5, out_channels=16, patch_size=2, patch_size_t=None, patch_bias=True, sample_frames=49,
            sample_height=60, sample_width=90, spatial_interpolation_scale=1.875, temporal_compression_ratio=4,
            temporal_interpolation_scale=1.0, text_embed_dim=4096, time_embed_dim=512, timestep_activation_fn="silu",
            use_learned_positional_embeddings=False, use_rotary_positional_embeddings=False)

#: name -> (diffusers class, transformer config.json values)
REAL_CONFIGS: dict[str, tuple[str, dict]] = {
    "Wan2.1-T2V-1.3B": ("WanTransformer3DModel", dict(_WAN, num_attention_heads=12, ffn_dim=8960, num_layers=30)),
    "Wan2.1-T2V-14B": ("WanTransformer3DModel", dict(_WAN14)),
    "Wan2.1-I2V-14B-480P": ("WanTransformer3DModel", dict(_WAN14, in_channels=36, image_dim=1280,
                                                          added_kv_proj_dim=5120)),
    "Wan2.2-TI2V-5B": ("WanTransformer3DModel", dict(_WAN, num_attention_heads=24, ffn_dim=14336, num_layers=30,
                                                     in_channels=48, out_channels=48)),
    "Wan2.2-A14B": ("WanTransformer3DModel", dict(_WAN14)),  # each of the two experts
    "CogVideoX-2b": ("CogVideoXTransformer3DModel", dict(_COG, num_attention_heads=30, num_layers=30)),
    "CogVideoX-5b": ("CogVideoXTransformer3DModel", dict(_COG, num_attention_heads=48, num_layers=42,
                                                         use_rotary_positional_embeddings=True)),
    "CogVideoX1.5-5B": ("CogVideoXTransformer3DModel", dict(_COG, num_attention_heads=48, num_layers=42,
                                                            use_rotary_positional_embeddings=True, patch_size_t=2,
                                                            patch_bias=False, sample_frames=81, sample_height=300,
                                                            sample_width=300)),
}
#: Wan2.2-A14B's pipeline: the high-noise expert runs while t >= boundary_ratio * 1000
A14B_BOUNDARY_RATIO = 0.875

_POOL = None


def _pool() -> torch.Tensor:
    global _POOL
    if _POOL is None:
        _POOL = torch.randn((1 << 22) + 17, generator=torch.Generator().manual_seed(0))
    return _POOL


def _fill(t: torch.Tensor, salt: int, std: float) -> torch.Tensor:
    """Deterministic pseudo-random values from a shared pool (a copy per tensor: fast at 14B widths)."""
    pool = _pool()
    n = t.numel()
    start = (salt * 7919) % pool.numel()
    reps = -(-(n + start) // pool.numel())
    flat = pool.repeat(reps)[start:start + n] if reps > 1 else pool[start:start + n]
    return (flat * std).to(t.dtype).view(t.shape)


def build(name: str, num_layers: int = 1, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """The transformer of ``name`` with ``num_layers`` layers and random weights (params on the CPU in ``dtype``;
    norms 1, biases 0, other weights ~ N(0, 1/fan_in))."""
    import diffusers
    from accelerate import init_empty_weights

    cls_name, config = REAL_CONFIGS[name]
    cls = getattr(diffusers, cls_name)
    with init_empty_weights(include_buffers=False):
        model = cls(**dict(config, num_layers=num_layers))
    keep_fp32 = getattr(cls, "_keep_in_fp32_modules", None) or []  # as from_pretrained(dtype=...) keeps them
    for i, (pname, p) in enumerate(model.named_parameters()):
        module_name, _, leaf = pname.rpartition(".")
        pdtype = torch.float32 if any(k in pname.split(".") for k in keep_fp32) else dtype
        if leaf == "bias":
            data = torch.zeros(p.shape, dtype=pdtype)
        elif "norm" in module_name and p.dim() == 1:
            data = torch.ones(p.shape, dtype=pdtype)
        else:
            fan_in = p.shape[-1] if p.dim() == 1 else int(torch.tensor(p.shape[1:]).prod())
            data = _fill(torch.empty(p.shape, dtype=pdtype), seed * 1000 + i, fan_in ** -0.5)
        module = model.get_submodule(module_name) if module_name else model
        module._parameters[leaf] = torch.nn.Parameter(data, requires_grad=False)
    return model.eval()


def call_inputs(model, t: float, batch: int = 1) -> dict:
    """One transformer call's keyword arguments at timestep ``t``: a small token grid, real channel counts."""
    g = torch.Generator().manual_seed(1)
    dtype = model.dtype  # diffusers': the dtype of the weights not kept in fp32
    cfg = model.config
    if type(model).__name__.startswith("Wan"):
        x = torch.randn(batch, cfg.in_channels, 3, 8, 8, generator=g).to(dtype)  # token grid 3 x 4 x 4
        text = torch.randn(batch, 16, cfg.text_dim, generator=g).to(dtype)  # no image context: diffusers slices 0 tokens
        timestep = torch.full((batch,), float(t))
        if cfg.in_channels == cfg.out_channels == 48:  # Wan 2.2 TI2V: one timestep per token
            timestep = torch.full((batch, 3 * 4 * 4), float(t))
        return dict(hidden_states=x, encoder_hidden_states=text, timestep=timestep, return_dict=False)
    frames = 4 if cfg.patch_size_t else 3  # token grid 2 x 4 x 4 (1.5) or 3 x 4 x 4
    x = torch.randn(batch, frames, cfg.in_channels, 8, 8, generator=g).to(dtype)
    text = torch.randn(batch, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g).to(dtype)
    kwargs = dict(hidden_states=x, encoder_hidden_states=text, timestep=torch.full((batch,), int(t)),
                  return_dict=False)
    if cfg.use_rotary_positional_embeddings:
        from diffusers import CogVideoXPipeline

        owner = SimpleNamespace(vae_scale_factor_spatial=8, transformer=model)
        kwargs["image_rotary_emb"] = CogVideoXPipeline._prepare_rotary_positional_embeddings(owner, 64, 64, frames,
                                                                                            "cpu")
    return kwargs


def a14b_pipeline(num_layers: int = 1, dtype: torch.dtype = torch.bfloat16):
    """Wan2.2-A14B as a pipeline: both 14B-wide experts, a tiny VAE and a tiny text encoder of the real text width."""
    import diffusers
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from vidaccel.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=max(128, len(tokenizer)), d_model=4096, d_kv=8, d_ff=37,
                                          num_layers=1, num_heads=2, relative_attention_num_buckets=8)).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = diffusers.WanPipeline(transformer=build("Wan2.2-A14B", num_layers, dtype, seed=1),
                                 transformer_2=build("Wan2.2-A14B", num_layers, dtype, seed=2),
                                 boundary_ratio=A14B_BOUNDARY_RATIO, vae=vae, text_encoder=encoder.to(dtype),
                                 tokenizer=tokenizer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
