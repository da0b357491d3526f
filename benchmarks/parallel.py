"""Context parallelism: speed, communication and memory per rank, and the difference to one process.

Modes:

* default (CPU): one random-weight Wan-shaped transformer (4 layers, 4 heads x 64, 1,024 tokens) per technique,
  one process (1 and 2 threads) vs 2 gloo processes of 1 thread each under Ulysses and under ring: time per
  denoising step (one transformer call), the share of it spent in collectives, the bytes they move, and the peak
  RSS per rank. **CPU timings of gloo over loopback say nothing about NVLink speed-ups**: on a GPU the
  all-to-all / all-gather run over NVLink at hundreds of GB/s while attention dominates; here a 2-core machine
  (shared with other jobs) computes slowly and gloo copies through the kernel's TCP stack. They show that every
  technique runs and what it sends, not how fast N GPUs are.
* ``--matrix``: the difference of every technique's final latents under Ulysses and ring to one process, on the
  tiny pipelines of Wan 2.1, Wan 2.2 (both experts) and CogVideoX 1.0 / 1.5 (``vidaccel.testing``), plus
  ring x Ulysses on 4 ranks for Wan 2.1.
* ``--gpu``: for a machine with N GPUs, launched by ``torchrun --nproc-per-node N benchmarks/parallel.py --gpu
  --ulysses N`` (or ``--ring N``; ``--nproc-per-node 1`` without degrees for the one-GPU baseline): a
  random-weight transformer of Wan2.1-T2V-14B's config in bf16 at 720p (81 frames, 75,600 tokens), the same
  measurements, rank 0 writing ``parallel_gpu_<mode>.json``. ``--smoke`` runs that code on a tiny config (on CPU
  with the test shim) to check it.

Usage::

    python benchmarks/parallel.py                  # CPU figures  -> benchmarks/results/parallel_cpu.{json,md}
    python benchmarks/parallel.py --matrix         # differences  -> benchmarks/results/parallel_matrix.{json,md}
    python benchmarks/parallel.py [--matrix] --record-only   # figures.json from the existing JSON
    torchrun --nproc-per-node 8 benchmarks/parallel.py --gpu --ulysses 8

The CPU and matrix modes also record their tables in benchmarks/results/figures.json (sections ``parallel_cpu``
and ``parallel_matrix``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # parallel_support: forked gloo ranks, the CPU shim

import torch  # noqa: E402

from _common import add_record_options, describe_machine, machine, print_table, run_date  # noqa: E402

RESULTS = os.path.join(HERE, "results")

#: CPU workload: a Wan-shaped transformer small enough for a shared 2-core machine.
CPU_MODEL = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
                 text_dim=64, freq_dim=256, ffn_dim=1024, num_layers=4, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
CPU_LATENT = (1, 16, 4, 32, 32)  # token grid (4, 16, 16): 1,024 tokens
#: Wan2.1-T2V-14B's transformer config (40 layers, dim 5120 = 40 heads x 128, ffn 13824).
WAN14_MODEL = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN14_LATENT_720P = (1, 16, 21, 90, 160)  # 81 frames at 1280x720: token grid (21, 45, 80) = 75,600 tokens
TEXT_TOKENS = 512


def _techniques(grid, n_layers):
    """``{name: (configs, self-attention backend or None)}``; each is applied to the same model and removed."""
    import vidaccel

    t, h, w = grid
    window = (max(1, t // 2), max(1, h // 2), max(1, w // 2))
    return {
        "dense": ([], None),
        "flash (vidaccel_flash)": ([], "vidaccel_flash"),
        "cache (call, every 2nd)": ([vidaccel.CacheConfig(threshold=float("inf"), policy="call", interval=2,
                                                          warmup_steps=2, final_steps=0)], None),
        "sliding tile (1/8 of pairs)": ([vidaccel.SlidingWindowConfig(window=window, tile=window)], None),
        "linear (elu, all layers)": ([vidaccel.LinearAttentionConfig(layers=list(range(n_layers)),
                                                                     feature_map="elu")], None),
        "fp8": ([vidaccel.QuantConfig(format="fp8")], None),
    }


# -- collective accounting -----------------------------------------------------------------------------------------
class Collectives:
    """Times (synchronously) and sizes every collective diffusers and vidaccel issue."""

    def __init__(self):
        self.seconds = 0.0
        self.bytes = 0
        self.calls = 0
        self._undo = []

    def _wrap(self, owner, name):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            wait = getattr(out, "wait", None)
            if callable(wait) and type(out).__name__ == "AsyncCollectiveTensor":
                out = wait()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - start
            tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.bytes += tensor.numel() * tensor.element_size() if tensor is not None else 0
            self.calls += 1
            return out

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def __enter__(self):
        import torch.distributed as dist
        import torch.distributed._functional_collectives as funcol

        for name in ("all_gather_tensor", "all_to_all_single", "permute_tensor"):
            self._wrap(funcol, name)
        self._wrap(dist, "all_reduce")
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        return False

    def reset(self):
        self.seconds, self.bytes, self.calls = 0.0, 0, 0


def _peak_memory_mb(device) -> float:
    from vidaccel.memory import peak_memory

    return peak_memory(torch.device(device))


def _build(config, dtype, device):
    """A random-weight transformer made directly on ``device`` in ``dtype`` (14B parameters never pass the host)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return WanTransformer3DModel(**config).eval()
    finally:
        torch.set_default_dtype(previous)


