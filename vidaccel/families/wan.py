"""Wan 2.1 / 2.2 (``WanTransformer3DModel``): the only module that knows Wan's internals.

Blocks are ``model.blocks``; each has a self-attention ``attn1`` (q/k/v projections, RMS q/k norms across
heads, RoPE on interleaved pairs) and a text cross-attention ``attn2``. CFG runs as two transformer calls in
the ``cond`` / ``uncond`` cache contexts. Wan 2.2 A14B pipelines carry a second expert (``transformer_2``,
the low-noise one) of the same class; TI2V-5B modulates per token (a 4-D ``temb``). The latent is
``[B, C, F, H, W]``; the causal Wan VAE turns the first latent frame into one pixel frame and every later one
into four, and compresses space 8× (16× for the Wan 2.2 TI2V VAE, read from the pipeline).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import FragileLayer, ModelFamily, Rotary, SelfAttentionInputs

__all__ = ["WAN", "WanFamily", "WanStreamingDecoder"]


class WanFamily(ModelFamily):
    def patch_size(self, model: nn.Module) -> tuple[int, int, int]:
        return tuple(model.config.patch_size)

    def self_attention_inputs(self, attn: nn.Module, call: dict[str, Any]) -> SelfAttentionInputs | None:
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if call.get("encoder_hidden_states") is not None or getattr(attn, "add_k_proj", None) is not None:
            return None  # cross-attention (attn2), or image keys added to it (I2V)
        hidden_states = call["hidden_states"]
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        rotary_emb = call.get("rotary_emb")
        rotary = None if rotary_emb is None else Rotary(rotary_emb[0][..., 0::2], rotary_emb[1][..., 1::2])
        return SelfAttentionInputs(query, key, value, rotary, 0, hidden_states.dtype)

    def attention_output(self, attn: nn.Module, out: torch.Tensor, inputs: SelfAttentionInputs) -> torch.Tensor:
        out = out.flatten(2, 3).to(inputs.dtype)
        return attn.to_out[1](attn.to_out[0](out))

    def modulated_input(self, block, hidden_states, encoder_hidden_states, temb) -> torch.Tensor:
        table = block.scale_shift_table
        if temb.ndim == 4:  # Wan 2.2 TI2V: per-token modulation (B, L, 6, D)
            shift, scale = (table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (table + temb.float()).chunk(6, dim=1)[:2]
        return block.norm1(hidden_states.float()) * (1 + scale) + shift

    def frame_position_hooks(self, model, current):
        # Wan computes RoPE inside its forward from the latent's shape (model.rope): replace the tables of a
        # call by the rows of the chosen frames in the full grid's tables, computed by the model's own rope.
        limit = self.rope_frame_limit(model)

        def hook(module, args, output):
            chosen = current()
            if chosen is None:
                return None
            frames, total = chosen
            if total > limit:
                raise ValueError(f"a grid of {total} token frames exceeds the model's RoPE table of {limit} "
                                 "positions (rope_max_seq_len)")
            hidden_states = args[0]
            full = hidden_states.new_zeros(1, 1, total * module.patch_size[0], *hidden_states.shape[3:])
            cos, sin = module.forward(full)  # not module(...): that would run this hook again
            pick = frames.to(cos.device)
            return tuple(x.unflatten(1, (total, -1))[:, pick].flatten(1, 2) for x in (cos, sin))

        return [model.rope.register_forward_hook(hook)]

    def rope_frame_limit(self, model: nn.Module) -> int:
        return model.rope.freqs_cos.shape[0]

    def token_grid_limit(self, model: nn.Module) -> tuple[int, int, int]:
        limit = self.rope_frame_limit(model)  # one table of rope_max_seq_len positions per axis
        return (limit, limit, limit)

    def rope_table(self, model, frames, height, width):
        limit = self.rope_frame_limit(model)
        if frames > limit:
            raise ValueError(f"positions up to latent frame {frames - 1} exceed the model's RoPE table of {limit} "
                             "positions (rope_max_seq_len); use positions='relative'")
        cos, sin = model.rope(torch.zeros(1, 1, frames * model.config.patch_size[0], height, width))
        per_frame = cos.shape[1] // frames
        return (cos[..., 0::2].reshape(frames, per_frame, -1), sin[..., 1::2].reshape(frames, per_frame, -1))

    def streaming_decoder(self, vae) -> "WanStreamingDecoder":
        return WanStreamingDecoder(vae)


class WanStreamingDecoder:
    """Decode Wan latents chunk by chunk, keeping the causal VAE's temporal cache between chunks.

    Decoding latent frames ``[0:a]`` then ``[a:b]`` gives the same pixels as decoding ``[0:b]`` at once
    (the decoder is causal in time). Latents are the pipeline's normalised latents ``[B, C, F, h, w]``.
    Uses ``AutoencoderKLWan``'s per-frame decoder loop (``clear_cache`` / ``_feat_map``), as its ``_decode``.
    """

    def __init__(self, vae):
        self.vae = vae
        self.mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        self.reset()

    def reset(self) -> None:
        self.vae.clear_cache()
        self.frames_seen = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, f, h, w]`` → pixels ``[B, 3, T, H, W]`` in [-1, 1]."""
        vae = self.vae
        z = (latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)).to(vae.device, vae.dtype)
        x = vae.post_quant_conv(z)
        outs = []
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                    first_chunk=self.frames_seen == 0))
            self.frames_seen += 1
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.clamp(-1.0, 1.0)


WAN = WanFamily(
    name="wan",
    model_class="WanTransformer3DModel",
    blocks_attr="blocks",
    self_attn_attr="attn1",
    cross_attn_attr="attn2",
    cfg_style="sequential",
    cache_contexts=("cond", "uncond"),
    # attn1 projects the hidden states to q, k, v; attn2 projects the text to k, v (q reads the hidden states)
    # and, for I2V, the image tokens to its added k, v
    self_attn_projections=(("to_q", "to_k", "to_v"),),
    cross_attn_projections=(("to_k", "to_v"), ("add_k_proj", "add_v_proj")),
    fragile_layers=(
        FragileLayer("patch", r"(^|\.)patch_embedding\.",
                     "patch embedding: sees raw latents, tiny K, negligible FLOPs; its error reaches every block"),
        FragileLayer("time", r"(^|\.)condition_embedder\.time_\w+\.|(^|\.)condition_embedder\.time_proj$",
                     "timestep embedding / modulation: runs on one token per sample, and its error shifts every "
                     "block's scale/shift"),
        FragileLayer("text", r"(^|\.)condition_embedder\.text_embedder\.",
                     "text embedding: small share of the weights; conditioning errors change what is drawn"),
        FragileLayer("image", r"(^|\.)condition_embedder\.image_embedder\.",
                     "image embedding: small share of the weights; conditioning errors change what is drawn"),
        FragileLayer("output", r"^proj_out$", "output projection: its error goes straight into the predicted "
                     "velocity"),
    ),
)
