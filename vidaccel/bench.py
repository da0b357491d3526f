"""Speed-and-fidelity benchmark harness: a baseline and several configurations, one process, interleaved.

Each round runs the baseline and then every configuration (in an order rotated from round to round) on
the same prompt and seed, so slow drift of the machine cancels in the per-pair ratios. For every
configuration it reports

* denoising and end-to-end seconds, and their speed-ups as the **median of per-pair ratios**
  (baseline time / configuration time of the same round, prompt and seed);
* PSNR and SSIM of its frames against the baseline frames of the same prompt and seed;
* the embedded model's prompt-adherence score (when the prompts are in the shapes grammar);
* peak memory (RSS on CPU, ``max_memory_allocated`` on CUDA) and the techniques' stats.

Peers are configurations too: diffusers' ``FirstBlockCacheConfig``, ``MagCacheConfig`` (calibrated on
this very pipeline before timing), ``TaylorSeerCacheConfig`` and cache-dit (when installed).

Configurations are named on the command line (``vidaccel bench --config fast --config fbc:0.1``) or
built in Python with :class:`BenchConfig`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["BenchConfig", "BenchReport", "run_benchmark", "bench_configs_from_names", "config_help", "peak_memory",
           "pareto_front"]


@dataclass
class BenchConfig:
    """One configuration: how to switch it on for a run and off again afterwards.

    Args:
        name: label in the report.
        enable: ``enable(pipe)`` called before each of its runs.
        disable: ``disable(pipe)`` called after each of its runs; must restore the baseline exactly.
        kind: ``"vidaccel"`` or ``"peer"``.
        prepare: optional ``prepare(pipe, call, call_kwargs)`` run once before timing (e.g. MagCache
            calibration); ``call()`` runs the pipeline on the first prompt and seed with ``call_kwargs``.
    """

    name: str
    enable: Callable[[Any], None]
    disable: Callable[[Any], None]
    kind: str = "vidaccel"
    prepare: Callable[[Any, Callable[[], Any], dict], None] | None = None

    @classmethod
    def from_configs(cls, name: str, *configs) -> "BenchConfig":
        """A vidaccel configuration made of technique configs (or preset names)."""
        from .api import apply, remove

        return cls(name=name, enable=lambda pipe: apply(pipe, *configs), disable=lambda pipe: remove(pipe))


# -- peers -----------------------------------------------------------------------------------------
def _transformers(pipe):
    from .specs import pipeline_transformers

    return [m for _, m in pipeline_transformers(pipe)]


def _diffusers_cache(name: str, make_config: Callable[[], Any]) -> BenchConfig:
    def enable(pipe):
        for model in _transformers(pipe):
            model.enable_cache(make_config())

    def disable(pipe):
        for model in _transformers(pipe):
            model.disable_cache()

    return BenchConfig(name=name, enable=enable, disable=disable, kind="peer")


def peer_first_block_cache(threshold: float = 0.05) -> BenchConfig:
    from diffusers import FirstBlockCacheConfig

    return _diffusers_cache(f"diffusers-fbc:{threshold:g}", lambda: FirstBlockCacheConfig(threshold=threshold))


def peer_taylorseer(cache_interval: int = 5) -> BenchConfig:
    from diffusers import TaylorSeerCacheConfig

    # diffusers' defaults match no Wan module name; point it at the blocks explicitly.
    return _diffusers_cache(
        f"diffusers-taylorseer:{cache_interval}",
        lambda: TaylorSeerCacheConfig(cache_interval=cache_interval, disable_cache_before_step=3, max_order=1,
                                      cache_identifiers=[r"blocks\.\d+", r"transformer_blocks\.\d+"],
                                      taylor_factors_dtype=None),
    )


class _RatioCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.ratios: list[list[float]] = []

    def emit(self, record):
        message = record.getMessage()
        if "Calibration Results:" in message:
            self.ratios.append(json.loads(message.split("Calibration Results:", 1)[1]))


def peer_magcache(threshold: float = 0.06) -> BenchConfig:
    """diffusers MagCache with magnitude ratios calibrated on this pipeline (first prompt and seed)."""
    from diffusers import MagCacheConfig

    state: dict[str, Any] = {}

    def prepare(pipe, call, call_kwargs):
        steps = call_kwargs.get("num_inference_steps", 50)
        capture = _RatioCapture()
        mag_logger = logging.getLogger("diffusers.hooks.mag_cache")
        level = mag_logger.level
        mag_logger.addHandler(capture)
        mag_logger.setLevel(logging.INFO)
        try:
            for model in _transformers(pipe):
                model.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
            with contextlib.redirect_stdout(io.StringIO()):
                call()
        finally:
            for model in _transformers(pipe):
                model.disable_cache()
            mag_logger.removeHandler(capture)
            mag_logger.setLevel(level)
        if not capture.ratios:
            raise RuntimeError("MagCache calibration produced no ratios")
        state["ratios"] = capture.ratios[0]
        state["steps"] = steps

    def enable(pipe):
        for model in _transformers(pipe):
            model.enable_cache(MagCacheConfig(threshold=threshold, mag_ratios=state["ratios"],
                                              num_inference_steps=state["steps"]))

    def disable(pipe):
        for model in _transformers(pipe):
            model.disable_cache()

    return BenchConfig(name=f"diffusers-magcache:{threshold:g}", enable=enable, disable=disable, kind="peer",
                       prepare=prepare)


def peer_cache_dit(threshold: float = 0.08) -> BenchConfig:
    """cache-dit's DBCache, ``enable_cache(pipe)``, as F1B0 (first block computed, none at the back) with the
    same 2 warm-up steps vidaccel's presets use (its default 8 would cap any speed-up at short step counts)."""
    try:
        import cache_dit
    except ImportError as e:
        raise ValueError("config 'cache-dit' needs the cache-dit package (pip install cache-dit)") from e
    logging.getLogger("cache_dit").setLevel(logging.WARNING)

    def enable(pipe):
        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold, max_warmup_steps=2))

    def disable(pipe):
        cache_dit.disable_cache(pipe)

    return BenchConfig(name=f"cache-dit:{threshold:g}", enable=enable, disable=disable, kind="peer")


