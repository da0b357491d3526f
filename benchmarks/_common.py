"""Helpers the GPU/CPU kernel benchmarks share: machine facts, timing, Markdown tables, and a
random-weight transformer of Wan2.1-1.3B's shape (the real config; only timing is meaningful)."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

# Wan2.1-T2V-1.3B's transformer config (30 layers, dim 1536 = 12 heads x 128, ffn 8960).
WAN13_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
# latent shapes of 81-frame videos (VAE 4x8x8): 21 latent frames
WAN13_LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}

#: the embedded model's benchmark prompts (its shapes grammar: colour, shape, motion, background)
EMBEDDED_PROMPTS = [
    "a red circle moving right on a black background",
    "a blue square moving up on a gray background",
    "a yellow triangle moving left on a navy background",
    "a white circle moving down on a black background",
    "a green square moving right on a navy background",
    "a red triangle moving up on a gray background",
]


def machine() -> dict:
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def timeit(fn, *, warmup: int = 1, repeats: int = 5, device: str = "cpu") -> float:
    """Median seconds of ``fn()`` (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt(v) -> str:
    """A table cell: floats to 4 significant digits, missing / None / NaN as —."""
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return "—" if v is None else str(v)


def print_table(rows: list[dict], columns: list[str]) -> str:
    """Print and return a Markdown table of ``rows`` (missing / None / NaN cells as —)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def command_line(argv: list[str] | None = None) -> str:
    """This run's command as ``python benchmarks/<script>.py ARGS`` (``argv``: the script's arguments, default
    ``sys.argv[1:]``), for the ``command`` of a results JSON and of its figures.json section."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", script, *args])


def describe_machine(info: dict, threads: bool = True) -> str:
    """The ``machine`` text of a figures.json section, from a results JSON's :func:`machine` dict (``threads``:
    name the torch threads; leave them out where the run sets its own per process)."""
    if info.get("gpu"):
        device = f"{info['gpu']} GPU"
    else:
        device = f"{info.get('cpu_count')}-core {info.get('cpu')} CPU, no GPU"
    text = f"{device}, torch {info.get('torch')}"
    n = info.get("torch_threads")
    if threads and n:
        text += f", {n} torch thread{'s' if n != 1 else ''}"
    return text


def run_date(info: dict) -> str:
    """``YYYY-MM-DD`` of a :func:`machine` dict's date."""
    return str(info["date"])[:10]


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def in_results(path: str) -> bool:
    """Whether ``path`` lies in benchmarks/results: runs written elsewhere (tests, experiments) are not recorded."""
    return os.path.commonpath([os.path.abspath(path), RESULTS_DIR]) == RESULTS_DIR


def add_record_options(ap) -> None:
    """``--no-record`` and ``--record-only``: whether a run updates benchmarks/results/figures.json."""
    ap.add_argument("--no-record", dest="record", action="store_false",
                    help="do not update benchmarks/results/figures.json (RESULTS.md's source)")
    ap.add_argument("--record-only", action="store_true",
                    help="only record the existing results JSON in figures.json, without running anything")


def random_wan13(*, smoke: bool, latent: tuple[int, int, int], smoke_layers: int = 2):
    """A random-weight Wan2.1-1.3B-shaped transformer and one call's inputs, in bf16 on the GPU.

    ``smoke`` builds a tiny stand-in on the CPU in fp32 instead (to exercise the benchmark code).
    Returns ``(model, x, text, t, device)``; raises ``SystemExit`` when a GPU is needed and absent.
    """
    from diffusers import WanTransformer3DModel

    device = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (use --smoke to exercise the code on CPU)")
    dtype = torch.float32 if smoke else torch.bfloat16
    cfg = dict(WAN13_CONFIG)
    if smoke:
        cfg.update(num_attention_heads=2, attention_head_dim=32, ffn_dim=64, num_layers=smoke_layers, text_dim=32)
        latent = (4, 12, 20)
    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**cfg).to(dtype).eval()
    x = torch.randn(1, 16, *latent, device=device, dtype=dtype)
    text = torch.randn(1, 16 if smoke else 512, cfg["text_dim"], device=device, dtype=dtype)
    t = torch.tensor([500.0], device=device)
    return model, x, text, t, device


def wan13_random_setup(ctx, smoke_latent_frames: int):
    """A random-weight Wan2.1-1.3B transformer of the real config at 480p×81 (a 2-layer toy under ``ctx.smoke``),
    with random text embeddings for both CFG branches, the initial noise and Wan's UniPC flow scheduler:
    ``(model, cond, uncond, x0, scheduler, dtype)``."""
    import torch
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    cfg = dict(WAN13_CONFIG)
    latent = WAN13_LATENTS["480p"]
    if ctx.smoke:
        cfg.update(num_attention_heads=2, attention_head_dim=32, ffn_dim=64, num_layers=2, text_dim=32)
        latent = (smoke_latent_frames, 8, 12)  # token grid (frames, 4, 6)
    dtype = torch.float32 if ctx.smoke else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = WanTransformer3DModel(**cfg).to(dtype).eval()
    text_len = 16 if ctx.smoke else 512
    cond, uncond = (torch.randn(1, text_len, cfg["text_dim"], device=ctx.device, dtype=dtype) for _ in range(2))
    x0 = torch.randn(1, 16, *latent, device=ctx.device, dtype=torch.float32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return model, cond, uncond, x0, scheduler, dtype
