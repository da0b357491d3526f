"""Block-causal self-attention: tokens of chunk ``c`` attend only to tokens of chunks ``<= c``.

A video of ``F`` latent frames is split into chunks of ``chunk_frames`` latent frames. With
:func:`apply_block_causal`, every self-attention of the transformer gets a block-causal mask (the model's own
processors run, with the mask added); cross-attention to the text is unchanged. Per-token timesteps
(``timestep`` of shape ``(B, seq_len)``, diffusers' Wan 2.2 path) let each chunk carry its own noise level
(diffusion forcing, Chen et al. 2024, https://arxiv.org/abs/2407.01392).

Token order is the transformer's patch order: frame-major, so token ``i`` belongs to latent frame
``i // tokens_per_frame``, where ``tokens_per_frame`` is the token grid's ``H × W``.
"""

from __future__ import annotations

import torch

from ...core.processors import ProcessorSwap, ProcessorWrapper, wrap_processor
from ...families import family_for

__all__ = ["BlockCausalState", "block_causal_mask", "apply_block_causal", "remove_block_causal", "has_block_causal",
           "block_causal_state"]

_ATTR = "_vidaccel_block_causal"


class BlockCausalState:
    """Geometry of the current forward pass (set by a pre-hook) and a cache of masks; ``reset()``
    forgets the cache."""

    def __init__(self, chunk_frames: int):
        self.chunk_frames = chunk_frames
        self.tokens_per_frame: int | None = None
        self._masks: dict[tuple[int, int, str], torch.Tensor] = {}

    def reset(self) -> None:
        self._masks.clear()
        self.tokens_per_frame = None

    def mask(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Bool [seq_len, seq_len] mask, True where query token i may attend to key token j."""
        if self.tokens_per_frame is None:
            raise RuntimeError("block-causal mask requested outside a transformer forward (no geometry set)")
        key = (seq_len, self.tokens_per_frame, str(device))
        m = self._masks.get(key)
        if m is None:
            m = block_causal_mask(seq_len, self.tokens_per_frame, self.chunk_frames, device=device)
            self._masks[key] = m
        return m


def block_causal_mask(
    seq_len: int, tokens_per_frame: int, chunk_frames: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Bool [seq_len, seq_len]: token i (chunk c_i) may attend to token j (chunk c_j) iff c_j <= c_i."""
    if seq_len % tokens_per_frame:
        raise ValueError(f"seq_len={seq_len} is not a multiple of tokens_per_frame={tokens_per_frame}")
    chunk = torch.arange(seq_len, device=device) // (tokens_per_frame * chunk_frames)
    return chunk[None, :] <= chunk[:, None]


class _BlockCausalProcessor(ProcessorWrapper):
    """The model's own self-attention processor, called with a block-causal mask."""

    def __init__(self, inner, layer: int, state: BlockCausalState):
        super().__init__(inner, layer)
        self.state = state

    def __call__(self, attn, *args, **kwargs):
        call = self.bind(attn, *args, **kwargs)
        if call.get("encoder_hidden_states") is not None:  # only meant for self-attention
            return self.inner(attn, *args, **kwargs)
        hidden_states = call["hidden_states"]
        mask = self.state.mask(hidden_states.shape[1], hidden_states.device)
        if call.get("attention_mask") is not None:
            mask = mask & call["attention_mask"].bool()
        call["attention_mask"] = mask
        del call["self"], call["attn"]
        return self.inner(attn, **call)


def apply_block_causal(transformer: torch.nn.Module, chunk_frames: int) -> BlockCausalState:
    """Make every self-attention of ``transformer`` block-causal over chunks of ``chunk_frames`` latent frames.

    Idempotent per model: a second call replaces the first. Undo with :func:`remove_block_causal`.
    """
    remove_block_causal(transformer)
    family = family_for(transformer)
    state = BlockCausalState(chunk_frames)
    patch_t = family.patch_size(transformer)[0]

    def pre_hook(module, args, kwargs):
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        frames = hidden_states.shape[family.latent_axes[0]]
        if frames % patch_t:
            raise ValueError(f"latent frames {frames} not divisible by the temporal patch size {patch_t}")
        _, h, w = family.input_grid(module, hidden_states)
        state.tokens_per_frame = h * w
        return None

    handle = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    swap = ProcessorSwap(family, transformer, lambda p, i: wrap_processor(_BlockCausalProcessor, p, i, state=state))
    swap.attach()
    object.__setattr__(transformer, _ATTR, (handle, swap, state))
    return state


def block_causal_state(transformer: torch.nn.Module) -> BlockCausalState:
    """The :class:`BlockCausalState` of a transformer :func:`apply_block_causal` was applied to."""
    entry = transformer.__dict__.get(_ATTR)
    if entry is None:
        raise ValueError("block_causal_state: apply_block_causal was not applied to this transformer")
    return entry[2]


def has_block_causal(transformer: torch.nn.Module) -> bool:
    return transformer.__dict__.get(_ATTR) is not None


def remove_block_causal(transformer: torch.nn.Module) -> None:
    """Undo :func:`apply_block_causal` (no-op if it was not applied)."""
    entry = transformer.__dict__.pop(_ATTR, None)
    if entry is None:
        return
    handle, swap, _ = entry
    handle.remove()
    swap.detach()