def _measure(model, inputs, steps: int, collectives: Collectives | None):
    """Median seconds per step over ``steps`` transformer calls at falling timesteps (after a warm-up run)."""
    import vidaccel

    timesteps = torch.linspace(999, 100, steps)
    times, comm = [], []
    for run in range(2):  # run 0 warms up (and the cache's warm-up calls happen in both runs alike)
        vidaccel.reset(model)
        for t in timesteps:
            if collectives is not None:
                collectives.reset()
            start = time.perf_counter()
            with torch.no_grad():
                model(timestep=t.view(1).to(inputs["hidden_states"].device), **inputs, return_dict=False)
            if inputs["hidden_states"].device.type == "cuda":
                torch.cuda.synchronize()
            if run:
                times.append(time.perf_counter() - start)
                if collectives is not None:
                    comm.append((collectives.seconds, collectives.bytes))
    out = {"step_s": statistics.median(times), "mean_step_s": statistics.mean(times)}
    if comm:
        total = sum(times)
        out["comm_share"] = sum(c[0] for c in comm) / total if total else 0.0
        out["comm_mb_per_step"] = statistics.mean(c[1] for c in comm) / 2**20
    return out


def _run_techniques(model_config, latent, dtype, device, steps, parallel_fields, shim, names=None):
    """Every technique on one model (context parallelism first, techniques applied and removed after it):
    ``{technique: measurements}``."""
    import vidaccel
    from vidaccel.core.attention_backend import select, selected
    from vidaccel.families import family_for
    from vidaccel.parallel import ParallelConfig
    from vidaccel.parallel.model import enable_parallelism

    torch.manual_seed(1)
    x = torch.randn(*latent, dtype=dtype, device=device)
    text_len = TEXT_TOKENS if model_config["text_dim"] > 1000 else 64
    text = torch.randn(1, text_len, model_config["text_dim"], dtype=dtype, device=device)
    inputs = dict(hidden_states=x, encoder_hidden_states=text)
    model = _build(model_config, dtype, device)
    family = family_for(model)
    collectives = None
    if parallel_fields:
        with shim():
            enable_parallelism(model, ParallelConfig(**parallel_fields))
        collectives = Collectives()
    results = {}
    techniques = _techniques(family.input_grid(model, x), len(family.blocks(model)))
    for name, (configs, attention) in techniques.items():
        if names and name not in names:
            continue
        if configs:
            vidaccel.apply(model, *configs)
        before = {}
        if attention:
            for i, attn in family.self_attentions(model):
                before[i] = selected(attn.processor)
                select(attn.processor, attention)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with collectives if collectives is not None else contextlib.nullcontext():
            results[name] = _measure(model, inputs, steps, collectives)
        results[name]["peak_memory_mb"] = _peak_memory_mb(device)
        for i, attn in family.self_attentions(model):
            if i in before:
                select(attn.processor, before[i])
        if configs:
            vidaccel.remove(model)
    return results


# -- CPU mode ---------------------------------------------------------------------------------------------------
def _cpu_rank(rank, world, fields, steps):
    from parallel_support import cpu_device_count_shim

    return _run_techniques(CPU_MODEL, CPU_LATENT, torch.float32, "cpu", steps, fields, cpu_device_count_shim)


def _cpu_single(threads, steps):
    torch.set_num_threads(threads)
    return _run_techniques(CPU_MODEL, CPU_LATENT, torch.float32, "cpu", steps, None, contextlib.nullcontext)


def _single_in_child(rank, world, threads, steps):
    return _cpu_single(threads, steps)


