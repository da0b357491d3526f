"""The :class:`LongVideoPipeline` (see :mod:`vidaccel.pipelines.long_video`)."""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import diffusers
import numpy as np
import torch

from ...accel.caching import bypass_cache
from ...core.concurrency import exclusive
from ...core.context_parallel import cp_config
from ...core.processors import ProcessorSwap, wrap_processor
from ...core.technique import attached
from ...core.validation import check_bool, shown
from ...families import ModelFamily, family_for, pipeline_transformers
from ...memory import peak_memory, reset_peak_memory
from ...video import deferred_signals, to_uint8_frames
from .arguments import check_call_arguments, check_model_arguments
from .attention import KVCachedAttention, PassState, frame_rotary
from .block_causal import (
    apply_block_causal,
    block_causal_state,
    has_block_causal,
    remove_block_causal,
)
from .config import CausalConfig
from .kv_cache import RollingKVCache
from .schedule import parse_schedule
from .stopping import install_sigterm, restore_sigterm
from .techniques import LongVideoTechniques, RecomputeAttention, check_config
from .writer import ChunkedMp4Writer

logger = logging.getLogger(__name__)

__all__ = ["LongVideoPipeline", "LongVideoOutput"]


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


@dataclass
class _Plan:
    """Everything one call decides before its first chunk (validated arguments and derived geometry)."""

    family: ModelFamily
    schedule: list[tuple[int, str]]
    total: int             # pixel frames to produce
    num_chunks: int
    chunk: int             # latent frames per chunk
    window: int            # latent frames visible to a chunk (history + chunk)
    sink: int
    history_cap: int       # latent frames of history visible to a chunk (sink included)
    context_noise: float
    guidance: float
    batch: int             # 2 with CFG (cond and uncond in one batch), else 1
    height: int            # latent
    width: int
    tokens_per_frame: int
    grid_hw: tuple[int, int]
    channels: int
    fps: float
    positions: str


@dataclass
class _Call:
    """One call's checked arguments: the plan, the chunk scheduler and the output writer (nothing allocated)."""

    plan: _Plan
    sched: Any
    seed: int
    negative_prompt: str | None
    use_kv_cache: bool
    ema_decay: float | None
    reuse_context_attention: bool
    writer: ChunkedMp4Writer | None
    progress: bool
    max_sequence_length: int
    techniques: LongVideoTechniques


