"""Block-causal attention for ``WanTransformer3DModel`` and the chunk-by-chunk AR generation loop.

A video of ``F`` latent frames is split into chunks of ``chunk_frames`` latent frames. With
:func:`apply_block_causal`, tokens of chunk ``c`` attend (self-attention, ``attn1``) only to tokens
of chunks ``<= c``; cross-attention to the text is unchanged. Per-token timesteps
(``timestep`` of shape ``(B, seq_len)``, diffusers' Wan 2.2 path) let each chunk carry its own noise
level (diffusion forcing, Chen et al. 2024, https://arxiv.org/abs/2407.01392).

Token order is the transformer's patch order: frame-major, so token ``i`` belongs to latent frame
``i // tokens_per_frame``, where ``tokens_per_frame = (H / p_h) * (W / p_w)`` of the latent.

:func:`generate_ar_recompute` is the simple AR loop: every new chunk is denoised while the
(clean) history window is recomputed through the whole transformer at every step; no KV cache.

Example::

    >>> from vidaccel.models.causal import load_shapes_ar, generate_ar_recompute
    >>> pipe = load_shapes_ar()
    >>> video = generate_ar_recompute(pipe, "a red circle moving right on a black background", num_chunks=9)
    >>> video.shape  # [F, H, W, 3] float in [0, 1]; F = 1 + 4 * (chunk_frames * num_chunks - 1)
    (69, 128, 128, 3)
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CAUSAL_CONFIG_NAME = "causal_config.json"
_HOOK_ATTR = "_vidaccel_block_causal"


@dataclass
class CausalConfig:
    """Settings of a block-causal Wan model (stored as ``causal_config.json`` next to the pipeline).

    Attributes:
        chunk_frames: latent frames per chunk (the first chunk's first latent frame encodes 1 pixel
            frame, every other latent frame 4 pixel frames).
        window_frames: most latent frames the model sees at once (history + the new chunk);
            a multiple of ``chunk_frames``.
        context_noise: flow-matching sigma of the noise added to history latents at generation
            (the model was trained with history sigmas in [0, 0.05]).
        max_sequence_length: text tokens (zero-padded) used at training.
    """

    chunk_frames: int = 2
    window_frames: int = 6
    context_noise: float = 0.02
    max_sequence_length: int = 32

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ValueError(f"CausalConfig.chunk_frames={self.chunk_frames}; allowed: >= 1")
        if self.window_frames < 2 * self.chunk_frames or self.window_frames % self.chunk_frames:
            raise ValueError(
                f"CausalConfig.window_frames={self.window_frames}; allowed: a multiple of chunk_frames="
                f"{self.chunk_frames} that is >= {2 * self.chunk_frames}"
            )
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"CausalConfig.context_noise={self.context_noise}; allowed: [0, 1)")

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CAUSAL_CONFIG_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "CausalConfig":
        path = Path(folder) / CAUSAL_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {folder} is not a block-causal (shapes-ar) model folder")
        return cls(**json.loads(path.read_text()))


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


class BlockCausalAttnProcessor:
    """Self-attention processor that calls diffusers' ``WanAttnProcessor`` with a block-causal mask."""

    def __init__(self, state: BlockCausalState):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        self.state = state
        self.inner = WanAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None:  # only meant for self-attention
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        mask = self.state.mask(hidden_states.shape[1], hidden_states.device)
        if attention_mask is not None:
            mask = mask & attention_mask.bool()
        return self.inner(attn, hidden_states, None, mask, rotary_emb)


