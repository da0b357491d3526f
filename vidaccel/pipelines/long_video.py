"""Rolling-KV-cache autoregressive long-video generation for block-causal Wan models.

A video is generated chunk by chunk (``chunk_frames`` latent frames each). Every chunk is denoised with
its self-attention reading the keys/values of the visible history from a :class:`~vidaccel.accel.kv_cache.RollingKVCache`
(sink frames + the most recent frames); once clean, the chunk is noised to the model's context level and
passed once more at that timestep to write its own keys/values into the cache (the "commit" pass). Memory
and time per chunk are therefore constant, whatever the length.

``use_kv_cache=False`` is the reference: at every denoising step the visible history latents are fed
through the whole transformer again with a block-causal mask (each frame is noised once, when committed,
so both paths see the same history). With a window covering the whole video and no sink or EMA the two
agree to floating-point precision.

Positions: ``positions="relative"`` (default) gives RoPE positions re-based within sink + window
(sink 0..s-1, then the window in order, the chunk after), the same positions the model saw in training
windows, so the length never runs off the RoPE table; keys are cached before RoPE and rotated on read.
``"absolute"`` uses each frame's index since the start (exact for short videos, drifts outside the trained
range on long ones).

Prompt switches (LongLive, arXiv:2509.22622; Anchor Forcing): at a switch the cached history (sink frames
kept as anchors) is re-encoded under the new prompt before the next chunk, so the new prompt takes hold
through the context instead of a hard cut.

Cached-context attention reuse (FlashBlock): with ``reuse_context_attention=True`` the attention of a
chunk's queries over the cached context is computed at the first denoising step of a chunk and reused at the
later ones (merged with the fresh in-chunk attention through their log-sum-exp), recomputing only the
in-chunk part.

Streaming: frames are decoded chunk by chunk by the causal Wan VAE (its temporal cache kept between chunks)
and appended to the mp4 as they come; on Ctrl-C or SIGTERM the file is closed with every finished chunk.

Example::

    from vidaccel.pipelines import LongVideoPipeline
    pipe = LongVideoPipeline.from_embedded()                       # the shipped shapes-ar model
    out = pipe([(0, "a red circle moving right on a black background"),
                (4, "a blue square moving up on a gray background")], seconds=8, output="long.mp4")
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

import diffusers

from ..accel.caching import bypass_cache
from ..accel.kv_cache import RollingKVCache
from ..accel.processors import ProcessorSwap
from ..kernels.attention import flash_attention, merge_attention
from ..specs import spec_for

logger = logging.getLogger(__name__)

__all__ = ["LongVideoPipeline", "LongVideoOutput", "WanStreamingDecoder", "parse_schedule"]


# -- prompt schedules ----------------------------------------------------------------------------------
def parse_schedule(prompt: str | Sequence[tuple[float, str]], total_frames: int, fps: float,
                   unit: str = "seconds") -> list[tuple[int, str]]:
    """``prompt`` or ``[(time, prompt), ...]`` → ``[(pixel_frame, prompt), ...]``, validated.

    Times are seconds (``unit="seconds"``) or pixel frames (``unit="frames"``); they must start at 0, be
    strictly increasing and lie before the end; prompts must be non-empty.
    """
    if isinstance(prompt, str):
        prompt = [(0, prompt)]
    if unit not in ("seconds", "frames"):
        raise ValueError(f"schedule unit={unit!r} is not allowed; use 'seconds' or 'frames'")
    entries = list(prompt)
    if not entries:
        raise ValueError("prompt schedule is empty: give a prompt or [(time, prompt), ...]")
    out: list[tuple[int, str]] = []
    for i, entry in enumerate(entries):
        try:
            when, text = entry
        except (TypeError, ValueError):
            raise ValueError(f"schedule entry {i}={entry!r} is not a (time, prompt) pair") from None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"schedule entry {i} has an empty prompt {text!r}")
        if not isinstance(when, (int, float)) or when < 0:
            raise ValueError(f"schedule entry {i} time={when!r} is not allowed: it must be a number >= 0")
        frame = int(round(when * fps)) if unit == "seconds" else int(when)
        if i == 0 and frame != 0:
            raise ValueError(f"schedule entry 0 time={when!r} is not allowed: the first prompt must start at 0")
        if out and frame <= out[-1][0]:
            raise ValueError(f"schedule entry {i} time={when!r} is not allowed: times must be strictly increasing")
        if frame >= total_frames:
            raise ValueError(f"schedule entry {i} time={when!r} is not allowed: it is at or past the end of the video "
                             f"({total_frames} frames = {total_frames / fps:.2f} s)")
        out.append((frame, text))
    return out


# -- streaming VAE decode --------------------------------------------------------------------------------
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


# -- KV-cached self-attention ------------------------------------------------------------------------------
def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE on ``x: [B, L, H, D]`` with ``cos, sin: [1, L, 1, D]``."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).type_as(x)


@dataclass
class _PassState:
    """What the KV processors of one transformer pass need (set by the pipeline before each pass)."""

    cache: RollingKVCache
    write: bool = False
    frame_start: int = 0
    rope_q: tuple[torch.Tensor, torch.Tensor] | None = None
    rope_k: tuple[torch.Tensor, torch.Tensor] | None = None
    reuse: bool = False            # FlashBlock: reuse the context part of the attention
    reuse_fresh: bool = True       # first step of a chunk: compute and store the context part
    context_parts: dict = field(default_factory=dict)
    context_lengths: dict = field(default_factory=dict)
    context_tokens: int = 0        # tokens attended in the cache, summed over layers (stats)


class KVCachedWanAttnProcessor:
    """Wan self-attention whose keys/values come from a rolling cache plus the current chunk."""

    def __init__(self, state: _PassState, layer: int):
        self.state = state
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        st = self.state
        q, k, v = _get_qkv_projections(attn, hidden_states, None)
        q = attn.norm_q(q).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(k).unflatten(2, (attn.heads, -1))
        v = v.unflatten(2, (attn.heads, -1))
        q_rot = _rotate(q, *st.rope_q)
        k_rot = _rotate(k, *st.rope_q)
        reuse = st.reuse and not st.write and not st.reuse_fresh and self.layer in st.context_parts
        if reuse:  # FlashBlock: the context part of this chunk's attention from its first step
            o_ctx, l_ctx = st.context_parts[self.layer]
            st.context_tokens += st.context_lengths[self.layer]
            o_in, l_in = flash_attention(q_rot, k_rot, v, return_lse=True)
            out = merge_attention(o_ctx, l_ctx, o_in, l_in)[0].type_as(q)
            return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(hidden_states)))
        ck, cv = st.cache.get(self.layer)
        n_ctx = ck.shape[1]
        st.context_tokens += n_ctx
        if n_ctx:
            ck = _rotate(ck.to(k.dtype), *st.rope_k)
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
        out = out.flatten(2, 3).type_as(hidden_states)
        return attn.to_out[1](attn.to_out[0](out))


# -- the pipeline ---------------------------------------------------------------------------------------
@dataclass
class LongVideoOutput:
    """Result of :class:`LongVideoPipeline`.

    Attributes:
        frames: float ``[F, H, W, 3]`` in [0, 1] (``None`` when ``return_frames=False``).
        num_frames: pixel frames produced.
        chunk_seconds: wall time of each chunk (denoise + commit + decode).
        chunk_prompts: prompt used for each chunk.
        peak_memory_mib: peak RSS (CPU) or CUDA memory during the call.
        path: the mp4 written, if any.
        interrupted: the call was stopped (Ctrl-C / SIGTERM) after ``len(chunk_seconds)`` chunks.
    """

    frames: np.ndarray | None
    num_frames: int
    chunk_seconds: list[float]
    chunk_prompts: list[str]
    peak_memory_mib: float | None
    path: str | None = None
    interrupted: bool = False
    stats: dict = field(default_factory=dict)


class LongVideoPipeline(diffusers.WanPipeline):
    """Chunk-by-chunk generation of unbounded videos with a rolling KV cache (module docstring).

    Loads like any Wan pipeline folder that also holds a ``causal_config.json`` (the embedded ``shapes-ar``
    model, or a causal Wan2.1 checkpoint converted with ``vidaccel convert wan-original``).
    """

    causal_config = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from ..models.causal import CausalConfig

        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        folder = Path(os.fspath(pretrained_model_name_or_path))
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(os.fspath(pretrained_model_name_or_path), allow_patterns=["*.json"]))
        pipe.causal_config = CausalConfig.load(folder)
        return pipe

    @classmethod
    def from_embedded(cls, dtype: torch.dtype = torch.float32, device: Any = None):
        """The shipped ``shapes-ar`` model (offline)."""
        from ..models import embedded_path

        pipe = cls.from_pretrained(os.fspath(embedded_path("shapes-ar")), dtype=dtype)
        return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # -- public entry points ---------------------------------------------------------------------------
    def __call__(self, prompt, **kwargs) -> LongVideoOutput:
        """Generate a long video; see :meth:`stream` for the arguments. Returns :class:`LongVideoOutput`.

        Ctrl-C or SIGTERM stop it after the chunk in progress is dropped: the mp4 keeps every finished chunk
        and the returned output has ``interrupted=True``.
        """
        return_frames = kwargs.pop("return_frames", True)
        frames: list[np.ndarray] = []
        result = LongVideoOutput(frames=None, num_frames=0, chunk_seconds=[], chunk_prompts=[], peak_memory_mib=None)
        run = self._run(prompt, result=result, **kwargs)
        try:
            for chunk in run:
                if return_frames:
                    frames.append(chunk)
        except KeyboardInterrupt:
            run.close()  # finalises the mp4 inside the generator
            result.interrupted = True
        result.frames = np.concatenate(frames)[: result.num_frames] if return_frames and frames else None
        return result

    def stream(self, prompt, **kwargs) -> Iterator[np.ndarray]:
        """Yield each chunk's decoded frames (float ``[f, H, W, 3]``) as soon as it is finished.

        Arguments (all keyword): ``num_frames`` or ``seconds`` (+ ``fps``, default 16); ``prompt`` is a string or a
        schedule ``[(time, prompt), ...]`` in ``schedule_unit`` ("seconds" or "frames"); ``chunk_frames``,
        ``window_frames`` (latent frames visible to a chunk, history included), ``sink_frames``, ``ema_decay``;
        ``num_inference_steps`` or explicit ``timesteps``; ``guidance_scale``, ``negative_prompt``, ``seed``,
        ``height``, ``width``; ``use_kv_cache``; ``positions`` ("relative" | "absolute");
        ``reuse_context_attention``; ``context_noise``; ``output`` (mp4 path); ``progress``.
        """
        yield from self._run(prompt, **kwargs)

    # -- the loop ---------------------------------------------------------------------------------------------
    @torch.no_grad()  # a generator: torch re-enters no_grad at every resumption
    def _run(self, prompt, *, num_frames: int | None = None, seconds: float | None = None, fps: float = 16.0,
             schedule_unit: str = "seconds", chunk_frames: int | None = None, window_frames: int | None = None,
             sink_frames: int = 0, num_inference_steps: int | None = None, timesteps: Sequence[float] | None = None,
             guidance_scale: float | None = None, negative_prompt: str | None = None, seed: int = 0,
             height: int | None = None, width: int | None = None, use_kv_cache: bool = True,
             ema_decay: float | None = None, positions: str = "relative", reuse_context_attention: bool = False,
             context_noise: float | None = None, output: str | os.PathLike | None = None, progress: bool = True,
             max_sequence_length: int | None = None, result: "LongVideoOutput | None" = None):
        from ..bench import _reset_peak, peak_memory
        from ..models.causal import _HOOK_ATTR, CausalConfig, apply_block_causal, remove_block_causal

        cc: CausalConfig = self.causal_config or CausalConfig()
        chunk = cc.chunk_frames if chunk_frames is None else chunk_frames
        window = cc.window_frames if window_frames is None else window_frames
        cn = cc.context_noise if context_noise is None else context_noise
        height = height or 128
        width = width or 128
        self._validate(num_frames, seconds, fps, chunk, window, sink_frames, positions, height, width,
                       num_inference_steps, guidance_scale)
        total = num_frames if num_frames is not None else int(round(seconds * fps))
        schedule = parse_schedule(prompt, total, fps, schedule_unit)
        latent_frames = -(-(total - 1) // 4) + 1  # enough latent frames to cover `total` pixel frames
        num_chunks = math.ceil(latent_frames / chunk)
        steps = num_inference_steps or 20
        device = self._execution_device
        # one schedule for every chunk, built (and, for explicit timesteps, validated) before anything starts;
        # each chunk steps a fresh copy of it
        sched_template = self._chunk_scheduler(timesteps, steps, device)
        self._num_timesteps = len(sched_template.timesteps)  # read by step-aware techniques (cache guards)
        guidance = 4.0 if guidance_scale is None else guidance_scale
        do_cfg = guidance > 1.0
        transformer = self.transformer
        dtype = transformer.dtype
        spec = spec_for(transformer)
        sf = self.vae_scale_factor_spatial
        p_t, p_h, p_w = transformer.config.patch_size
        h, w = height // sf, width // sf
        tpf = (h // p_h) * (w // p_w)
        channels = transformer.config.in_channels
        history_cap = window - chunk  # latent frames of history visible to a chunk (sink included)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        msl = max_sequence_length or cc.max_sequence_length

        embeds: dict[str, torch.Tensor] = {}

        def text(p: str) -> torch.Tensor:
            if p not in embeds:
                cond, uncond = self.encode_prompt(p, negative_prompt=negative_prompt or "",
                                                  do_classifier_free_guidance=do_cfg, max_sequence_length=msl,
                                                  device=device, dtype=dtype)
                embeds[p] = torch.cat([cond, uncond]) if do_cfg else cond
            return embeds[p]

        def prompt_at(c: int) -> str:
            first_px = 0 if c == 0 else 1 + (c * chunk - 1) * 4
            return [p for f, p in schedule if f <= first_px][-1]

        batch = 2 if do_cfg else 1
        attn0 = spec.blocks(transformer)[0].attn1
        cache = RollingKVCache(len(spec.blocks(transformer)), batch, attn0.heads,
                               transformer.config.attention_head_dim, tpf, sink_frames=sink_frames,
                               window_frames=history_cap - sink_frames, ema_decay=ema_decay, dtype=dtype,
                               device=device) if use_kv_cache else None
        state = _PassState(cache=cache, reuse=reuse_context_attention) if use_kv_cache else None
        rope_frames = window if positions == "relative" else num_chunks * chunk
        rope_table = self._rope_table(transformer, rope_frames, h, w) if use_kv_cache else None
        swap = None
        had_causal = getattr(transformer, _HOOK_ATTR, None) is not None
        if use_kv_cache:
            remove_block_causal(transformer)
            swap = ProcessorSwap(spec, transformer, lambda p, i: KVCachedWanAttnProcessor(state, i))
            swap.attach()
        elif not had_causal:
            apply_block_causal(transformer, chunk)

        history: dict[int, torch.Tensor] = {}  # visible committed frames, noised: absolute index -> [1, C, 1, h, w]
        decoder = WanStreamingDecoder(self.vae)
        writer = self._open_writer(output, fps) if output else None
        result = result or LongVideoOutput(frames=None, num_frames=0, chunk_seconds=[], chunk_prompts=[],
                                           peak_memory_mib=None)
        result.path = os.fspath(output) if output else None
        chunk_seconds, chunk_prompts = result.chunk_seconds, result.chunk_prompts
        produced = 0
        switches = 0
        self._stop_requested = False
        previous_handler = self._install_sigterm()
        _reset_peak(device)
        from tqdm.auto import tqdm

        bar = tqdm(total=round(total / fps, 2), unit="s", desc="long video", disable=not progress,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s of video [{elapsed}<{remaining}{postfix}]")
        start_all = time.perf_counter()
        try:
            for c in range(num_chunks):
                if self._stop_requested:
                    result.interrupted = True
                    logger.warning("SIGTERM: stopping after %d finished chunks", len(chunk_seconds))
                    break
                t0 = time.perf_counter()
                p = prompt_at(c)
                enc = text(p)
                if c > 0 and p != chunk_prompts[-1] and use_kv_cache:
                    self._recache(state, history, enc, cn, tpf, rope_table, positions, chunk)
                    switches += 1
                chunk_prompts.append(p)
                frame_start = c * chunk
                x = torch.randn(1, channels, chunk, h, w, generator=gen).to(device, torch.float32)
                sched = copy.deepcopy(sched_template)
                if use_kv_cache:
                    self._set_rope(state, rope_table, positions, frame_start, chunk)
                    state.reuse_fresh = True
                    state.context_parts.clear()
                else:
                    visible = self._visible(history, sink_frames, history_cap)
                    ctx = torch.cat([history[a] for a in visible], dim=2) if visible else None
                    n_ctx = len(visible)
                for t in sched.timesteps:
                    if use_kv_cache:
                        inp = x.to(dtype)
                        ts = torch.full((1, chunk * tpf), float(t), device=device)
                    else:
                        inp = torch.cat([ctx, x], dim=2).to(dtype) if ctx is not None else x.to(dtype)
                        ts = torch.cat([torch.full((1, n_ctx * tpf), cn * 1000.0),
                                        torch.full((1, chunk * tpf), float(t))], 1).to(device)
                    pred = self._predict(inp, ts, enc, batch, guidance)
                    if use_kv_cache:
                        state.reuse_fresh = False
                    x = sched.step(pred[:, :, -chunk:].float(), t, x, return_dict=False)[0]
                noised = (1 - cn) * x + cn * torch.randn(x.shape, generator=gen).to(device)
                if use_kv_cache:
                    self._commit(state, noised, enc, cn, tpf, frame_start, batch)
                for i in range(chunk):
                    history[frame_start + i] = noised[:, :, i:i + 1]
                keep = set(self._visible(history, sink_frames, history_cap))
                for a in [a for a in history if a not in keep]:
                    del history[a]  # bounded memory: only what the next chunk can see
                pixels = decoder.decode(x)
                frames = self.video_processor.postprocess_video(pixels, output_type="np")[0]
                frames = frames[: max(0, total - produced)]
                produced += frames.shape[0]
                result.num_frames = produced
                if writer is not None:
                    for frame in frames:
                        writer.append_data((np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8))
                chunk_seconds.append(time.perf_counter() - t0)
                bar.update(min(round(frames.shape[0] / fps, 4), bar.total - bar.n))  # float sums may overshoot
                bar.set_postfix_str(f"{produced / (time.perf_counter() - start_all):.1f} FPS, chunk {c + 1}/{num_chunks}")
                yield frames
        except KeyboardInterrupt:
            result.interrupted = True
            logger.warning("interrupted after %d finished chunks; %s keeps %d frames", len(chunk_seconds),
                           output or "the output", produced)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            self._restore_sigterm(previous_handler)
            if swap is not None:
                swap.detach()
                if had_causal:
                    apply_block_causal(transformer, chunk)
            elif not had_causal:
                remove_block_causal(transformer)
            decoder.reset()
            result.peak_memory_mib = peak_memory(device)
            result.stats = {"kv_cache_mib": cache.nbytes() / 2**20 if cache is not None else 0.0,
                            "context_tokens_attended": state.context_tokens if state else None,
                            "chunks": len(chunk_seconds), "use_kv_cache": use_kv_cache,
                            "prompt_switches_recached": switches}
        return result

    # -- helpers ------------------------------------------------------------------------------------------------
    def _chunk_scheduler(self, timesteps, steps: int, device):
        """The scheduler every chunk starts from: the pipeline's own with ``steps`` steps or, for explicit
        ``timesteps``, a flow-matching Euler step at exactly those timesteps. Few-step schedules of distilled
        causal checkpoints (Self-Forcing, CausVid, LongLive) name their timesteps; the multistep UniPC of the
        base models has no ``timesteps=`` and would shift given sigmas."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if timesteps is None:
            sched = copy.deepcopy(self.scheduler)
            sched.set_timesteps(steps, device=device)
            return sched

        if getattr(self.scheduler.config, "prediction_type", "flow_prediction") != "flow_prediction" and \
                not isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(f"timesteps={list(timesteps)!r} is only allowed with a flow-matching model; this "
                             f"pipeline's scheduler is {type(self.scheduler).__name__} with prediction_type="
                             f"{self.scheduler.config.prediction_type!r}")
        total = self.scheduler.config.num_train_timesteps
        values = [float(t) for t in timesteps]
        if not values or any(not 0 < t <= total for t in values) or any(b >= a for a, b in zip(values, values[1:])):
            raise ValueError(f"timesteps={values!r} is not allowed: a non-empty, strictly decreasing list in "
                             f"(0, {total}]")
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=total, shift=1.0)
        sched.set_timesteps(timesteps=values, sigmas=[t / total for t in values], device=device)
        return sched

    @staticmethod
    def _validate(num_frames, seconds, fps, chunk, window, sink, positions, height, width, steps, guidance):
        if (num_frames is None) == (seconds is None):
            raise ValueError("give exactly one of num_frames= or seconds=")
        if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 1):
            raise ValueError(f"num_frames={num_frames!r} is not allowed: it must be an integer >= 1")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds={seconds!r} is not allowed: it must be > 0")
        if not fps > 0:
            raise ValueError(f"fps={fps!r} is not allowed: it must be > 0")
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk_frames={chunk!r} is not allowed: it must be an integer >= 1")
        if not isinstance(sink, int) or sink < 0:
            raise ValueError(f"sink_frames={sink!r} is not allowed: it must be an integer >= 0")
        if not isinstance(window, int) or window < chunk + sink + 1:
            raise ValueError(f"window_frames={window!r} is not allowed: it must be >= chunk_frames + sink_frames + 1 "
                             f"= {chunk + sink + 1} latent frames (the chunk, the sink and at least one recent frame)")
        if positions not in ("relative", "absolute"):
            raise ValueError(f"positions={positions!r} is not allowed; use 'relative' or 'absolute'")
        for name, value in (("height", height), ("width", width)):
            if value % 16:
                raise ValueError(f"{name}={value} is not allowed: it must be a multiple of 16")
        if steps is not None and steps < 1:
            raise ValueError(f"num_inference_steps={steps} is not allowed: it must be >= 1")
        if guidance is not None and guidance < 0:
            raise ValueError(f"guidance_scale={guidance} is not allowed: it must be >= 0")

    @staticmethod
    def _rope_table(transformer, frames: int, h: int, w: int):
        """Wan RoPE (cos, sin) for latent frames ``0..frames-1``, shaped ``[frames, tokens_per_frame, D]``."""
        limit = transformer.rope.freqs_cos.shape[0]
        if frames > limit:
            raise ValueError(f"positions up to latent frame {frames - 1} exceed the model's RoPE table of {limit} "
                             "positions (rope_max_seq_len); use positions='relative'")
        cos, sin = transformer.rope(torch.zeros(1, 1, frames * transformer.config.patch_size[0], h, w))
        tpf = cos.shape[1] // frames
        return cos.reshape(frames, tpf, -1), sin.reshape(frames, tpf, -1)

    @staticmethod
    def _gather_rope(table, frame_positions: list[int], device):
        cos, sin = table
        limit = cos.shape[0]
        if frame_positions and max(frame_positions) >= limit:
            raise ValueError(f"RoPE position {max(frame_positions)} is outside the table of {limit} frames; "
                             "use positions='relative'")
        index = torch.tensor(frame_positions, dtype=torch.long)
        c = cos[index].reshape(1, -1, 1, cos.shape[-1]).to(device)
        s = sin[index].reshape(1, -1, 1, sin.shape[-1]).to(device)
        return c, s

    def _set_rope(self, state: _PassState, table, positions: str, frame_start: int, frames: int):
        ctx_pos = state.cache.positions(positions)
        q_pos = (list(range(len(ctx_pos), len(ctx_pos) + frames)) if positions == "relative"
                 else list(range(frame_start, frame_start + frames)))
        device = self._execution_device
        state.rope_q = self._gather_rope(table, q_pos, device)
        state.rope_k = self._gather_rope(table, ctx_pos, device)

    def _predict(self, inp, ts, enc, batch, guidance):
        if batch == 2:
            inp = inp.repeat(2, 1, 1, 1, 1)
            ts = ts.repeat(2, 1)
        pred = self.transformer(hidden_states=inp, timestep=ts, encoder_hidden_states=enc, return_dict=False)[0]
        if batch == 2:
            cond, uncond = pred.chunk(2)
            return uncond + guidance * (cond - uncond)
        return pred

    def _commit(self, state: _PassState, noised, enc, cn, tpf, frame_start, batch):
        """Write the noised clean chunk's keys/values into the cache (one pass at the context timestep)."""
        state.write = True
        state.frame_start = frame_start
        try:
            frames = noised.shape[2]
            ts = torch.full((1, frames * tpf), cn * 1000.0, device=noised.device)
            inp = noised.to(self.transformer.dtype)
            if batch == 2:
                inp, ts = inp.repeat(2, 1, 1, 1, 1), ts.repeat(2, 1)
            with bypass_cache(self.transformer):  # a cached (skipped) pass would write no keys/values
                self.transformer(hidden_states=inp, timestep=ts, encoder_hidden_states=enc, return_dict=False)
        finally:
            state.write = False

    def _recache(self, state: _PassState, history: dict[int, torch.Tensor], enc, cn, tpf, table, positions, chunk):
        """Prompt switch: re-encode the cached frames under the new prompt, in temporal order, in runs of
        consecutive frames of at most ``chunk`` (the sink frames are kept as anchors)."""
        cache = state.cache
        frames = cache.positions("absolute")
        cache.reset()
        runs: list[list[int]] = []
        for a in frames:
            if runs and a == runs[-1][-1] + 1 and len(runs[-1]) < chunk:
                runs[-1].append(a)
            else:
                runs.append([a])
        batch = 2 if enc.shape[0] == 2 and cache.batch == 2 else 1
        for run in runs:
            lat = torch.cat([history[a] for a in run], dim=2)
            self._set_rope(state, table, positions, run[0], len(run))
            self._commit(state, lat, enc, cn, tpf, run[0], batch)

    @staticmethod
    def _visible(history: dict[int, torch.Tensor], sink: int, cap: int) -> list[int]:
        """Absolute indices of the history frames a new chunk sees: the sink plus the most recent ones."""
        frames = sorted(history)
        if len(frames) <= cap:
            return frames
        return frames[:sink] + frames[len(frames) - (cap - sink):]

    @staticmethod
    def _open_writer(path, fps):
        import imageio.v2 as imageio

        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                  ffmpeg_log_level="error")

    def _install_sigterm(self):
        """SIGTERM asks the loop to stop after the current chunk (the mp4 is then closed normally)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self._stop_requested = True

        return signal.signal(signal.SIGTERM, handler)

    @staticmethod
    def _restore_sigterm(previous):
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