def cpu_mode(steps: int) -> dict:
    from parallel_support import run_distributed

    import vidaccel.accel.caching.technique  # noqa: F401  (imported before forking: the ranks inherit them)
    import vidaccel.accel.linear_attention.technique  # noqa: F401
    import vidaccel.accel.quantization.technique  # noqa: F401
    import vidaccel.accel.sliding_window.technique  # noqa: F401
    from vidaccel.core.attention_backend import FLASH, backend_member

    backend_member(FLASH)
    _build(dict(CPU_MODEL, num_layers=1), torch.float32, "cpu")
    runs = {}
    for threads in (1, 2):  # one process, in a forked child so its peak RSS is its own
        runs[f"1 process, {threads} thread{'s' if threads > 1 else ''}"] = run_distributed(
            _single_in_child, threads, steps, world=1, timeout=3600)[0]
    for mode in ("ulysses", "ring"):
        ranks = run_distributed(_cpu_rank, {mode: 2}, steps, world=2, timeout=3600)
        runs[f"2 processes, {mode} 2"] = {
            name: {**ranks[0][name], "peak_memory_mb_rank1": ranks[1][name]["peak_memory_mb"],
                   "step_s_rank1": ranks[1][name]["step_s"]} for name in ranks[0]}
    base = runs["1 process, 1 thread"]
    rows = []
    for run, per in runs.items():
        for name, m in per.items():
            rows.append({"run": run, "technique": name, "step_s": m["step_s"],
                         "speed-up vs 1 process 1 thread": base[name]["step_s"] / m["step_s"],
                         "comm_share": m.get("comm_share"), "comm_MB/step": m.get("comm_mb_per_step"),
                         "peak_RSS_MB/rank": m["peak_memory_mb"]})
    return {"runs": runs, "rows": rows}


# -- matrix mode -----------------------------------------------------------------------------------------------
def _matrix_rank(rank, world, kind, fields):
    import test_parallel as tp
    from test_parallel import _make, _run

    import vidaccel
    from parallel_support import cpu_device_count_shim
    from vidaccel import QuantConfig
    from vidaccel.parallel import ParallelConfig
    from vidaccel.parallel.model import enable_parallelism

    parallel = ParallelConfig(**fields)
    single, pipe = _make(kind), _make(kind)
    with cpu_device_count_shim():
        enable_parallelism(pipe, parallel)
    mode = "ring" if parallel.ring > 1 else "ulysses"
    cases = tp._cases(kind, mode) + ([] if any(c[0] == "fp8" for c in tp._cases(kind, mode)) else
                                     [("fp8", [QuantConfig(format="fp8")], False)])
    out = {}
    dense = _run(single, kind)
    for name, configs, _ in cases:
        for p in (single, pipe):
            if configs:
                vidaccel.apply(p, *configs)
        ref, got = _run(single, kind), _run(pipe, kind)
        scale = ref.abs().max().item()
        out[name] = {"rel_max_diff": (got - ref).abs().max().item() / scale,
                     "technique_effect": (ref - dense).abs().max().item() / scale}
        for p in (single, pipe):
            vidaccel.remove(p)
    return out


def matrix_mode() -> dict:
    import test_parallel  # noqa: F401  (builds nothing at import)
    from parallel_support import run_distributed

    test_parallel.warm_imports()  # imports in the parent before forking
    out = {}
    for kind in test_parallel.KINDS:
        for mode, fields, world in (("ulysses", {"ulysses": 2}, 2), ("ring", {"ring": 2}, 2)):
            start = time.perf_counter()
            out[f"{kind} / {mode}"] = run_distributed(_matrix_rank, kind, fields, world=world, timeout=3600)[0]
            print(f"{kind} {mode}: {time.perf_counter() - start:.1f}s", flush=True)
    out["wan21 / ring 2 x ulysses 2"] = run_distributed(_matrix_rank, "wan21", {"ring": 2, "ulysses": 2}, world=4,
                                                        timeout=3600)[0]
    return out