def apply_block_causal(transformer: torch.nn.Module, chunk_frames: int) -> BlockCausalState:
    """Make every ``attn1`` of a ``WanTransformer3DModel`` block-causal over chunks of latent frames.

    Idempotent per model: a second call replaces the first. Undo with :func:`remove_block_causal`.
    """
    remove_block_causal(transformer)
    state = BlockCausalState(chunk_frames)
    p_t, p_h, p_w = transformer.config.patch_size

    def pre_hook(module, args, kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        _, _, f, h, w = hs.shape
        if f % p_t:
            raise ValueError(f"latent frames {f} not divisible by patch_size[0]={p_t}")
        state.tokens_per_frame = (h // p_h) * (w // p_w)
        return None

    handle = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    old = {i: b.attn1.processor for i, b in enumerate(transformer.blocks)}
    proc = BlockCausalAttnProcessor(state)
    for b in transformer.blocks:
        b.attn1.set_processor(proc)
    setattr(transformer, _HOOK_ATTR, (handle, old, state))
    return state


def remove_block_causal(transformer: torch.nn.Module) -> None:
    """Undo :func:`apply_block_causal` (no-op if it was not applied)."""
    entry = getattr(transformer, _HOOK_ATTR, None)
    if entry is None:
        return
    handle, old, _ = entry
    handle.remove()
    for i, b in enumerate(transformer.blocks):
        b.attn1.set_processor(old[i])
    delattr(transformer, _HOOK_ATTR)


def load_shapes_ar(path: str | Path | None = None, *, dtype: torch.dtype = torch.float32):
    """Load the shipped ``shapes-ar`` WanPipeline (offline) with block-causal attention applied.

    Returns:
        a ``WanPipeline`` whose ``causal_config`` attribute is the :class:`CausalConfig`.
    """
    from diffusers import WanPipeline

    from vidaccel.models import embedded_path

    folder = Path(path) if path is not None else embedded_path("shapes-ar")
    cfg = CausalConfig.load(folder)
    pipe = WanPipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    apply_block_causal(pipe.transformer, cfg.chunk_frames)
    pipe.causal_config = cfg
    return pipe


def chunk_pixel_bounds(num_chunks: int, chunk_frames: int, temporal_factor: int = 4) -> list[tuple[int, int]]:
    """Pixel-frame ranges [start, stop) of each chunk after decoding with the causal Wan VAE.

    Latent frame 0 decodes to 1 pixel frame, every later latent frame to ``temporal_factor``.
    """
    bounds = []
    for c in range(num_chunks):
        a_lat, b_lat = c * chunk_frames, (c + 1) * chunk_frames
        a = 0 if a_lat == 0 else 1 + (a_lat - 1) * temporal_factor
        b = 1 + (b_lat - 1) * temporal_factor
        bounds.append((a, b))
    return bounds


def _per_token_timesteps(sigmas_per_frame: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """[B, F] sigmas -> [B, F * tokens_per_frame] timesteps (sigma * 1000)."""
    return (sigmas_per_frame * 1000.0).repeat_interleave(tokens_per_frame, dim=1)


@torch.no_grad()
def generate_ar_recompute(
    pipe: Any,
    prompt: str,
    num_chunks: int,
    *,
    height: int = 128,
    width: int = 128,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    negative_prompt: str = "",
    seed: int = 0,
    causal_config: CausalConfig | None = None,
    max_sequence_length: int | None = None,
    output_type: str = "np",
    return_latents: bool = False,
):
    """Generate ``num_chunks`` chunks one after another, recomputing the history window each step.

    Each chunk starts from noise and is denoised with a fresh copy of ``pipe.scheduler``; the last
    ``window_frames - chunk_frames`` latent frames of history (noised to ``context_noise``) are fed
    with it, at per-token timesteps, and their positions restart at 0 in every window. The whole
    latent sequence is decoded once at the end.

    Args:
        pipe: a WanPipeline with a block-causal transformer (see :func:`load_shapes_ar`).
        num_chunks: chunks to generate, the first included.
        max_sequence_length: text length (default: the model's ``causal_config``).

    Returns:
        float np array [F, H, W, 3] in [0, 1] with ``F = 1 + 4 * (num_chunks * chunk_frames - 1)``
        (and the normalised latents [1, C, num_chunks * chunk_frames, h, w] if ``return_latents``).
    """
    cfg = causal_config or getattr(pipe, "causal_config", None)
    if cfg is None:
        raise ValueError("pipe has no causal_config; load it with load_shapes_ar() or pass causal_config=")
    if num_chunks < 1:
        raise ValueError(f"num_chunks={num_chunks}; allowed: >= 1")
    transformer = pipe.transformer
    if getattr(transformer, _HOOK_ATTR, None) is None:
        apply_block_causal(transformer, cfg.chunk_frames)
    device = pipe._execution_device
    dtype = transformer.dtype
    do_cfg = guidance_scale > 1.0
    cond, uncond = pipe.encode_prompt(
        prompt,
        negative_prompt=negative_prompt,
        do_classifier_free_guidance=do_cfg,
        max_sequence_length=max_sequence_length or cfg.max_sequence_length,
        device=device,
        dtype=dtype,
    )
    sf = pipe.vae_scale_factor_spatial
    p_t, p_h, p_w = transformer.config.patch_size
    h, w = height // sf, width // sf
    tpf = (h // p_h) * (w // p_w)
    C = transformer.config.in_channels
    gen = torch.Generator(device="cpu").manual_seed(seed)
    history = torch.zeros(1, C, 0, h, w, dtype=torch.float32)
    ctx_len = cfg.window_frames - cfg.chunk_frames
    for c in range(num_chunks):
        ctx = history[:, :, -ctx_len:] if history.shape[2] else history
        n_ctx = ctx.shape[2]
        if n_ctx and cfg.context_noise > 0:
            eps = torch.randn(ctx.shape, generator=gen)
            ctx = (1 - cfg.context_noise) * ctx + cfg.context_noise * eps
        x = torch.randn(1, C, cfg.chunk_frames, h, w, generator=gen)
        sched = copy.deepcopy(pipe.scheduler)
        sched.set_timesteps(num_inference_steps, device="cpu")
        for t in sched.timesteps:
            sigma_new = float(t) / sched.config.num_train_timesteps
            sig = torch.tensor([[cfg.context_noise] * n_ctx + [sigma_new] * cfg.chunk_frames])
            ts = _per_token_timesteps(sig, tpf).to(device)
            inp = torch.cat([ctx, x], dim=2).to(device=device, dtype=dtype)
            v = transformer(hidden_states=inp, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
            if do_cfg:
                vu = transformer(hidden_states=inp, timestep=ts, encoder_hidden_states=uncond, return_dict=False)[0]
                v = vu + guidance_scale * (v - vu)
            v = v[:, :, n_ctx:].float().cpu()
            x = sched.step(v, t, x, return_dict=False)[0]
        history = torch.cat([history, x], dim=2)
    video = decode_latents(pipe, history, output_type=output_type)
    return (video, history) if return_latents else video


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor, *, output_type: str = "np"):
    """Decode normalised latents [1, C, F_lat, h, w] with the pipeline's VAE -> [F, H, W, 3] in [0, 1]."""
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    z = (latents.float() * std + mean).to(device=vae.device, dtype=vae.dtype)
    video = vae.decode(z, return_dict=False)[0]
    out = pipe.video_processor.postprocess_video(video, output_type=output_type)
    if output_type == "np":
        return np.asarray(out[0])
    return out[0]
