"""What every model family module provides: :class:`ModelFamily`, plus the shared :class:`Rotary` and
:class:`SelfAttentionInputs` types its attention helpers return.

A family module (``wan.py``, ``cogvideox.py``) is the only code in vidaccel that knows a family's internals:
where blocks and attention modules live, how an attention module computes q/k/v and applies RoPE, whether
text tokens share the self-attention sequence, the timestep-modulated input feature caches watch, which
layers are too fragile to quantize, the token grid and the VAE factors. Techniques ask these methods; none
of them branches on a model class. Adding a family is one new module plus its row in the test matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["ModelFamily", "Rotary", "SelfAttentionInputs", "FragileLayer", "FRAGILE_KINDS"]

#: Kinds of fragile layer a family names (quantization keeps them in high precision by default).
FRAGILE_KINDS = ("patch", "time", "text", "image", "output")


@dataclass(frozen=True)
class FragileLayer:
    """A layer group quantization keeps in high precision by default.

    Attributes:
        kind: one of :data:`FRAGILE_KINDS`.
        pattern: regex searched in qualified module names (``"blocks.3.attn1.to_q"``).
        reason: why it is fragile (shown in ``vidaccel.quant_report``).
    """

    kind: str
    pattern: str
    reason: str


class Rotary:
    """RoPE as rotations of interleaved pairs, for tokens ``offset:`` of a ``[B, L, H, F]`` tensor.

    ``cos`` / ``sin`` hold one angle per pair, ``[1, L - offset, 1, D / 2]``. ``F`` may be any multiple of the
    head dim ``D`` (each ``D``-sized group of features is rotated alike, which is how linear attention rotates
    its feature maps); leading ``offset`` tokens (CogVideoX's text) are left as they are. Computed in fp32 and
    cast back, as diffusers' processors do, so a rotated q/k is bit-identical to the model's own.
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, offset: int = 0):
        self.cos = cos
        self.sin = sin
        self.offset = offset

    def __call__(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x`` rotated, in ``dtype`` (default: ``x``'s own)."""
        dtype = dtype or x.dtype
        body = x[:, self.offset:] if self.offset else x
        half = self.cos.shape[-1]
        shape = body.shape
        pairs = body.float().reshape(*shape[:-1], shape[-1] // (2 * half), half, 2)
        cos, sin = self.cos.unsqueeze(-2).float(), self.sin.unsqueeze(-2).float()
        x1, x2 = pairs[..., 0], pairs[..., 1]
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).reshape(shape).to(dtype)
        return torch.cat([x[:, :self.offset].to(dtype), out], dim=1) if self.offset else out

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[offset + L', D / 2]`` in the tables' dtype, one row per token of the whole
        sequence: the ``offset`` leading tokens get the identity rotation (``cos = 1``, ``sin = 0``). The form
        :func:`vidaccel.kernels.linear_attention` takes as ``rope=`` (its fused kernels rotate in registers);
        rotating with them (:func:`~vidaccel.kernels.linear_attention.wrapper.rope_rotate`) gives this object's
        numbers."""
        half = self.cos.shape[-1]
        cos, sin = self.cos.reshape(-1, half), self.sin.reshape(-1, half)
        if self.offset:
            cos = torch.cat([cos.new_ones(self.offset, half), cos])
            sin = torch.cat([sin.new_zeros(self.offset, half), sin])
        return cos, sin


@dataclass
class SelfAttentionInputs:
    """q, k, v of one self-attention call, as the model's own processor computes them before RoPE.

    Attributes:
        q, k, v: ``[B, L, H, D]`` after the q/k norms; ``L`` counts text tokens first when the family puts
            text in the sequence (``text_len`` of them).
        rotary: the call's RoPE (applies to the video tokens), or ``None`` when the model has none.
        text_len: leading text tokens in the sequence (0 for families with cross-attention).
        dtype: dtype of the call's hidden states (the output is cast back to it).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    rotary: Rotary | None
    text_len: int
    dtype: torch.dtype

    def rotated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k with RoPE applied (as the model's own attention sees them)."""
        if self.rotary is None:
            return self.q, self.k
        return self.rotary(self.q), self.rotary(self.k)


@dataclass(frozen=True)
class ModelFamily:
    """Facts about one family of diffusers video transformers, and the only code touching its internals.

    Attributes:
        name: short family name (``"wan"``, ``"cogvideox"``).
        model_class: diffusers class name of the transformer.
        blocks_attr: attribute holding the ``nn.ModuleList`` of transformer blocks.
        self_attn_attr: attribute of a block holding its self-attention module.
        cross_attn_attr: attribute of a block holding its cross-attention module, or ``None`` when text is
            concatenated into the self-attention sequence.
        cfg_style: ``"sequential"`` (one transformer call per CFG branch, each inside
            ``cache_context("cond")`` / ``cache_context("uncond")``) or ``"batched"`` (one call on a batch
            holding both branches, inside ``cache_context("cond_uncond")``).
        cache_contexts: names of the cache contexts the pipelines open.
        block_carries: the block inputs a block updates and returns, in order. A block returns one tensor
            when this has one name, else a tuple.
        latent_axes: axes of (frames, height, width) in the transformer's ``hidden_states`` input.
        vae_temporal: pixel frames per latent frame (after the first one).
        vae_spatial: pixels per latent pixel.
        fps: frame rate the family's videos are made for.
        fragile_layers: layer groups quantization keeps in high precision by default.
        self_attn_projections: groups of the self-attention module's input projections (attribute names) that
            one call applies to one and the same input tensor (q, k and v of the hidden states).
        cross_attn_projections: the same for the cross-attention module (k and v of the text; the image keys).
    """

    name: str
    model_class: str
    blocks_attr: str
    self_attn_attr: str
    cross_attn_attr: str | None
    cfg_style: str
    cache_contexts: tuple[str, ...]
    block_carries: tuple[str, ...] = ("hidden_states",)
    latent_axes: tuple[int, int, int] = (2, 3, 4)
    vae_temporal: int = 4
    vae_spatial: int = 8
    fps: int = 16
    fragile_layers: tuple[FragileLayer, ...] = ()
    self_attn_projections: tuple[tuple[str, ...], ...] = (("to_q", "to_k", "to_v"),)
    cross_attn_projections: tuple[tuple[str, ...], ...] = ()

    # -- where things are -------------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The transformer blocks of ``model`` in execution order."""
        return getattr(model, self.blocks_attr)

    def self_attentions(self, model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
        """``(layer_index, attention_module)`` for every block's self-attention."""
        for i, block in enumerate(self.blocks(model)):
            yield i, getattr(block, self.self_attn_attr)

    def cross_attentions(self, model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
        """``(layer_index, attention_module)`` for every block's cross-attention (none for in-sequence text)."""
        if self.cross_attn_attr is None:
            return
        for i, block in enumerate(self.blocks(model)):
            yield i, getattr(block, self.cross_attn_attr)

    def attention_input_projections(self, model: nn.Module) -> list[tuple[str, ...]]:
        """Qualified names (``"blocks.0.attn1.to_q"``) of the linear layers that one attention call applies to one
        and the same input tensor, one tuple per (attention module, input), in execution order: what FP8
        quantizes once for all of them. Projections a module lacks (no image keys, fused ``to_qkv``) are left
        out."""
        out = []
        for i, block in enumerate(self.blocks(model)):
            for attr, groups in ((self.self_attn_attr, self.self_attn_projections),
                                 (self.cross_attn_attr, self.cross_attn_projections)):
                attn = getattr(block, attr) if attr is not None else None
                for group in groups if attn is not None else ():
                    names = tuple(f"{self.blocks_attr}.{i}.{attr}.{p}" for p in group
                                  if isinstance(getattr(attn, p, None), nn.Module))
                    if names:
                        out.append(names)
        return out

    @property
    def text_in_sequence(self) -> bool:
        """Text tokens are a prefix of the self-attention sequence (no cross-attention)."""
        return self.cross_attn_attr is None

    # -- geometry -----------------------------------------------------------------------------------------
    def patch_size(self, model: nn.Module) -> tuple[int, int, int]:
        """Transformer patch size as ``(t, h, w)`` in latent pixels."""
        raise NotImplementedError

    def vae_factors(self, pipeline=None) -> tuple[int, int]:
        """``(temporal, spatial)``: pixel frames per latent frame and pixels per latent pixel of ``pipeline``'s
        VAE (its own ``vae_scale_factor_temporal`` / ``_spatial`` where it has them: Wan 2.2 TI2V's VAE
        compresses space 16×), else the family's defaults."""
        temporal = getattr(pipeline, "vae_scale_factor_temporal", None) or self.vae_temporal
        spatial = getattr(pipeline, "vae_scale_factor_spatial", None) or self.vae_spatial
        return int(temporal), int(spatial)

    def latent_shape(self, num_frames: int, height: int, width: int, pipeline=None) -> tuple[int, int, int]:
        """Latent ``(frames, height, width)`` for a video of ``num_frames`` pixel frames of ``height×width``."""
        temporal, spatial = self.vae_factors(pipeline)
        return (self.latent_frames(num_frames, pipeline), height // spatial, width // spatial)

    def latent_frames(self, pixel_frames: int, pipeline=None) -> int:
        """Latent frames that cover ``pixel_frames`` pixel frames (the first latent frame holds one)."""
        return -(-(pixel_frames - 1) // self.vae_factors(pipeline)[0]) + 1

    def first_pixel_frame(self, latent_frame: int, pipeline=None) -> int:
        """Index of the first pixel frame latent frame ``latent_frame`` decodes to."""
        return 0 if latent_frame == 0 else 1 + (latent_frame - 1) * self.vae_factors(pipeline)[0]

    def token_grid(self, model: nn.Module, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Video-token grid ``(T, H, W)`` the transformer sees for a latent of ``(frames, height, width)``."""
        pt, ph, pw = self.patch_size(model)
        f, h, w = latent_shape
        return (-(-f // pt), h // ph, w // pw)

    def token_grid_limit(self, model: nn.Module) -> tuple[int | None, int | None, int | None]:
        """The largest token grid ``(T, H, W)`` the transformer's position encoding covers (``None``: no limit)."""
        return (None, None, None)

    def input_grid(self, model: nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """Token grid of a transformer call's latent ``hidden_states`` input."""
        return self.token_grid(model, tuple(hidden_states.shape[a] for a in self.latent_axes))

    # -- attention ---------------------------------------------------------------------------------------
    def self_attention_inputs(self, attn: nn.Module, call: dict[str, Any]) -> SelfAttentionInputs | None:
        """q/k/v (+ RoPE) of a call of ``attn``'s processor, given the call's arguments by name, exactly as the
        model's own processor computes them; ``None`` when the call is not a plain self-attention (a
        cross-attention, or one with extra image keys)."""
        raise NotImplementedError

    def attention_output(self, attn: nn.Module, out: torch.Tensor, inputs: SelfAttentionInputs) -> Any:
        """Turn the attention result ``out: [B, L, H, D]`` into what the model's processor returns."""
        raise NotImplementedError

    # -- caching ----------------------------------------------------------------------------------------
    def modulated_input(self, block: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                        temb: torch.Tensor) -> torch.Tensor:
        """The timestep-modulated input of ``block``'s self-attention (what TeaCache-style indicators watch)."""
        raise NotImplementedError

    # -- context parallelism -----------------------------------------------------------------------------
    def cp_plan(self, model: nn.Module) -> dict | None:
        """diffusers' context-parallel plan for ``model`` (which inputs each rank splits along the token sequence,
        which output is gathered back), or ``None`` when the family has none: the model's own ``_cp_plan``."""
        return getattr(model, "_cp_plan", None)

    # -- frame merging --------------------------------------------------------------------------------
    def frame_position_hooks(self, model: nn.Module, current: Callable[[], tuple[torch.Tensor, int] | None]) -> list:
        """Hooks that let a transformer call hold only some token frames of a video and still encode each at its
        own temporal place (frame merging: fewer frames through the model, none moved in time).

        ``current()`` is asked at every call: ``None`` leaves the call alone; ``(frames, total)`` says the call's
        latent holds the token frames ``frames`` (an ascending ``LongTensor``) of a grid of ``total`` token frames,
        and the model's positional encoding (RoPE, or added position embeddings) is made that of those frames in
        the full grid. Returns removable handles. Raises ``ValueError`` when the model's positions cannot be
        given per frame.
        """
        raise ValueError(f"{self.model_class} cannot encode merged frames at their own temporal positions")

    # -- long video -----------------------------------------------------------------------------------
    def rope_table(self, model: nn.Module, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE ``(cos, sin)`` per latent frame position ``0..frames-1`` of a ``height×width`` latent, each
        ``[frames, tokens_per_frame, D / 2]``, for attention over a cache of frames (long video)."""
        raise ValueError(f"{self.model_class} has no frame-indexed RoPE table: rolling-KV long video supports "
                         "Wan transformers only")

    def rope_frame_limit(self, model: nn.Module) -> int:
        """The largest number of latent frame positions :meth:`rope_table` can give."""
        raise ValueError(f"{self.model_class} has no frame-indexed RoPE table")

    def streaming_decoder(self, vae):
        """A decoder turning latents into pixels chunk by chunk (long video)."""
        raise ValueError(f"{type(vae).__name__} cannot decode chunk by chunk: long video supports the Wan VAE only")