# -- GPU mode -----------------------------------------------------------------------------------------------------
def gpu_mode(args) -> dict | None:
    from vidaccel.parallel import launch

    launch.init_distributed()
    fields = {k: v for k, v in (("ulysses", args.ulysses), ("ring", args.ring)) if v > 1}
    if args.smoke:
        from parallel_support import cpu_device_count_shim as shim

        config, latent, dtype, device = dict(CPU_MODEL, num_layers=2), (1, 16, 4, 16, 16), torch.float32, "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA GPUs (use --smoke to exercise the code on CPU)")
        shim = contextlib.nullcontext
        config, latent, dtype, device = WAN14_MODEL, WAN14_LATENT_720P, torch.bfloat16, "cuda"
    results = _run_techniques(config, latent, dtype, device, args.steps, fields or None, shim,
                              names=args.techniques)
    every = [results]
    if launch.is_distributed():
        import torch.distributed as dist

        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, results)
    if not launch.is_main_process():
        return None
    return {"ranks": launch.world_size(), "parallel": fields, "config": "tiny (smoke)" if args.smoke else
            "Wan2.1-T2V-14B, bf16, 720p 81 frames (75,600 tokens)", "per_rank": every}


TIMING_NOTE = ("CPU timings of gloo over loopback on a shared 2-core machine do not predict NVLink speed-ups: they "
               "show that each technique runs under context parallelism, what it sends and the memory per rank.")
MATRIX_NOTE = ("max |parallel - one process| / max |one process| over the final latents of a whole pipeline call "
               "(tiny random-weight pipelines, fp32, CPU, gloo); the last column is the technique's own change to "
               "the output, for scale. FP8 with dynamic activations: an ulp-level difference can cross an FP8 "
               "rounding step, which the trajectory carries on (see tests/test_parallel.py).")