class LongVideoPipeline(diffusers.WanPipeline):
    """Chunk-by-chunk generation of unbounded videos with a rolling KV cache (module docstring).

    Loads like any Wan pipeline folder that also holds a ``causal_config.json`` (the embedded ``shapes-ar``
    model, or a causal Wan2.1 checkpoint converted with ``vidaccel convert wan-original``).
    """

    causal_config = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
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
        from ...models import embedded_path

        pipe = cls.from_pretrained(os.fspath(embedded_path("shapes-ar")), dtype=dtype)
        return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def vidaccel_accepts(self, config, technique_cls) -> None:
        """Called by :func:`vidaccel.apply` before anything changes: refuse techniques that cannot act in a
        long-video call (:mod:`.techniques`)."""
        check_config(config, technique_cls.name)

    # -- public entry points ---------------------------------------------------------------------------
    def __call__(self, prompt, *, return_frames: bool = True, result: LongVideoOutput | None = None,
                 **kwargs) -> LongVideoOutput:
        """Generate a long video; see :meth:`stream` for the arguments. Returns :class:`LongVideoOutput`.

        Every argument is checked before any work (``ValueError`` naming it). Ctrl-C or SIGTERM stop it after the
        chunk in progress is dropped: the mp4 keeps every finished chunk and the returned output has
        ``interrupted=True``. ``result``: a :class:`LongVideoOutput` to fill in as chunks finish, so a caller still
        has the counts (``num_frames`` written, ``path``) when the call raises.
        """
        check_bool("", "return_frames", return_frames)
        call = self._prepare(prompt, **kwargs)
        frames: list[np.ndarray] = []
        result = result if result is not None else LongVideoOutput(frames=None, num_frames=0, chunk_seconds=[],
                                                                   chunk_prompts=[], peak_memory_mib=None)
        run = self._generate(call, result)
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
        ``reuse_context_attention``; ``context_noise``; ``output`` (mp4 path, written chunk by chunk: see
        :mod:`~vidaccel.pipelines.long_video.writer`); ``progress``. They are checked here, before the first chunk.
        """
        return self._generate(self._prepare(prompt, **kwargs), None)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _prepare(self, prompt, *, num_frames: int | None = None, seconds: float | None = None, fps: float = 16.0,
                 schedule_unit: str = "seconds", chunk_frames: int | None = None, window_frames: int | None = None,
                 sink_frames: int = 0, num_inference_steps: int | None = None,
                 timesteps: Sequence[float] | None = None, guidance_scale: float | None = None,
                 negative_prompt: str | None = None, seed: int = 0, height: int | None = None,
                 width: int | None = None, use_kv_cache: bool = True, ema_decay: float | None = None,
                 positions: str = "relative", reuse_context_attention: bool = False,
                 context_noise: float | None = None, output: str | os.PathLike | None = None, progress: bool = True,
                 max_sequence_length: int | None = None) -> _Call:
        """Check every argument and decide the geometry; nothing is allocated, written or run."""
        cc: CausalConfig = self.causal_config or CausalConfig()
        chunk = cc.chunk_frames if chunk_frames is None else chunk_frames
        window = cc.window_frames if window_frames is None else window_frames
        seed, msl = check_call_arguments(
            num_frames=num_frames, seconds=seconds, fps=fps, chunk=chunk, window=window, sink=sink_frames,
            positions=positions, height=height, width=width, steps=num_inference_steps, guidance=guidance_scale,
            negative_prompt=negative_prompt, seed=seed, use_kv_cache=use_kv_cache,
            reuse_context_attention=reuse_context_attention, progress=progress, schedule_unit=schedule_unit,
            ema_decay=ema_decay, context_noise=context_noise, max_sequence_length=max_sequence_length)
        techniques = LongVideoTechniques(self.transformer)  # refuses what cannot act here, before any work
        writer = ChunkedMp4Writer(output, fps) if output is not None else None
        plan = self._plan(prompt, num_frames=num_frames, seconds=seconds, fps=fps, schedule_unit=schedule_unit,
                          chunk=chunk, window=window, sink_frames=sink_frames, guidance_scale=guidance_scale,
                          height=height or 128, width=width or 128, positions=positions,
                          context_noise=cc.context_noise if context_noise is None else context_noise)
        # one schedule for every chunk, built (and, for explicit timesteps, validated) before anything starts;
        # each chunk steps a fresh copy of it
        sched = self._chunk_scheduler(timesteps, num_inference_steps or 20, self._execution_device)
        return _Call(plan=plan, sched=sched, seed=seed, negative_prompt=negative_prompt, use_kv_cache=use_kv_cache,
                     ema_decay=ema_decay, reuse_context_attention=reuse_context_attention, writer=writer,
                     progress=progress, max_sequence_length=msl or cc.max_sequence_length, techniques=techniques)

    def _plan(self, prompt, *, num_frames, seconds, fps, schedule_unit, chunk, window, sink_frames, guidance_scale,
              height, width, positions, context_noise) -> _Plan:
        transformer = self.transformer
        family = family_for(transformer)
        total, num_chunks, (h, w), (gh, gw) = check_model_arguments(
            self, family, num_frames=num_frames, seconds=seconds, fps=fps, chunk=chunk, window=window,
            height=height, width=width, positions=positions)
        guidance = 4.0 if guidance_scale is None else guidance_scale
        return _Plan(family=family, schedule=parse_schedule(prompt, total, fps, schedule_unit), total=total,
                     num_chunks=num_chunks, chunk=chunk, window=window, sink=sink_frames, history_cap=window - chunk,
                     context_noise=context_noise, guidance=guidance, batch=2 if guidance > 1.0 else 1, height=h,
                     width=w, tokens_per_frame=gh * gw, grid_hw=(gh, gw), channels=transformer.config.in_channels,
                     fps=fps, positions=positions)

    def _generate(self, call: _Call, result: LongVideoOutput | None):
        models = [m for _, m in pipeline_transformers(self) if attached(m)]
        with exclusive(models):  # see vidaccel.core.concurrency: calls sharing an accelerated transformer queue
            yield from self._run(call, result)

    @torch.no_grad()  # a generator: torch re-enters no_grad at every resumption
    def _run(self, call: _Call, result: LongVideoOutput | None):
        plan, writer, use_kv_cache, techniques = call.plan, call.writer, call.use_kv_cache, call.techniques
        techniques.now.grid_hw, techniques.now.chunk_frames = plan.grid_hw, plan.chunk
        device = self._execution_device
        sched_template = call.sched
        self._num_timesteps = len(sched_template.timesteps)  # read by step-aware techniques (cache guards)
        transformer = self.transformer
        if cp_config(transformer) is not None:
            raise ValueError("rolling-KV long video runs on one process: its attention reads this rank's KV cache "
                             "only; use a transformer without context parallelism (enable_parallelism)")
        family, chunk, tpf, cn = plan.family, plan.chunk, plan.tokens_per_frame, plan.context_noise
        gen = torch.Generator(device="cpu").manual_seed(call.seed)

        embeds: dict[str, torch.Tensor] = {}

        def text(p: str) -> torch.Tensor:
            if p not in embeds:
                cond, uncond = self.encode_prompt(p, negative_prompt=call.negative_prompt or "",
                                                  do_classifier_free_guidance=plan.batch == 2,
                                                  max_sequence_length=call.max_sequence_length, device=device,
                                                  dtype=transformer.dtype)
                embeds[p] = torch.cat([cond, uncond]) if plan.batch == 2 else cond
            return embeds[p]

        def prompt_at(c: int) -> str:
            first_px = family.first_pixel_frame(c * chunk, pipeline=self)
            return [p for f, p in plan.schedule if f <= first_px][-1]

        cache = state = rope_table = swap = None
        had_causal = has_block_causal(transformer)
        if use_kv_cache:
            attn0 = family.blocks(transformer)[0].attn1
            cache = RollingKVCache(len(family.blocks(transformer)), plan.batch, attn0.heads,
                                   transformer.config.attention_head_dim, tpf, sink_frames=plan.sink,
                                   window_frames=plan.history_cap - plan.sink, ema_decay=call.ema_decay,
                                   dtype=transformer.dtype, device=device)
            state = PassState(cache=cache, reuse=call.reuse_context_attention,
                              techniques=techniques if techniques.changes_attention else None)
            rope_frames = plan.window if plan.positions == "relative" else plan.num_chunks * chunk
            rope_table = family.rope_table(transformer, rope_frames, plan.height, plan.width)
            remove_block_causal(transformer)
            swap = ProcessorSwap(family, transformer,
                                 lambda p, i: wrap_processor(KVCachedAttention, p, i, state=state, family=family))
            swap.attach()
        elif not had_causal:
            apply_block_causal(transformer, chunk)
        recompute_swap = None
        if not use_kv_cache and techniques.changes_attention:
            recompute_swap = ProcessorSwap(family, transformer, lambda p, i: wrap_processor(
                RecomputeAttention, p, i, techniques=techniques, family=family,
                block_causal=block_causal_state(transformer)))
            recompute_swap.attach()

        history: dict[int, torch.Tensor] = {}  # visible committed frames, noised: absolute index -> [1, C, 1, h, w]
        decoder = family.streaming_decoder(self.vae)
        result = result or LongVideoOutput(frames=None, num_frames=0, chunk_seconds=[], chunk_prompts=[],
                                           peak_memory_mib=None)
        result.path = writer.path if writer is not None else None
        chunk_seconds, chunk_prompts = result.chunk_seconds, result.chunk_prompts
        produced = 0
        switches = 0
        failure: BaseException | None = None
        self._stop_requested = False
        previous_handler = install_sigterm(self)
        reset_peak_memory(device)
        from tqdm.auto import tqdm

        bar = tqdm(total=round(plan.total / plan.fps, 2), unit="s", desc="long video", disable=not call.progress,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s of video [{elapsed}<{remaining}{postfix}]")
        start_all = time.perf_counter()
        try:
            for c in range(plan.num_chunks):
                if self._stop_requested:
                    result.interrupted = True
                    logger.warning("SIGTERM: stopping after %d finished chunks", len(chunk_seconds))
                    break
                t0 = time.perf_counter()
                p = prompt_at(c)
                enc = text(p)
                if c > 0 and p != chunk_prompts[-1] and use_kv_cache:
                    self._recache(state, history, enc, plan, rope_table)
                    switches += 1
                frame_start = c * chunk
                x = torch.randn(1, plan.channels, chunk, plan.height, plan.width, generator=gen).to(device, torch.float32)
                x = self._denoise_chunk(x, copy.deepcopy(sched_template), enc, plan, frame_start, history, state,
                                        rope_table, techniques)
                noised = (1 - cn) * x + cn * torch.randn(x.shape, generator=gen).to(device)
                if use_kv_cache:
                    self._commit(state, noised, enc, plan, frame_start)
                for i in range(chunk):
                    history[frame_start + i] = noised[:, :, i:i + 1]
                keep = set(self._visible(history, plan.sink, plan.history_cap))
                for a in [a for a in history if a not in keep]:
                    del history[a]  # bounded memory: only what the next chunk can see
                pixels = decoder.decode(x)
                frames = self.video_processor.postprocess_video(pixels, output_type="np")[0]
                frames = frames[: max(0, plan.total - produced)]
                # a NaN / Inf chunk is refused, never written as black frames
                pixels8 = to_uint8_frames(frames, what=f"chunk {c} (pixel frames {produced}-"
                                                       f"{produced + len(frames) - 1})")
                with deferred_signals():  # the part and the counts that report it land together
                    if writer is not None and len(frames):
                        writer.write_chunk(pixels8)
                    chunk_prompts.append(p)
                    produced += frames.shape[0]
                    result.num_frames = produced
                    chunk_seconds.append(time.perf_counter() - t0)
                bar.update(min(round(frames.shape[0] / plan.fps, 4), bar.total - bar.n))  # float sums may overshoot
                bar.set_postfix_str(f"{produced / (time.perf_counter() - start_all):.1f} FPS, "
                                    f"chunk {c + 1}/{plan.num_chunks}")
                yield frames
        except KeyboardInterrupt:
            result.interrupted = True
            logger.warning("interrupted after %d finished chunks; %s keeps %d frames", len(chunk_seconds),
                           result.path or "the output", produced)
        except BaseException as e:
            failure = e
            raise
        finally:
            bar.close()
            restore_sigterm(previous_handler)
            if recompute_swap is not None:
                recompute_swap.detach()
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
            if writer is not None:
                result.num_frames = 0  # until the output is joined and its frames counted
                result.num_frames = writer.finish_after(failure)
        return result

    def _denoise_chunk(self, x, sched, enc, plan: _Plan, frame_start: int, history, state: PassState | None,
                       rope_table, techniques: LongVideoTechniques):
        """Denoise one chunk's latents ``x`` through every step of ``sched``; returns the clean latents."""
        dtype, device = self.transformer.dtype, x.device
        chunk, tpf = plan.chunk, plan.tokens_per_frame
        if state is not None:
            self._set_rope(state, rope_table, plan.positions, frame_start, chunk)
            state.reuse_fresh = True
            state.context_parts.clear()
        else:
            visible = self._visible(history, plan.sink, plan.history_cap)
            ctx = torch.cat([history[a] for a in visible], dim=2) if visible else None
            n_ctx = len(visible)
            techniques.now.sink_frames = min(plan.sink, n_ctx)
        for i, t in enumerate(sched.timesteps):
            techniques.now.step = i
            if state is not None:
                inp = x.to(dtype)
                ts = torch.full((1, chunk * tpf), float(t), device=device)
            else:
                inp = torch.cat([ctx, x], dim=2).to(dtype) if ctx is not None else x.to(dtype)
                ts = torch.cat([torch.full((1, n_ctx * tpf), plan.context_noise * 1000.0),
                                torch.full((1, chunk * tpf), float(t))], 1).to(device)
            pred = self._predict(inp, ts, enc, plan.batch, plan.guidance)
            if state is not None:
                state.reuse_fresh = False
            x = sched.step(pred[:, :, -chunk:].float(), t, x, return_dict=False)[0]
        return x

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

        total = self.scheduler.config.num_train_timesteps
        if not isinstance(timesteps, (list, tuple)) or not timesteps or any(
                isinstance(t, bool) or not isinstance(t, (int, float)) for t in timesteps):
            raise ValueError(f"timesteps={shown(timesteps)} is not allowed: a non-empty, strictly decreasing list of "
                             f"numbers in (0, {total}]")
        if getattr(self.scheduler.config, "prediction_type", "flow_prediction") != "flow_prediction" and \
                not isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(f"timesteps={list(timesteps)!r} is only allowed with a flow-matching model; this "
                             f"pipeline's scheduler is {type(self.scheduler).__name__} with prediction_type="
                             f"{self.scheduler.config.prediction_type!r}")
        values = [float(t) for t in timesteps]
        if not values or any(not 0 < t <= total for t in values) or any(b >= a for a, b in zip(values, values[1:])):
            raise ValueError(f"timesteps={values!r} is not allowed: a non-empty, strictly decreasing list in "
                             f"(0, {total}]")
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=total, shift=1.0)
        sched.set_timesteps(timesteps=values, sigmas=[t / total for t in values], device=device)
        return sched

    def _set_rope(self, state: PassState, table, positions: str, frame_start: int, frames: int):
        ctx_pos = state.cache.positions(positions)
        q_pos = (list(range(len(ctx_pos), len(ctx_pos) + frames)) if positions == "relative"
                 else list(range(frame_start, frame_start + frames)))
        device = self._execution_device
        state.rope_q = frame_rotary(table, q_pos, device)
        state.rope_k = frame_rotary(table, ctx_pos, device)

    def _predict(self, inp, ts, enc, batch, guidance):
        if batch == 2:
            inp = inp.repeat(2, 1, 1, 1, 1)
            ts = ts.repeat(2, 1)
        pred = self.transformer(hidden_states=inp, timestep=ts, encoder_hidden_states=enc, return_dict=False)[0]
        if batch == 2:
            cond, uncond = pred.chunk(2)
            return uncond + guidance * (cond - uncond)
        return pred

    def _commit(self, state: PassState, noised, enc, plan: _Plan, frame_start: int, batch: int | None = None):
        """Write the noised clean chunk's keys/values into the cache (one pass at the context timestep)."""
        state.write = True
        state.frame_start = frame_start
        if state.techniques is not None:
            state.techniques.now.step = None
        batch = plan.batch if batch is None else batch
        try:
            frames = noised.shape[2]
            ts = torch.full((1, frames * plan.tokens_per_frame), plan.context_noise * 1000.0, device=noised.device)
            inp = noised.to(self.transformer.dtype)
            if batch == 2:
                inp, ts = inp.repeat(2, 1, 1, 1, 1), ts.repeat(2, 1)
            with bypass_cache(self.transformer):  # a cached (skipped) pass would write no keys/values
                self.transformer(hidden_states=inp, timestep=ts, encoder_hidden_states=enc, return_dict=False)
        finally:
            state.write = False

    def _recache(self, state: PassState, history: dict[int, torch.Tensor], enc, plan: _Plan, table):
        """Prompt switch: re-encode the cached frames under the new prompt, in temporal order, in runs of
        consecutive frames of at most one chunk (the sink frames are kept as anchors)."""
        cache = state.cache
        frames = cache.positions("absolute")
        cache.reset()
        runs: list[list[int]] = []
        for a in frames:
            if runs and a == runs[-1][-1] + 1 and len(runs[-1]) < plan.chunk:
                runs[-1].append(a)
            else:
                runs.append([a])
        batch = 2 if enc.shape[0] == 2 and cache.batch == 2 else 1
        for run in runs:
            lat = torch.cat([history[a] for a in run], dim=2)
            self._set_rope(state, table, plan.positions, run[0], len(run))
            self._commit(state, lat, enc, plan, run[0], batch)

    @staticmethod
    def _visible(history: dict[int, torch.Tensor], sink: int, cap: int) -> list[int]:
        """Absolute indices of the history frames a new chunk sees: the sink plus the most recent ones."""
        frames = sorted(history)
        if len(frames) <= cap:
            return frames
        return frames[:sink] + frames[len(frames) - (cap - sink):]
