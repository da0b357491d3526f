"""Long video with the rolling KV cache: flat time and memory per chunk, adherence per chunk, cache vs recompute.

On the embedded ``shapes-ar`` model (CPU):

* per-chunk time and peak memory for 8, 32 and 128 chunks, each length in a fresh process (goal: flat — peak
  memory for 4x more chunks within 10 %, last-chunk time within 10 % of the first);
* adherence (shapes score) of every chunk against its prompt;
* speed-up of the KV cache over recomputing the history (same settings, same seed), and their PSNR;
* optionally cached-context attention reuse (FlashBlock): speed-up and PSNR against the exact KV path.

    python benchmarks/long_video.py                     # 8 / 32 / 128 chunks
    python benchmarks/long_video.py --chunks 8 32       # shorter

GPU (when one is lent): ``--gpu-shapes`` times a random-weight Wan2.1-1.3B-shaped causal transformer
(30 layers, dim 1536, 12 heads, 480x832 → 30x52 tokens per latent frame, chunks of 3 latent frames,
4 denoising steps) and prints frames per second of video.

Writes benchmarks/results/long_video.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from vidaccel.metrics import psnr
from vidaccel.pipelines.long_video import LongVideoPipeline

PROMPT = "a red circle moving right on a black background"


def run_length(pipe, n, kw):
    """Stream ``n`` chunks: frames are scored chunk by chunk and dropped, so memory measures the pipeline only."""
    from vidaccel.memory import peak_memory, reset_peak_memory
    from vidaccel.eval import shapes_score

    chunk = pipe.causal_config.chunk_frames
    device = pipe._execution_device
    frames = 1 + 4 * (n * chunk - 1)
    reset_peak_memory(device)
    times, scores, produced = [], [], 0
    start = time.perf_counter()
    for part in pipe.stream(PROMPT, num_frames=frames, **kw):
        times.append(time.perf_counter() - start)
        scores.append(round(float(shapes_score(part, PROMPT)["overall"]), 4) if part.shape[0] >= 2 else None)
        produced += part.shape[0]
        start = time.perf_counter()
    peak = peak_memory(device)
    # median of the first and of the last 10 % of the chunks (at least 3; the very first chunk, which
    # carries one-time setup, left out): a median of 3 does not average out a shared machine's noise
    k = max(3, len(times) // 10)
    first = statistics.median(times[1:1 + k]) if len(times) > 4 else times[0]
    last = statistics.median(times[-k:])
    valid = [x for x in scores if x is not None]
    row = {"chunks": n, "frames": produced, "peak_mib": round(peak, 1),
           "first_chunks_s": round(first, 4), "last_chunks_s": round(last, 4),
           "last_over_first": round(last / first, 3), "fps": round(produced / sum(times), 2),
           "adherence_first": valid[0], "adherence_last": valid[-1], "adherence_per_chunk": scores}
    print(json.dumps({k: v for k, v in row.items() if k != "adherence_per_chunk"}), flush=True)
    return row


def _load(model):
    return (LongVideoPipeline.from_embedded() if model == "embedded-ar"
            else LongVideoPipeline.from_pretrained(model, dtype=torch.float32))


def _length_in_fresh_process(model, n, kw):
    """Worker of :func:`run_lengths` (module level, so a spawned process can import it)."""
    pipe = _load(model)
    pipe.set_progress_bar_config(disable=True)
    return run_length(pipe, n, kw)


def run_lengths(model, chunks_list, kw, isolate=True):
    """One row per length. ``isolate``: each length in a fresh process, so its peak is that of a user's run of that
    length; in one process a CPU peak (the RSS high-water mark) also holds whatever heap the previous, shorter
    runs left to the allocator, and the 4x comparison measured the allocator as much as the pipeline."""
    if not isolate:
        pipe = _load(model)
        return [run_length(pipe, n, kw) for n in chunks_list]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    rows = []
    for n in chunks_list:
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
            rows.append(ex.submit(_length_in_fresh_process, model, n, kw).result())
    return rows


def kv_vs_recompute(pipe, kw, chunks=12):
    chunk = pipe.causal_config.chunk_frames
    frames = 1 + 4 * (chunks * chunk - 1)
    res = {}
    for name, extra in (("kv", dict(use_kv_cache=True)), ("recompute", dict(use_kv_cache=False)),
                        ("kv+reuse", dict(use_kv_cache=True, reuse_context_attention=True)),
                        ("kv2", dict(use_kv_cache=True)), ("recompute2", dict(use_kv_cache=False)),
                        ("absolute", dict(use_kv_cache=True, positions="absolute"))):
        out = pipe(PROMPT, num_frames=frames, **kw, **extra)
        res[name] = out
    t = lambda o: sum(o.chunk_seconds)
    return {
        "chunks": chunks,
        "kv_s": round(min(t(res["kv"]), t(res["kv2"])), 3),
        "recompute_s": round(min(t(res["recompute"]), t(res["recompute2"])), 3),
        "speedup_kv_over_recompute": round(min(t(res["recompute"]), t(res["recompute2"])) /
                                           min(t(res["kv"]), t(res["kv2"])), 3),
        "psnr_kv_vs_recompute": round(psnr(res["kv"].frames, res["recompute"].frames), 2),
        "reuse_s": round(t(res["kv+reuse"]), 3),
        "speedup_reuse_over_kv": round(min(t(res["kv"]), t(res["kv2"])) / t(res["kv+reuse"]), 3),
        "psnr_reuse_vs_kv": round(psnr(res["kv+reuse"].frames, res["kv"].frames), 2),
        # RoPE positions: re-based within sink + window (default) vs absolute frame index
        "psnr_absolute_vs_relative": round(psnr(res["absolute"].frames, res["kv"].frames), 2),
        "adherence_relative": _mean_adherence(res["kv"].frames, chunk),
        "adherence_absolute": _mean_adherence(res["absolute"].frames, chunk),
    }


def _mean_adherence(frames, chunk_latent_frames):
    """Mean shapes score over the chunks of a finished video (4 pixel frames per latent frame)."""
    from vidaccel.eval import shapes_score

    step = 4 * chunk_latent_frames
    scores = [float(shapes_score(frames[i:i + step], PROMPT)["overall"]) for i in range(1, len(frames) - 1, step)]
    return round(statistics.mean(scores), 4)


def gpu_shapes(steps=4, chunks=6):
    """Random-weight Wan2.1-1.3B-shaped causal transformer: transformer-only FPS of video (no VAE/text)."""
    from diffusers import WanTransformer3DModel

    from vidaccel.core.processors import ProcessorSwap, wrap_processor
    from vidaccel.families import family_for
    from vidaccel.pipelines.long_video import RollingKVCache
    from vidaccel.pipelines.long_video.attention import KVCachedAttention, PassState, frame_rotary

    dev = torch.device("cuda")
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads").to(dev, torch.bfloat16).eval()
    h, w, chunk, tpf = 60, 104, 3, 30 * 52
    cache = RollingKVCache(30, 1, 12, 128, tpf, sink_frames=3, window_frames=18, dtype=torch.bfloat16, device=dev)
    state = PassState(cache=cache)
    family = family_for(model)
    ProcessorSwap(family, model, lambda p, i: wrap_processor(KVCachedAttention, p, i, state=state,
                                                             family=family)).attach()
    text = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)
    table = family.rope_table(model, 24, h, w)
    times = []
    with torch.no_grad():
        for c in range(chunks):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            ctx = cache.positions("relative")
            q_pos = list(range(len(ctx), len(ctx) + chunk))
            state.rope_q = frame_rotary(table, q_pos, dev)
            state.rope_k = frame_rotary(table, ctx, dev)
            x = torch.randn(1, 16, chunk, h, w, device=dev, dtype=torch.bfloat16)
            ts = torch.full((1, chunk * tpf), 500.0, device=dev)
            for _ in range(steps):
                model(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)
            state.write, state.frame_start = True, c * chunk
            model(hidden_states=x, timestep=ts * 0, encoder_hidden_states=text, return_dict=False)
            state.write = False
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    per_chunk = statistics.median(times[2:])
    return {"device": torch.cuda.get_device_name(0), "chunk_s": round(per_chunk, 4),
            "fps_video": round(4 * chunk / per_chunk, 2), "note": "transformer only; 4 steps + 1 commit pass per chunk"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--gpu-shapes", action="store_true")
    ap.add_argument("--one-process", action="store_true",
                    help="run every length in this process (peaks then include the allocator heap of earlier runs)")
    ap.add_argument("--model", default="embedded-ar", help="embedded-ar or a folder with causal_config.json")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "long_video.json"))
    ap.add_argument("--no-record", dest="record", action="store_false",
                    help="do not update benchmarks/results/figures.json (RESULTS.md's source)")
    ap.add_argument("--record-only", action="store_true", help="only record the existing --out JSON in figures.json")
    args = ap.parse_args()
    if args.record_only:
        with open(args.out) as f:
            record_figures(json.load(f))
        return
    if args.gpu_shapes:
        print(json.dumps(gpu_shapes(), indent=2))
        return
    from vidaccel.models import EMBEDDED_DEFAULTS

    pipe = _load(args.model)
    d = EMBEDDED_DEFAULTS["shapes-ar"]
    kw = dict(height=d["height"], width=d["width"], num_inference_steps=args.steps or d["num_inference_steps"],
              guidance_scale=d["guidance_scale"], seed=0, progress=False)
    start = time.time()
    rows = run_lengths(args.model, args.chunks, kw, isolate=not args.one_process)
    compare = kv_vs_recompute(pipe, kw)
    print(json.dumps(compare))
    # the goal: 4x more chunks peak within 10 % (each length in a fresh process unless --one-process: then CPU peaks
    # are one process's high-water mark and can only grow from one length to the next); time: the last chunks
    # within 10 % of the first, either way
    by_n = {r["chunks"]: r for r in rows}
    growth = {f"{n}->{4 * n}": round(by_n[4 * n]["peak_mib"] / by_n[n]["peak_mib"] - 1, 4) for n in by_n if 4 * n in by_n}
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "command": "python " + " ".join(sys.argv), "settings": kw | {"chunk_frames": pipe.causal_config.chunk_frames,
                                                                      "window_frames": pipe.causal_config.window_frames},
        "lengths": rows, "kv_vs_recompute": compare, "lengths_in_fresh_processes": not args.one_process,
        "memory_growth_4x": growth,
        "goal_memory_flat": bool(growth) and all(g <= 0.10 for g in growth.values()),
        "goal_time_flat": all(0.9 <= r["last_over_first"] <= 1.10 for r in rows),
        "wall_s": round(time.time() - start, 1),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("lengths",)}, indent=2))
    if args.record:
        record_figures(result)


def record_figures(result: dict) -> None:
    """Put the current table (from a long_video.json) into figures.json, RESULTS.md's source."""
    from figures import record

    rows = [[r["chunks"], r["frames"], f"{r['peak_mib']:.1f}", f"{r['last_over_first']:.3f}", f"{r['fps']:.1f}",
             f"{r['adherence_first']:.3f} / {r['adherence_last']:.3f}"] for r in result["lengths"]]
    growth = ", ".join(f"{k}: {v:+.1%}" for k, v in result["memory_growth_4x"].items())
    kv = result["kv_vs_recompute"]
    times = [r["last_over_first"] for r in result["lengths"]]
    record("long_video", title="Rolling-KV long video", command=result["command"],
           columns=["chunks", "frames", "peak MiB", "last / first chunk time", "FPS", "adherence first / last chunk"],
           rows=rows, date=result["date"],
           model="embedded shapes-ar" + (", each length in a fresh process" if result["lengths_in_fresh_processes"]
                                          else ", one process"),
           notes=[f"Memory per 4× chunks: {growth} (goal <= 10 %: {'met' if result['goal_memory_flat'] else 'missed'}).",
                  f"Time of the last chunks {min(times):.2f}–{max(times):.2f}× the first (goal 0.9–1.1: "
                  f"{'met' if result['goal_time_flat'] else 'missed'}).",
                  f"KV cache over recompute: {kv['speedup_kv_over_recompute']:.2f}× faster, "
                  f"{kv['psnr_kv_vs_recompute']:.1f} dB; context-attention reuse {kv['speedup_reuse_over_kv']:.2f}× "
                  f"over KV at {kv['psnr_reuse_vs_kv']:.1f} dB."],
           figures={"kv_speedup": f"{kv['speedup_kv_over_recompute']:.2f}×"})


if __name__ == "__main__":
    main()