def _write(name: str, payload: dict, table: str, command: str, note: str = TIMING_NOTE) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    payload = {"machine": machine(), "command": command, "note": note, **payload}
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=2, default=str)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(f"# {name}\n\n`{command}` — {payload['machine']['date']}, {payload['machine']['cpu']} "
                f"({payload['machine']['cpu_count']} cores), torch {payload['machine']['torch']}\n\n{note}\n\n"
                f"{table}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", action="store_true", help="difference to one process, every technique")
    parser.add_argument("--gpu", action="store_true", help="under torchrun on N GPUs (Wan2.1-14B config, 720p)")
    parser.add_argument("--smoke", action="store_true", help="with --gpu: tiny model on CPU to check the code")
    parser.add_argument("--ulysses", type=int, default=1)
    parser.add_argument("--ring", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed transformer calls per technique")
    parser.add_argument("--techniques", nargs="*", default=None, help="subset of technique names")
    add_record_options(parser)
    args = parser.parse_args()
    command = " ".join(["python benchmarks/parallel.py", *sys.argv[1:]])
    if args.record_only:
        if args.gpu:
            raise SystemExit("--record-only records the CPU or --matrix figures; GPU runs are not recorded")
        name = "parallel_matrix" if args.matrix else "parallel_cpu"
        with open(os.path.join(RESULTS, f"{name}.json")) as f:
            (record_matrix if args.matrix else record_cpu)(json.load(f))
        return
    if args.matrix:
        result = matrix_mode()
        rows = [{"family / mode": key, "technique": name, "rel. max diff": v["rel_max_diff"],
                 "technique's own effect": v["technique_effect"]} for key, per in result.items()
                for name, v in per.items()]
        table = print_table(rows, ["family / mode", "technique", "rel. max diff", "technique's own effect"])
        _write("parallel_matrix", {"matrix": result}, table, command, MATRIX_NOTE)
        if args.record:
            with open(os.path.join(RESULTS, "parallel_matrix.json")) as f:
                record_matrix(json.load(f))
    elif args.gpu:
        result = gpu_mode(args)
        if result is not None:
            rows = [{"rank": r, "technique": name, **m} for r, per in enumerate(result["per_rank"])
                    for name, m in per.items()]
            table = print_table(rows, ["rank", "technique", "step_s", "comm_share", "comm_mb_per_step",
                                       "peak_memory_mb"])
            mode = "_".join(f"{k}{v}" for k, v in result["parallel"].items()) or "single"
            _write(f"parallel_gpu_{mode}{'_smoke' if args.smoke else ''}", result, table, command)
    else:
        result = cpu_mode(args.steps)
        table = print_table(result["rows"], ["run", "technique", "step_s", "speed-up vs 1 process 1 thread",
                                             "comm_share", "comm_MB/step", "peak_RSS_MB/rank"])
        _write("parallel_cpu", result, table, command)
        if args.record and not args.techniques:
            with open(os.path.join(RESULTS, "parallel_cpu.json")) as f:
                record_cpu(json.load(f))


def record_cpu(doc: dict) -> None:
    """Put the CPU table (from a parallel_cpu.json) into figures.json, RESULTS.md's source."""
    from figures import record

    def num(v, spec):
        return "—" if v is None else format(v, spec)

    rows = [[r["run"], r["technique"], num(r["step_s"], ".3f"), num(r["speed-up vs 1 process 1 thread"], ".2f") + "×",
             num(r["comm_share"], ".0%"), num(r["comm_MB/step"], ".2f"), num(r["peak_RSS_MB/rank"], ".0f")]
            for r in doc["rows"]]
    notes = [TIMING_NOTE,
             "Workload: a random-weight Wan-shaped transformer (4 layers, 4 heads × 64, ffn 1024), 1,024 tokens, "
             "fp32; time per denoising step = median of the timed transformer calls after a warm-up run; "
             "collectives timed synchronously (comm share = their time over the step's) and sized by their input "
             "tensors; peak RSS of rank 0 (each run in its own forked process)."]
    one = {r["technique"]: r["step_s"] for r in doc["rows"] if r["run"] == "1 process, 1 thread"}
    two = {r["technique"]: r["step_s"] for r in doc["rows"] if r["run"] == "1 process, 2 threads"}
    slower = [two[k] / one[k] for k in two if k in one and two[k] > one[k]]
    if slower:
        notes.append(f"One process with 2 threads ran {min(slower):.1f}–{max(slower):.1f}× slower than with 1 "
                     f"thread for {len(slower)} of {len(two)} techniques; the 2 cores were shared with other jobs, so "
                     "those rows show contention for the cores, not what a second thread gives.")
    record("parallel_cpu", title="Context parallelism on CPU: time, communication and memory per rank",
           command=doc["command"].strip(), machine=describe_machine(doc["machine"], threads=False),
           date=run_date(doc["machine"]),
           model="random-weight Wan-shaped transformer, 4 layers, 1,024 tokens, fp32; 2 gloo processes of 1 thread",
           columns=["run", "technique", "s / step", "speed-up vs 1 process, 1 thread", "comm share", "comm MB / step",
                    "peak RSS MB / rank"], rows=rows, notes=notes)


def record_matrix(doc: dict) -> None:
    """Put a per-family summary of the difference matrix (from a parallel_matrix.json) into figures.json."""
    from figures import record

    matrix = doc["matrix"]
    rows = []
    for key, per in matrix.items():
        diffs = {name: v["rel_max_diff"] for name, v in per.items()}
        exact = sum(d == 0 for d in diffs.values())
        other = {n: d for n, d in diffs.items() if n != "fp8"}
        worst = max(other, key=other.get)
        effects = [v["technique_effect"] for n, v in per.items() if v["technique_effect"] > 0]
        rows.append([key, len(diffs), exact, f"{other[worst]:.1e} ({worst})",
                     f"{diffs['fp8']:.1e}" if "fp8" in diffs else "—", f"{min(effects):.1e}" if effects else "—"])
    every = [(key, name, v["rel_max_diff"]) for key, per in matrix.items() for name, v in per.items()]
    wan_ulysses = [d for key, name, d in every if key.startswith("wan") and key.endswith("/ ulysses")]
    rest = [d for key, name, d in every if name != "fp8" and not (key.startswith("wan") and key.endswith("/ ulysses"))]
    fp8 = [d for key, name, d in every if name == "fp8"]
    inexact_wan = [d for d in wan_ulysses if d > 0]
    summary = (f"bit-identical for Wan under Ulysses in {len(wan_ulysses) - len(inexact_wan)} of {len(wan_ulysses)} "
               "cases" + (f", the others ≤ {max(inexact_wan):.1e} relative" if inexact_wan else "")
               + f"; ≤ {max(rest):.1e} relative elsewhere, except FP8 with dynamic activations (up to "
               f"{max(fp8):.1e})")
    record("parallel_matrix", title="Context parallelism: difference to one process, every technique and family",
           command=doc["command"].strip(), machine=describe_machine(doc["machine"], threads=False),
           date=run_date(doc["machine"]),
           model="tiny random-weight pipelines of vidaccel.testing (Wan 2.1, Wan 2.2 with both experts, CogVideoX 1.0 "
                 "/ 1.5), fp32, 2 gloo ranks (4 for ring 2 × Ulysses 2)",
           columns=["family / mode", "techniques", "bit-identical", "largest rel. max diff but FP8 (technique)",
                    "FP8 (dynamic activations) rel. max diff", "smallest technique effect, for scale"], rows=rows,
           notes=[MATRIX_NOTE, f"Summary: {summary}.",
                  "Per-technique figures: benchmarks/results/parallel_matrix.md (from the same JSON)."],
           figures={"summary": summary})


if __name__ == "__main__":
    main()
