"""Self-attention whose keys/values come from a :class:`~.kv_cache.RollingKVCache` plus the current chunk.

The model family computes q/k/v exactly as the model's own processor does; RoPE is applied here from a table
of per-frame positions (cached keys are stored before RoPE and rotated on read, so their positions can be
re-based as the window rolls).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...core.processors import ProcessorWrapper
from ...families import ModelFamily, Rotary
from ...kernels.attention import flash_attention, merge_attention
from .kv_cache import RollingKVCache
from .techniques import LongVideoTechniques

__all__ = ["PassState", "KVCachedAttention", "frame_rotary"]


def frame_rotary(table: tuple[torch.Tensor, torch.Tensor], frame_positions: list[int], device) -> Rotary:
    """RoPE for the tokens of the latent frames at ``frame_positions`` (a family ``rope_table``)."""
    cos, sin = table
    limit = cos.shape[0]
    if frame_positions and max(frame_positions) >= limit:
        raise ValueError(f"RoPE position {max(frame_positions)} is outside the table of {limit} frames; "
                         "use positions='relative'")
    index = torch.tensor(frame_positions, dtype=torch.long)
    c = cos[index].reshape(1, -1, 1, cos.shape[-1]).to(device)
    s = sin[index].reshape(1, -1, 1, sin.shape[-1]).to(device)
    return Rotary(c, s)


@dataclass
class PassState:
    """What the KV processors of one transformer pass need (set by the pipeline before each pass)."""

    cache: RollingKVCache
    write: bool = False
    frame_start: int = 0
    rope_q: Rotary | None = None   # positions of the chunk's own frames
    rope_k: Rotary | None = None   # positions of the cached frames
    reuse: bool = False            # FlashBlock: reuse the context part of the attention
    reuse_fresh: bool = True       # first step of a chunk: compute and store the context part
    context_parts: dict = field(default_factory=dict)
    context_lengths: dict = field(default_factory=dict)
    context_tokens: int = 0        # tokens attended in the cache, summed over layers (stats)
    techniques: "LongVideoTechniques | None" = None  # windowed / linear layers (see .techniques)


class KVCachedAttention(ProcessorWrapper):
    """Replaces a self-attention processor: attends to the cached context and the chunk's own tokens."""

    context_parallel = False  # attends to this rank's KV cache only: one process

    def __init__(self, inner, layer: int, state: PassState, family: ModelFamily):
        super().__init__(inner, layer)
        self.state = state
        self.family = family

    def __call__(self, attn, *args, **kwargs):
        st = self.state
        inputs = self.family.self_attention_inputs(attn, self.bind(attn, *args, **kwargs))
        if inputs is None:
            return self.inner(attn, *args, **kwargs)
        q, k, v = inputs.q, inputs.k, inputs.v
        mode = st.techniques.mode(self.layer) if st.techniques is not None else "dense"
        if mode != "dense":
            out = self._technique_attention(mode, q, k, v)
            if st.write:
                st.cache.update(self.layer, k, v, st.frame_start)
            return self.family.attention_output(attn, out, inputs)
        if st.techniques is not None and st.techniques.window is not None:
            st.techniques.window.count(None, 0)
        q_rot, k_rot = st.rope_q(q), st.rope_q(k)
        reuse = st.reuse and not st.write and not st.reuse_fresh and self.layer in st.context_parts
        if reuse:  # FlashBlock: the context part of this chunk's attention from its first step
            o_ctx, l_ctx = st.context_parts[self.layer]
            st.context_tokens += st.context_lengths[self.layer]
            o_in, l_in = flash_attention(q_rot, k_rot, v, return_lse=True)
            out = merge_attention(o_ctx, l_ctx, o_in, l_in)[0].type_as(q)
            return self.family.attention_output(attn, out, inputs)
        ck, cv = st.cache.get(self.layer)
        n_ctx = ck.shape[1]
        st.context_tokens += n_ctx
        if n_ctx:
            ck = st.rope_k(ck.to(k.dtype))
            cv = cv.to(v.dtype)
        if n_ctx and st.reuse and not st.write:
            o_ctx, l_ctx = st.context_parts[self.layer] = flash_attention(q_rot, ck, cv, return_lse=True)
            st.context_lengths[self.layer] = n_ctx
            o_in, l_in = flash_attention(q_rot, k_rot, v, return_lse=True)
            out = merge_attention(o_ctx, l_ctx, o_in, l_in)[0].type_as(q)
        elif n_ctx:
            out = flash_attention(q_rot, torch.cat([ck, k_rot], 1), torch.cat([cv, v], 1))
        else:
            out = flash_attention(q_rot, k_rot, v)
        if st.write:
            st.cache.update(self.layer, k, v, st.frame_start)
        return self.family.attention_output(attn, out, inputs)

    def _technique_attention(self, mode: str, q, k, v):
        """A windowed or linear layer: the chunk's queries over [cached frames | chunk] (see .techniques)."""
        st = self.state
        ck, cv = st.cache.get(self.layer)
        n_ctx = ck.shape[1]
        st.context_tokens += n_ctx
        ck, cv = ck.to(k.dtype), cv.to(v.dtype)
        v_all = torch.cat([cv, v], 1)
        if mode == "linear":
            return st.techniques.linear_kv(self.layer, q, torch.cat([ck, k], 1), v_all, st.rope_q, st.rope_k, n_ctx)
        cache = st.cache
        tpf = cache.tokens_per_frame
        sink = sum(1 for s in range(cache.sink_frames) if cache.slot_frame[s] >= 0)
        k_all = torch.cat([st.rope_k(ck), st.rope_q(k)], 1) if n_ctx else st.rope_q(k)
        return st.techniques.window_kv(st.rope_q(q), k_all, v_all, sink * tpf, (n_ctx + k.shape[1]) // tpf,
                                       k.shape[1] // tpf)
