"""One table of facts about the model families vidaccel supports.

Every technique asks this table where the transformer blocks are, where self- and cross-attention live,
whether text tokens share the self-attention sequence, how classifier-free guidance is run and what the
latent geometry is. Nothing else in vidaccel special-cases a model class.

| family    | diffusers class                  | blocks               | text in self-attn | CFG                              |
|-----------|----------------------------------|----------------------|-------------------|----------------------------------|
| wan       | ``WanTransformer3DModel``        | ``blocks``           | no (``attn2``)    | two calls, contexts cond/uncond  |
| cogvideox | ``CogVideoXTransformer3DModel``  | ``transformer_blocks`` | yes, text first | one batched call, cond_uncond    |

Wan 2.2 A14B pipelines carry a second expert in ``transformer_2``; both experts share the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

__all__ = ["ModelSpec", "MODEL_SPECS", "spec_for", "pipeline_transformers", "supported_model_classes"]


@dataclass(frozen=True)
class ModelSpec:
    """Where things are inside one transformer family.

    Attributes:
        family: short family name (``"wan"``, ``"cogvideox"``).
        model_class: diffusers class name of the transformer.
        blocks_attr: attribute holding the ``nn.ModuleList`` of transformer blocks.
        self_attn_attr: attribute of a block holding its self-attention module.
        cross_attn_attr: attribute of a block holding its cross-attention module, or ``None`` when text is
            concatenated into the self-attention sequence.
        text_in_sequence: text tokens are a prefix of the self-attention sequence (CogVideoX).
        cfg_style: ``"sequential"`` (one transformer call per CFG branch, each inside
            ``cache_context("cond")`` / ``cache_context("uncond")``) or ``"batched"`` (one call on a
            batch holding both branches, inside ``cache_context("cond_uncond")``).
        cache_contexts: names of the cache contexts the pipelines open.
        block_carries: the block inputs a block updates and returns, in order (Wan: the video tokens;
            CogVideoX: video and text tokens). A block returns one tensor when this has one name, else a tuple.
        latent_axes: axes of (frames, height, width) in the transformer's ``hidden_states`` input
            (Wan ``[B, C, F, H, W]``; CogVideoX ``[B, F, C, H, W]``).
        vae_temporal: pixel frames per latent frame (after the first one).
        vae_spatial: pixels per latent pixel.
        fps: frame rate the family's videos are made for (Wan 16, CogVideoX 8).
    """

    family: str
    model_class: str
    blocks_attr: str
    self_attn_attr: str
    cross_attn_attr: str | None
    text_in_sequence: bool
    cfg_style: str
    cache_contexts: tuple[str, ...]
    block_carries: tuple[str, ...] = ("hidden_states",)
    latent_axes: tuple[int, int, int] = (2, 3, 4)
    vae_temporal: int = 4
    vae_spatial: int = 8
    fps: int = 16

    # -- access -------------------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The transformer blocks of ``model`` in execution order."""
        return getattr(model, self.blocks_attr)

    def self_attentions(self, model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
        """``(layer_index, attention_module)`` for every block's self-attention."""
        for i, block in enumerate(self.blocks(model)):
            yield i, getattr(block, self.self_attn_attr)

    def patch_size(self, model: nn.Module) -> tuple[int, int, int]:
        """Transformer patch size as ``(t, h, w)`` in latent pixels."""
        cfg = model.config
        if self.family == "cogvideox":
            return (cfg.patch_size_t or 1, cfg.patch_size, cfg.patch_size)
        return tuple(cfg.patch_size)

    def modulated_input(self, block: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                        temb: torch.Tensor) -> torch.Tensor:
        """The timestep-modulated input of ``block``'s self-attention (what TeaCache-style indicators watch).

        Wan: ``norm1(x) * (1 + scale_msa) + shift_msa``; CogVideoX: the video part of ``norm1(x, text, temb)``.
        """
        if self.family == "wan":
            table = block.scale_shift_table
            if temb.ndim == 4:  # Wan 2.2 TI2V: per-token modulation (B, L, 6, D)
                shift, scale = (table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]
                shift, scale = shift.squeeze(2), scale.squeeze(2)
            else:
                shift, scale = (table + temb.float()).chunk(6, dim=1)[:2]
            return block.norm1(hidden_states.float()) * (1 + scale) + shift
        if self.family == "cogvideox":
            return block.norm1(hidden_states, encoder_hidden_states, temb)[0]
        raise NotImplementedError(f"no modulated input known for family {self.family!r}")

    # -- geometry -----------------------------------------------------------------------------------
    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(frames, height, width)`` for a video of ``num_frames`` pixel frames of ``height×width``."""
        return ((num_frames - 1) // self.vae_temporal + 1, height // self.vae_spatial, width // self.vae_spatial)

    def token_grid(self, model: nn.Module, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Video-token grid ``(T, H, W)`` the transformer sees for a latent of ``(frames, height, width)``.

        CogVideoX 1.5 pads latent frames up to a multiple of ``patch_size_t``, as its pipeline does.
        """
        pt, ph, pw = self.patch_size(model)
        f, h, w = latent_shape
        return (-(-f // pt), h // ph, w // pw)


MODEL_SPECS: dict[str, ModelSpec] = {
    "WanTransformer3DModel": ModelSpec(
        family="wan",
        model_class="WanTransformer3DModel",
        blocks_attr="blocks",
        self_attn_attr="attn1",
        cross_attn_attr="attn2",
        text_in_sequence=False,
        cfg_style="sequential",
        cache_contexts=("cond", "uncond"),
    ),
    "CogVideoXTransformer3DModel": ModelSpec(
        family="cogvideox",
        model_class="CogVideoXTransformer3DModel",
        blocks_attr="transformer_blocks",
        self_attn_attr="attn1",
        cross_attn_attr=None,
        text_in_sequence=True,
        cfg_style="batched",
        cache_contexts=("cond_uncond",),
        block_carries=("hidden_states", "encoder_hidden_states"),
        latent_axes=(1, 3, 4),
        fps=8,
    ),
}

# Pipeline attributes that may hold a transformer, in the order the pipeline uses them
# (Wan 2.2: ``transformer`` is the high-noise expert, ``transformer_2`` the low-noise one).
EXPERT_ATTRS: tuple[str, ...] = ("transformer", "transformer_2")


def supported_model_classes() -> list[str]:
    return sorted(MODEL_SPECS)


def spec_for(model: nn.Module) -> ModelSpec:
    """The spec of a transformer; raises ``ValueError`` naming the class and the supported ones."""
    for cls in type(model).__mro__:
        spec = MODEL_SPECS.get(cls.__name__)
        if spec is not None:
            return spec
    raise ValueError(
        f"model class {type(model).__name__!r} is not supported by vidaccel; "
        f"supported transformer classes: {', '.join(supported_model_classes())}"
    )


def pipeline_transformers(target) -> list[tuple[str, nn.Module]]:
    """``(role, transformer)`` pairs of a pipeline (both Wan 2.2 experts) or ``[("transformer", model)]``.

    Raises ``ValueError`` when ``target`` is neither a supported transformer nor a pipeline holding one.
    """
    if isinstance(target, nn.Module):
        spec_for(target)
        return [("transformer", target)]
    found = [(attr, getattr(target, attr)) for attr in EXPERT_ATTRS if isinstance(getattr(target, attr, None), nn.Module)]
    if not found:
        raise ValueError(
            f"target of type {type(target).__name__!r} is neither a supported transformer "
            f"({', '.join(supported_model_classes())}) nor a pipeline with a `transformer` attribute"
        )
    for _, model in found:
        spec_for(model)
    return found


def module_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype
