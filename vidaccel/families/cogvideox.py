"""CogVideoX 1.0 / 1.5 (``CogVideoXTransformer3DModel``): the only module that knows CogVideoX's internals.

Blocks are ``model.transformer_blocks``; there is no cross-attention: the text tokens lead the
self-attention sequence (``attn1`` sees ``[text; video]``, both updated by every block), and RoPE (5B, 1.5)
rotates only the video tokens. CFG runs as one batched call in the ``cond_uncond`` cache context. The latent
is ``[B, F, C, H, W]``; 1.5 patches time too (``patch_size_t=2``) and its pipeline pads latent frames to a
multiple of it. Videos are made for 8 fps.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .base import FragileLayer, ModelFamily, Rotary, SelfAttentionInputs

__all__ = ["COGVIDEOX", "CogVideoXFamily"]


class CogVideoXFamily(ModelFamily):
    def patch_size(self, model: nn.Module) -> tuple[int, int, int]:
        cfg = model.config
        return (cfg.patch_size_t or 1, cfg.patch_size, cfg.patch_size)

    def self_attention_inputs(self, attn: nn.Module, call: dict[str, Any]) -> SelfAttentionInputs | None:
        encoder_hidden_states = call.get("encoder_hidden_states")
        if encoder_hidden_states is None or attn.is_cross_attention:
            return None
        hidden_states = call["hidden_states"]
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch = x.shape[0]
        query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        rotary = None
        image_rotary_emb = call.get("image_rotary_emb")
        if image_rotary_emb is not None:  # [S, D] tables for the video tokens only, as CogVideoXAttnProcessor2_0
            cos, sin = image_rotary_emb
            rotary = Rotary(cos[None, :, None, 0::2], sin[None, :, None, 1::2], offset=text_len)
        return SelfAttentionInputs(query, key, value, rotary, text_len, hidden_states.dtype)

    def attention_output(self, attn: nn.Module, out: torch.Tensor, inputs: SelfAttentionInputs):
        out = out.flatten(2, 3).to(inputs.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, inputs.text_len:], out[:, :inputs.text_len]

    def frame_position_hooks(self, model, current):
        # Rotary models (5B, 1.5) get their RoPE tables from the pipeline (`image_rotary_emb`, for the full grid):
        # keep the rows of the chosen frames. CogVideoX-2B adds sin-cos position embeddings inside its patch
        # embedding, computed for the frames it is given: swap them for the chosen frames' rows of the full grid's.
        cfg = model.config
        if cfg.use_learned_positional_embeddings:
            raise ValueError("CogVideoX with learned position embeddings (CogVideoX-5B-I2V) has positions only for "
                             "its training frame count: merged frames cannot keep their temporal places")
        if cfg.use_rotary_positional_embeddings:
            names = list(inspect.signature(type(model).forward).parameters)[1:]
            pos = names.index("image_rotary_emb")

            def pre_hook(module, args, kwargs):
                chosen = current()
                in_kwargs = "image_rotary_emb" in kwargs
                tables = kwargs.get("image_rotary_emb") if in_kwargs else (args[pos] if pos < len(args) else None)
                if chosen is None or tables is None:
                    return None
                frames, total = chosen
                picked = tuple(x.unflatten(0, (total, -1))[frames.to(x.device)].flatten(0, 1) for x in tables)
                if in_kwargs:
                    return args, {**kwargs, "image_rotary_emb": picked}
                return args[:pos] + (picked,) + args[pos + 1:], kwargs

            return [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
        embed = model.patch_embed

        def positions(height: int, width: int, latent_frames: int) -> torch.Tensor:
            pixel_frames = (latent_frames - 1) * embed.temporal_compression_ratio + 1
            if (embed.sample_height, embed.sample_width, embed.sample_frames) == (height, width, pixel_frames):
                return embed.pos_embedding  # what the patch embedding adds at its sample size
            return embed._get_positional_embeddings(height, width, pixel_frames)

        def hook(module, args, output):
            chosen = current()
            if chosen is None or not embed.use_positional_embeddings:
                return None
            frames, total = chosen
            _, kept, _, height, width = args[1].shape
            text = module.max_text_seq_length
            used = positions(height, width, kept)[:, text:].to(output.device, torch.float32)
            full = positions(height, width, total)[:, text:].to(output.device, torch.float32)
            wanted = full.unflatten(1, (total, -1))[:, frames.to(output.device)].flatten(1, 2)
            video = output[:, text:].float() - used + wanted
            return torch.cat([output[:, :text], video.to(output.dtype)], dim=1)

        return [embed.register_forward_hook(hook)]

    def modulated_input(self, block, hidden_states, encoder_hidden_states, temb) -> torch.Tensor:
        return block.norm1(hidden_states, encoder_hidden_states, temb)[0]

    def cp_plan(self, model: nn.Module) -> dict:
        """diffusers 0.42 ships no plan for CogVideoX: each rank takes an equal slice of the text tokens *and* of
        the video tokens at the first block (both are carried through every block; self-attention then sees
        ``[text_r; video_r]`` per rank, a permutation of ``[text; video]`` that unmasked attention does not
        notice), every block takes the same slice of the video tokens' RoPE tables (the model passes the whole
        tables to each block), and the output projection is gathered. Text and video token counts must each
        divide by the number of ranks."""
        from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

        rope = ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)
        tokens = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
        return {
            "transformer_blocks.0": {"hidden_states": tokens, "encoder_hidden_states": tokens},
            "transformer_blocks.*": {"image_rotary_emb": [rope, rope]},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }


COGVIDEOX = CogVideoXFamily(
    name="cogvideox",
    model_class="CogVideoXTransformer3DModel",
    blocks_attr="transformer_blocks",
    self_attn_attr="attn1",
    cross_attn_attr=None,
    cfg_style="batched",
    cache_contexts=("cond_uncond",),
    block_carries=("hidden_states", "encoder_hidden_states"),
    latent_axes=(1, 3, 4),
    fps=8,
    self_attn_projections=(("to_q", "to_k", "to_v"),),  # of [text; video], concatenated once per call
    fragile_layers=(
        FragileLayer("patch", r"(^|\.)patch_embed\.",
                     "patch embedding (and its text projection): sees raw latents; its error reaches every block"),
        FragileLayer("time", r"(^|\.)(time_embedding|ofs_embedding)\.",
                     "timestep embedding / modulation: runs on one token per sample, and its error shifts every "
                     "block's scale/shift"),
        FragileLayer("output", r"^(proj_out|norm_out\.\w+)$",
                     "output projection and its norm modulation: their error goes straight into the prediction"),
    ),
)