_PEERS: dict[str, tuple[Callable[..., BenchConfig], type, str]] = {
    "fbc": (peer_first_block_cache, float, "diffusers FirstBlockCache, fbc[:threshold]"),
    "magcache": (peer_magcache, float, "diffusers MagCache calibrated here, magcache[:threshold]"),
    "taylorseer": (peer_taylorseer, int, "diffusers TaylorSeer, taylorseer[:cache_interval]"),
    "cache-dit": (peer_cache_dit, float, "cache-dit DBCache F1B0, cache-dit[:threshold] (if installed)"),
}


def config_help() -> list[str]:
    from .presets import available_presets

    return [f"presets: {', '.join(available_presets())}"] + [text for _, _, text in _PEERS.values()]


def bench_configs_from_names(names: Sequence[str]) -> list[BenchConfig]:
    """``"fast"`` → vidaccel preset; ``"fbc:0.1"`` → a peer. ``"none"`` (the baseline) is skipped."""
    from .presets import available_presets

    out: list[BenchConfig] = []
    for name in names:
        head, _, arg = name.partition(":")
        if name == "none":
            continue
        if name in available_presets():
            out.append(BenchConfig.from_configs(name, name))
        elif head in _PEERS:
            factory, typ, _ = _PEERS[head]
            try:
                out.append(factory(typ(arg)) if arg else factory())
            except ValueError as e:
                raise ValueError(f"--config={name!r}: {e}") from None
        else:
            raise ValueError(f"--config={name!r} is not known; allowed: {'; '.join(config_help())}")
    labels = [c.name for c in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--config names must be distinct, got {labels}")
    return out


# -- memory ----------------------------------------------------------------------------------------
def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM (peak RSS)
            f.write("5")


def peak_memory(device: torch.device) -> float | None:
    """Peak memory in MiB since the last reset: ``max_memory_allocated`` on CUDA, peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- adherence -------------------------------------------------------------------------------------
def _adherence_fn(prompts: Sequence[str]):
    try:
        from .eval import shapes_score
        from .models.shapes import parse_prompt
    except ImportError:
        return None
    try:
        for p in prompts:
            parse_prompt(p)
    except ValueError:
        return None
    return lambda frames, prompt: float(shapes_score(frames, prompt)["overall"])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points ``(psnr, speedup)`` not beaten on both axes by another point, sorted by PSNR."""
    front = []
    for p in sorted(points, key=lambda q: (-q[0], -q[1])):
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return sorted(front)


# -- the run ---------------------------------------------------------------------------------------
_PSNR_CAP = 100.0


def _mean_psnr(values: Sequence[float]) -> float:
    """Mean PSNR over runs; ``inf`` only if every run was identical, else identical runs count as 100 dB."""
    if all(math.isinf(v) for v in values):
        return float("inf")
    return statistics.mean(min(v, _PSNR_CAP) for v in values)

@dataclass
class BenchReport:
    """Results of :func:`run_benchmark`; ``rows[0]`` is the baseline."""

    rows: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    setup: dict = field(default_factory=dict)

    def markdown(self) -> str:
        head = ("| config | kind | denoise s | speed-up (denoise) | speed-up (e2e) | PSNR dB | SSIM | adherence | "
                "peak MiB |\n|---|---|---|---|---|---|---|---|---|")
        lines = [head]
        for r in self.rows:
            def f(key, fmt):
                v = r.get(key)
                return "—" if v is None else ("identical" if key == "psnr" and math.isinf(v) else format(v, fmt))

            lines.append(
                f"| {r['name']} | {r['kind']} | {f('denoise_s', '.3f')} | {f('speedup', '.2f')}× | "
                f"{f('speedup_e2e', '.2f')}× | {f('psnr', '.2f')} | {f('ssim', '.4f')} | {f('adherence', '.3f')} | "
                f"{f('peak_mib', '.0f')} |"
            )
        return "\n".join(lines)

    def save(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)

        def clean(obj):
            if isinstance(obj, float) and not math.isfinite(obj):
                return str(obj)
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [clean(v) for v in obj]
            return obj

        with open(os.path.join(out_dir, "bench.json"), "w") as f:
            json.dump(clean(asdict(self)), f, indent=2, default=str)
        with open(os.path.join(out_dir, "bench.md"), "w") as f:
            f.write(self.markdown() + "\n")
        self.plot(os.path.join(out_dir, "bench.png"))

    def plot(self, path: str) -> None:
        """Speed-up against PSNR, one marker per configuration, vidaccel and peers in different colours."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        finite = [r["psnr"] for r in self.rows[1:] if r.get("psnr") is not None and math.isfinite(r["psnr"])]
        cap = (max(finite) + 5) if finite else 60.0
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for kind, colour in (("vidaccel", "tab:blue"), ("peer", "tab:orange")):
            pts = [(min(r["psnr"], cap), r["speedup"], r["name"]) for r in self.rows[1:] if r["kind"] == kind]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=colour, label=kind, s=18)
                for x, y, label in pts:
                    ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
                front = pareto_front([(x, y) for x, y, _ in pts])
                ax.plot([p[0] for p in front], [p[1] for p in front], c=colour, lw=1.2, drawstyle="steps-post")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xlabel(f"PSNR vs baseline (dB; identical drawn at {cap:.0f})")
        ax.set_ylabel("denoising speed-up (×)")
        ax.set_title(self.setup.get("title", "speed-up vs fidelity"))
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def run_benchmark(pipe, configs: Sequence[BenchConfig], *, prompts: Sequence[str], seeds: Sequence[int] = (0,),
                  repeats: int = 1, call_kwargs: dict | None = None, out_dir: str | None = None,
                  progress: bool = True) -> BenchReport:
    """Run baseline + ``configs`` interleaved on every (prompt, seed), ``repeats`` rounds; see module docs."""
    from tqdm.auto import tqdm

    from .metrics import psnr, ssim
    from .pipelines.base import accelerate_pipeline_class, restore_pipeline_class
    from .specs import pipeline_transformers

    if not prompts:
        raise ValueError("prompts must not be empty")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is not allowed: it must be >= 1")
    call_kwargs = dict(call_kwargs or {})
    call_kwargs.setdefault("output_type", "np")
    device = next(pipeline_transformers(pipe)[0][1].parameters()).device
    accelerate_pipeline_class(pipe, owner="bench")
    pipe.set_progress_bar_config(disable=True)
    adherence = _adherence_fn(prompts)

    def call(prompt: str, seed: int):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        _reset_peak(device)
        frames = pipe(prompt=prompt, generator=generator, **call_kwargs).frames[0]
        return frames, dict(pipe.last_run), peak_memory(device)

    for cfg in configs:
        if cfg.prepare is not None:
            cfg.prepare(pipe, lambda: call(prompts[0], seeds[0]), call_kwargs)

    baseline_frames: dict[tuple[str, int], Any] = {}
    runs: list[dict] = []
    names = ["baseline"] + [c.name for c in configs]
    total = repeats * len(prompts) * len(seeds) * len(names)
    bar = tqdm(total=total, desc="bench", disable=not progress, unit="run")
    try:
        for r in range(repeats):
            shift = r % max(len(configs), 1)
            order = list(configs[shift:]) + list(configs[:shift])
            for prompt in prompts:
                for seed in seeds:
                    for cfg in [None] + order:
                        name = "baseline" if cfg is None else cfg.name
                        bar.set_postfix_str(name)
                        if cfg is not None:
                            cfg.enable(pipe)
                        try:
                            frames, last, peak = call(prompt, seed)
                        finally:
                            if cfg is not None:
                                cfg.disable(pipe)
                        key = (prompt, seed)
                        if cfg is None and key not in baseline_frames:
                            baseline_frames[key] = frames
                        ref = baseline_frames[key]
                        runs.append({
                            "config": name, "round": r, "prompt": prompt, "seed": seed,
                            "denoise_s": last["denoising_s"], "total_s": last["total_s"], "peak_mib": peak,
                            "psnr": psnr(frames, ref), "ssim": ssim(frames, ref),
                            "adherence": adherence(frames, prompt) if adherence else None,
                            "stats": last["stats"],
                        })
                        bar.update()
    finally:
        bar.close()
        restore_pipeline_class(pipe, owner="bench")

    rows = []
    for name in names:
        mine = [x for x in runs if x["config"] == name]
        pairs = []
        for x in mine:
            base = next(b for b in runs if b["config"] == "baseline" and b["round"] == x["round"]
                        and b["prompt"] == x["prompt"] and b["seed"] == x["seed"])
            pairs.append((base["denoise_s"] / x["denoise_s"], base["total_s"] / x["total_s"]))
        kind = "baseline" if name == "baseline" else next(c.kind for c in configs if c.name == name)
        adh = [x["adherence"] for x in mine if x["adherence"] is not None]
        rows.append({
            "name": name, "kind": kind,
            "denoise_s": statistics.median(x["denoise_s"] for x in mine),
            "total_s": statistics.median(x["total_s"] for x in mine),
            "speedup": statistics.median(p[0] for p in pairs),
            "speedup_e2e": statistics.median(p[1] for p in pairs),
            "psnr": _mean_psnr([x["psnr"] for x in mine]),
            "ssim": statistics.mean(x["ssim"] for x in mine),
            "adherence": statistics.mean(adh) if adh else None,
            "peak_mib": max((x["peak_mib"] for x in mine if x["peak_mib"] is not None), default=None),
            "stats": mine[-1]["stats"],
            "n": len(mine),
        })
    setup = {
        "model": getattr(pipe, "vidaccel_model", {}).get("name", type(pipe).__name__),
        "device": str(device), "prompts": list(prompts), "seeds": list(seeds), "repeats": repeats,
        "call_kwargs": {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str))},
        "torch_threads": torch.get_num_threads(),
    }
    report = BenchReport(rows=rows, runs=runs, setup=setup)
    if out_dir:
        report.save(out_dir)
    return report
