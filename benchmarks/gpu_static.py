"""Static GPU report: every vidaccel Triton kernel × config × {sm_90, sm_100} at real model shapes, compiled on
this machine (no GPU) the way a launch would compile it, and analysed (registers, spills, shared memory, tensor-core
instructions, load widths, pipelining depth, static issue/tensor bound). See :mod:`vidaccel.kernels.static`.

Each op folder ``vidaccel/kernels/<op>/`` whose ``triton_kernel.py`` defines ``static_cases()`` contributes its
cases (folders without it are skipped and listed); an optional ``static_notes()`` adds a Markdown section.
Writes ``<out>.json`` (every figure) and ``<out>.md`` (one row per case and arch). Figures are estimates from
compiled code, never speed.

Examples::

    python benchmarks/gpu_static.py                                  # everything, both archs
    python benchmarks/gpu_static.py --ops attention --main-only      # the CI subset
    python benchmarks/gpu_static.py --filter block_sparse/wan480p --archs 90 --out /tmp/gs
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("TRITON_INTERPRET", None)  # the interpreter replaces the compiler

from vidaccel.kernels import static  # noqa: E402

KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vidaccel", "kernels")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "gpu_static")
logger = logging.getLogger("gpu_static")


def op_modules(ops: list[str] | None = None) -> tuple[dict, list[str]]:
    """``{op: triton_kernel module}`` for every op folder with ``static_cases()``, and the folders skipped."""
    found, skipped = {}, []
    for op in sorted(os.listdir(KERNELS)):
        if ops and op not in ops:
            continue
        if not os.path.isfile(os.path.join(KERNELS, op, "triton_kernel.py")):
            continue
        module = importlib.import_module(f"vidaccel.kernels.{op}.triton_kernel")
        if hasattr(module, "static_cases"):
            found[op] = module
        else:
            skipped.append(op)
    if ops:
        missing = sorted(set(ops) - set(found) - set(skipped))
        if missing:
            raise SystemExit(f"--ops {','.join(missing)}: no such kernel folder with a triton_kernel.py")
    return found, skipped


_CASES: dict = {}


def _cases_of(op: str) -> dict:
    if op not in _CASES:
        module = importlib.import_module(f"vidaccel.kernels.{op}.triton_kernel")
        _CASES[op] = {c.name: c for c in module.static_cases()}
    return _CASES[op]


def _run(task: tuple[str, str, int]) -> dict:
    op, name, arch = task
    row = static.run_case(_cases_of(op)[name], arch)
    row["op"] = op
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="", help="comma-separated op folders (default: all with static_cases)")
    ap.add_argument("--archs", default="90,100", help="compute capabilities, comma-separated (default 90,100)")
    ap.add_argument("--main-only", action="store_true", help="only the cases marked main=True")
    ap.add_argument("--filter", default="", help="only cases whose name contains this substring")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compile processes")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output path without extension (.json and .md are written)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reason = static.cuda_target_unavailable()
    if reason:
        raise SystemExit(f"cannot compile for CUDA targets here: {reason}")
    archs = [int(a) for a in args.archs.split(",") if a]
    modules, skipped = op_modules([o for o in args.ops.split(",") if o] or None)
    tasks = []
    for op in modules:
        for case in _cases_of(op).values():
            if (args.main_only and not case.main) or (args.filter and args.filter not in case.name):
                continue
            tasks += [(op, case.name, a) for a in archs if a in case.archs]
    logger.info("%d compiles (%s); skipped folders without static_cases(): %s", len(tasks),
                ", ".join(f"{op}: {len(_cases_of(op))} cases" for op in modules), ", ".join(skipped) or "none")
    t0 = time.perf_counter()
    if args.jobs > 1 and len(tasks) > 1:
        import multiprocessing

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = []
            for row in pool.map(_run, tasks):
                rows.append(row)
                logger.info("%-62s sm_%d regs=%s spill=%s %s", row["case"], row["arch"], row.get("regs"),
                            row.get("spill_bytes"), "; ".join(row.get("unmet") or []) or row.get("error", "")[:80])
    else:
        rows = []
        for task in tasks:
            rows.append(_run(task))
            row = rows[-1]
            logger.info("%-62s sm_%d regs=%s spill=%s %s", row["case"], row["arch"], row.get("regs"),
                        row.get("spill_bytes"), "; ".join(row.get("unmet") or []) or row.get("error", "")[:80])
    wall = time.perf_counter() - t0
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # cuda_target_unavailable() above already needs it
        triton_version = None
    meta = {"triton": triton_version, "archs": archs, "ops": list(modules), "skipped_ops": skipped,
            "wall_s": round(wall, 1), "peak_flop_per_clk": static.PEAK_FLOP_PER_CLK,
            "note": "static estimates from code compiled on a CPU machine; not timings"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    md = [f"# Static GPU report\n",
          f"Generated by `python benchmarks/gpu_static.py` (triton {triton_version}, {len(rows)} compiles in "
          f"{wall:.0f} s). Code compiled on a CPU machine for sm_90 (H100/H200) and sm_100 (B200) the way a launch "
          f"compiles it; every figure is an estimate read from the compiled code, not a timing.\n",
          "Columns: registers per thread; spill bytes (stores + loads); shared memory; CTAs per SM allowed by "
          "registers, shared memory and warps; MMA kind and tensor-core instructions in the hot loop; global load "
          "widths in bits per thread-instruction (`ld.global`, `cp.async`) and TMA loads; how many iterations "
          "ahead the hot loop's tile loads are issued (in brackets the `async_wait` depths inside the loop: 0 means "
          "every copy in flight is waited for); synchronous global loads left in the hot loop; issue/tensor = "
          "warp-instruction issue cycles of one hot-loop iteration over the tensor-core cycles of its MMA work at "
          "dense peak (> 1: bound by instruction issue); MUFU/tensor likewise for the exp2 unit (16 lanes/SM/clk); "
          "unmet = `expect` targets the case misses.\n"]
    for op in modules:
        op_rows = [r for r in rows if r["op"] == op]
        if op_rows:
            md.append(f"## {op}\n")
            md.append(static.markdown_table(op_rows))
        notes = getattr(modules[op], "static_notes", None)
        if notes:
            md.append(notes())
    if skipped:
        md.append(f"Folders without `static_cases()`: {', '.join(skipped)}.\n")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(md))
    logger.info("wrote %s.json and %s.md (%.0f s)", args.out, args.out, wall)
    failed = [r for r in rows if not r.get("compiles")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
