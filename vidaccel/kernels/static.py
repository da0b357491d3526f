"""Static GPU report: compile a Triton kernel for Hopper (sm_90) / Blackwell (sm_100) on a machine without a GPU
and read what the hardware would run.

Each kernel folder's ``triton_kernel.py`` exposes ``static_cases() -> list[StaticCase]``: every launch config its
wrapper (or autotuner) can pick, at real model shapes. :func:`compile_case` compiles a case **the way a real launch
specialises it**: Triton's own argument binder decides i32 vs i64 for each integer, folds integers equal to 1 into
constants and marks pointers and integers divisible by 16 (``tt.divisibility``), which decides whether loads
vectorise. :func:`analyse` then reads the result:

* registers, spill bytes and stack (``ptxas -v``, run with the flags Triton's own compile uses), shared memory,
  tensor memory (sm_100), and the CTAs per SM those allow;
* tensor-core instructions: PTX ``wgmma`` / ``mma.sync`` / ``tcgen05.mma`` and their SASS forms (``HGMMA``,
  ``QGMMA``, ``HMMA``, ``UTCHMMA`` ...), in the kernel and in its hot loop;
* global load widths (bits per thread per instruction, from PTX ``ld.global`` and ``cp.async``), ``cp.async`` and
  TMA copies;
* the pipelining depth of the hot loop: how many iterations ahead its tile loads are issued (the number of
  shared-memory buffers of its multi-buffered tiles minus one), the ``async_wait`` depths inside the loop, and
  synchronous loads left in the loop;
* a static issue-vs-tensor bound of the hot loop: warp-instructions per iteration × warps / 4 schedulers, against
  the tensor-core cycles its MMA work needs at the architecture's dense peak (values of ``PEAK_FLOP_PER_CLK``).

These figures are **estimates from compiled code, not timings**: they say whether tensor cores are used, whether
registers spill, whether loads are vectorised and pipelined, and whether a loop is bound by instruction issue rather
than by its tensor cores. Only a GPU gives speed.

Example (``TRITON_INTERPRET`` must be unset: the interpreter replaces the compiler)::

    from vidaccel.kernels import static
    from vidaccel.kernels.attention import triton_kernel
    case = next(c for c in triton_kernel.static_cases() if c.main)
    row = static.analyse(static.compile_case(case, 90))
    print(row["regs"], row["spill_bytes"], row["mma_kind"], row["stages_ahead"], row["issue_tensor"])
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ARCHS",
    "EXPECT_KEYS",
    "PEAK_FLOP_PER_CLK",
    "CompiledCase",
    "StaticCase",
    "T",
    "analyse",
    "check_expect",
    "compile_case",
    "cuda_target_unavailable",
    "markdown_table",
    "run_case",
]

logger = logging.getLogger(__name__)

#: Compute capabilities the report compiles for: Hopper (H100 / H200) and Blackwell (B200).
ARCHS = (90, 100)
#: Structural targets a case may ``expect``:
#: ``no_spills`` (True: no spill stores or loads), ``mma`` (True: the arch's native async tensor-core MMA,
#: wgmma on sm_90 and tcgen05 on sm_100, in the hot loop; ``"any"``: any tensor-core MMA, mma.sync included),
#: ``no_byte_loads`` (True: no 8-bit-wide global load instruction), ``stages_ahead`` (int: the hot loop's tile loads
#: are issued at least this many iterations before use), ``max_issue_tensor`` (float: static issue/tensor bound of
#: the hot loop at most this).
EXPECT_KEYS = ("no_spills", "mma", "no_byte_loads", "stages_ahead", "max_issue_tensor")
#: Dense tensor-core peak per SM per clock (FLOP), by arch and operand type. sm_90: H100 SXM (989 TFLOPS bf16 at
#: 132 SMs × 1.83 GHz = 4096); sm_100: B200 (2× Hopper per SM for bf16 / fp8, 4× for fp4). Assumptions, not
#: measurements; used only for the issue/tensor ratio.
PEAK_FLOP_PER_CLK = {
    90: {"bf16": 4096, "f16": 4096, "tf32": 2048, "fp8": 8192, "i8": 8192},
    100: {"bf16": 8192, "f16": 8192, "tf32": 4096, "fp8": 16384, "fp4": 32768, "i8": 16384},
}
_REGS_PER_SM = 65536
_SMEM_PER_SM = 233472  # 228 KiB per SM on sm_90 / sm_100; 227 KiB usable per CTA (+1 KiB reserved per CTA)
SMEM_PER_CTA = 232448
_WARPS_PER_SM = 64
_ARCH_NAME = {90: "sm_90a", 100: "sm_100a"}
_NATIVE_MMA = {90: "wgmma", 100: "tcgen05"}


@dataclass
class StaticCase:
    """One launch of one kernel at a real shape. See the module docs and ``static_cases()`` in each kernel folder."""

    name: str  # "attention/block_sparse/wan480p/bm128", unique
    kernel: Any  # the @triton.jit function (or an autotuner / heuristics wrapper around it)
    args: tuple  # what a real launch passes: T(dtype) mock tensors, plain Python ints / floats for scalars
    kwargs: dict  # constexprs + num_warps / num_stages (/ num_ctas, maxnreg), exactly as the wrapper launches
    archs: tuple = ARCHS
    main: bool = False  # the op's main config: the CI structural test compiles it and checks ``expect``
    expect: dict = field(default_factory=dict)
    shape: str = ""  # human label of the real shape

    def __post_init__(self):
        bad = sorted(set(self.expect) - set(EXPECT_KEYS))
        if bad:
            raise ValueError(f"StaticCase {self.name!r}: expect keys {bad} are not allowed; allowed: "
                             f"{', '.join(EXPECT_KEYS)}")
        for a in self.archs:
            if a not in _ARCH_NAME:
                raise ValueError(f"StaticCase {self.name!r}: arch {a!r} is not allowed; allowed: "
                                 f"{', '.join(map(str, _ARCH_NAME))}")


@dataclass
class CompiledCase:
    """A case compiled for one arch: Triton's ``CompiledKernel`` (``.asm``: ttir, ttgir, ptx, cubin; ``.metadata``),
    the signature the binder chose (``"i32"``, ``"i64"``, ``"constexpr"``, pointer types) and the compile time."""

    case: StaticCase
    arch: int
    kernel: Any
    signature: dict
    compile_s: float


def T(dtype):
    """A mock tensor argument of ``dtype`` whose data pointer is 0 (256-byte aligned, like a fresh CUDA
    allocation), so the binder marks it divisible by 16 as it would a real one."""
    from triton.runtime.jit import MockTensor

    return MockTensor(dtype)


def cuda_target_unavailable() -> str | None:
    """Why this machine cannot compile Triton kernels for a CUDA target (``None`` when it can)."""
    try:
        import triton  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas
    except Exception as e:  # ImportError, or a triton build without the NVIDIA backend
        return f"triton's NVIDIA backend cannot be imported: {type(e).__name__}: {e}"
    try:
        path = get_ptxas(90).path
    except Exception as e:  # noqa: BLE001  (a missing binary raises from the knob)
        return f"ptxas not found: {type(e).__name__}: {e}"
    if not path or not os.path.exists(path):
        return f"ptxas not found at {path!r}"
    return None


def _jit_fn(kernel):
    while not hasattr(kernel, "params"):  # Autotuner / Heuristics wrap the JITFunction in .fn
        kernel = kernel.fn
    return kernel


def compile_case(case: StaticCase, arch: int) -> CompiledCase:
    """Compile ``case`` for compute capability ``arch`` as ``kernel[grid](*args, **kwargs)`` would on such a GPU."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from ._backend import triton_interpreting

    if triton_interpreting():
        raise RuntimeError("compile_case needs TRITON_INTERPRET unset: under the interpreter triton.jit makes "
                           "Python functions, not compilable kernels")
    if arch not in _ARCH_NAME:
        raise ValueError(f"arch={arch!r} is not allowed; allowed: {', '.join(map(str, _ARCH_NAME))}")
    t0 = time.perf_counter()
    fn = _jit_fn(case.kernel)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kw = dict(case.kwargs)
    kw.setdefault("enable_fp_fusion", True)  # Triton's default; explicit to silence its deprecation warning
    kw["debug"] = kw.get("debug", fn.debug) or knobs.runtime.debug
    kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kw["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    bound, spec, opts = binder(*case.args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    src = ASTSource(fn, signature, constexprs, attrs)
    compiled = triton.compile(src, target=target, options=options.__dict__)
    return CompiledCase(case, arch, compiled, dict(signature), time.perf_counter() - t0)


# -- analysis ----------------------------------------------------------------------------------------------------
def _ptxas_usage(ptx: str, arch: int, fp_fusion: bool) -> dict:
    """ptxas -v with the flags of Triton's ``make_cubin`` (line info, register allocator level 2)."""
    from triton.backends.nvidia.compiler import get_ptxas

    cmd = [get_ptxas(arch).path, "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v",
           "--regAllocOptLevel=2", f"--gpu-name={_ARCH_NAME[arch]}"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        log = subprocess.run([*cmd, path, "-o", os.path.join(d, "k.o")], capture_output=True, text=True).stderr
    out: dict = {"regs": None, "stack": None, "spill_store_bytes": None, "spill_load_bytes": None}
    m = re.search(r"Used (\d+) registers", log)
    if m:
        out["regs"] = int(m.group(1))
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        out["stack"], out["spill_store_bytes"], out["spill_load_bytes"] = map(int, m.groups())
    return out


def _sass(cubin: bytes) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = os.path.join(os.path.dirname(get_ptxas(90).path), "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True).stdout


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def _sass_instructions(sass: str) -> list[tuple[int, str]]:
    out = []
    for line in sass.splitlines():
        m = _SASS_LINE.search(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def _opcode(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def _is_mma(op: str) -> bool:
    return "MMA" in op.split(".")[0]


def _sass_hot_loop(ins: list[tuple[int, str]]) -> list[str]:
    """Body of the innermost loop (backward branch) holding tensor-core instructions, else of the largest loop.

    sm_100 code also branches backwards from out-of-line mbarrier-retry blocks at the end of the function; those
    spans are larger than the loop they wait in, so the smallest span holding MMAs is the loop."""
    spans = []
    addr_index = {a: i for i, (a, _) in enumerate(ins)}
    for i, (addr, text) in enumerate(ins):
        m = re.search(r"\bBRA(?:\.\w+)*\s+(?:!?U?P\w+,\s*)?(0x[0-9a-f]+)", text)
        if m:
            target = int(m.group(1), 16)
            if target <= addr and target in addr_index:
                spans.append((addr_index[target], i))
    if not spans:
        return []
    with_mma = [s for s in spans if any(_is_mma(_opcode(t)) for _, t in ins[s[0]:s[1] + 1])]
    j, i = min(with_mma, key=lambda s: s[1] - s[0]) if with_mma else max(spans, key=lambda s: s[1] - s[0])
    return [t for _, t in ins[j:i + 1]]


_DOT_OPS = ("ttng.warp_group_dot ", "ttng.tc_gen5_mma ", "ttng.tc_gen5_mma_scaled ", "tt.dot ", "tt.dot_scaled ")
_TYPE = re.compile(r"(?:!ttg\.memdesc|tensor)<((?:\d+x)+)(\w+)")


def _ttgir_loops(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line indices of every ``scf.for`` region (the closing brace at the same indentation)."""
    out = []
    for i, line in enumerate(lines):
        if "scf.for " in line:
            indent = len(line) - len(line.lstrip())
            for j in range(i + 1, len(lines)):
                lj = lines[j]
                if lj.strip().startswith("}") and len(lj) - len(lj.lstrip()) == indent:
                    out.append((i, j))
                    break
    return out


def _dot_flops(line: str) -> tuple[int, str] | None:
    """FLOPs and operand class of one dot line of TTGIR (per CTA)."""
    sig = line.split(" : ", 1)[-1] if " : " in line else ""
    types = _TYPE.findall(sig)
    if len(types) < 2:
        return None
    a_dims = [int(x) for x in types[0][0].rstrip("x").split("x")]
    a_type = types[0][1]
    if "tc_gen5_mma" in line:
        if len(types) < 3:
            return None
        c_dims = [int(x) for x in types[2][0].rstrip("x").split("x")]
    else:
        out = re.search(r"->\s*tensor<((?:\d+x)+)", line)
        if not out:
            return None
        c_dims = [int(x) for x in out.group(1).rstrip("x").split("x")]
    m, n, k = c_dims[-2], c_dims[-1], a_dims[-1]
    if "e2m1" in line or "fp4" in line.lower():
        kind = "fp4"
        if a_type == "i8":  # two e2m1 values per byte
            k *= 2
    elif a_type.startswith("f8"):
        kind = "fp8"
    elif a_type in ("bf16", "f16"):
        kind = a_type
    elif a_type == "f32":
        kind = "tf32"
    elif a_type == "i8":
        kind = "i8"
    else:
        kind = a_type
    return 2 * m * n * k, kind


def _hot_loop_ttgir(ttgir: str) -> dict:
    lines = ttgir.splitlines()
    loops = _ttgir_loops(lines)

    def has_dot(span):
        return any(any(op in lines[x] for op in _DOT_OPS) for x in range(span[0], span[1] + 1))

    dotted = [s for s in loops if has_dot(s)]
    innermost = [s for s in dotted if not any(o != s and s[0] < o[0] and o[1] < s[1] for o in dotted)]
    out: dict = {"hot_loops": len(innermost)}
    # multi-buffered shared-memory tiles: !ttg.memdesc<N x R x C ...> allocated without a source (loop buffers)
    depths = []
    for line in lines:
        if "ttg.local_alloc :" in line and "mutable" in line:
            m = _TYPE.search(line.split("->", 1)[-1])
            if m:
                dims = [int(x) for x in m.group(1).rstrip("x").split("x")]
                if len(dims) >= 3 and min(dims[-2:]) >= 8:
                    depths.append(dims[0])
    if not innermost:
        return out
    # the loop with the most MMA work (kernels with several specialised loops keep one per constexpr branch)
    best = None
    for s in innermost:
        flops, kinds = 0, Counter()
        for x in range(s[0], s[1] + 1):
            if any(op in lines[x] for op in _DOT_OPS):
                r = _dot_flops(lines[x])
                if r:
                    flops += r[0]
                    kinds[r[1]] += 1
        if best is None or flops > best[1]:
            best = (s, flops, kinds)
    s, flops, kinds = best
    body = lines[s[0] + 1:s[1]]
    out["mma_flops_per_iter"] = flops
    out["mma_operands"] = kinds.most_common(1)[0][0] if kinds else None
    out["async_copies_in_loop"] = sum(("async_copy_global_to_local" in x or "async_tma_copy" in x
                                       or "async_tma_gather" in x) for x in body)
    out["loop_async_waits"] = sorted({int(m) for x in body for m in re.findall(r"ttg\.async_wait.*?\{num = (\d+)", x)})
    # synchronous global loads left in the loop (tt.load, not converted to cp.async / TMA), by rank
    sync = [x for x in body if re.search(r"= tt\.load ", x)]
    out["sync_loads_in_loop"] = len(sync)
    tile_sync = 0
    for x in sync:
        m = re.search(r":\s*tensor<((?:\d+x)+)", x)
        if m and len(m.group(1).rstrip("x").split("x")) >= 2:
            tile_sync += 1
    out["tile_buffers"] = sorted(set(depths))
    if tile_sync or (not depths and out["async_copies_in_loop"] == 0):
        out["stages_ahead"] = 0
    elif depths:
        out["stages_ahead"] = min(depths) - 1
    else:
        out["stages_ahead"] = 0
    return out


def _ptx_counts(ptx: str) -> dict:
    out: dict = {}
    out["ptx_wgmma"] = len(re.findall(r"\bwgmma\.mma_async", ptx))
    out["ptx_mma_sync"] = len(re.findall(r"\bmma\.sync\.aligned", ptx))
    out["ptx_tcgen05_mma"] = len(re.findall(r"\btcgen05\.mma\b", ptx))
    out["tma_loads"] = len(re.findall(r"\bcp\.async\.bulk\.tensor\.\w+\.shared::cluster\.global", ptx)) + len(
        re.findall(r"\bcp\.async\.bulk\.tensor\.\w+\.shared::cta\.global", ptx))
    widths: Counter = Counter()
    for m in re.finditer(r"\bld\.global((?:\.[\w:]+)*)", ptx):
        mods = m.group(1).split(".")
        vec = next((int(x[1:]) for x in mods if re.fullmatch(r"v\d", x)), 1)
        bits = next((int(x[1:]) for x in mods if re.fullmatch(r"[bsuf]\d+", x)), None)
        if bits:
            widths[f"b{vec * bits}"] += 1
    out["ld_global_widths"] = dict(sorted(widths.items(), key=lambda kv: int(kv[0][1:])))
    cp: Counter = Counter()
    for m in re.finditer(r"\bcp\.async\.c[ag]\.shared\.global[^\n;]*?\],\s*(0x[0-9a-f]+|\d+)", ptx):
        cp[f"b{int(m.group(1), 0) * 8}"] += 1
    out["cp_async_widths"] = dict(sorted(cp.items(), key=lambda kv: int(kv[0][1:])))
    out["byte_loads"] = widths.get("b8", 0)
    return out


def _ctas_per_sm(regs, warps, smem) -> int | None:
    if regs is None:
        return None
    per_warp = ((regs + 7) // 8) * 8 * 32
    by_regs = _REGS_PER_SM // (per_warp * warps)
    by_smem = _SMEM_PER_SM // (smem + 1024)
    return min(by_regs, by_smem, _WARPS_PER_SM // warps, 32)


def analyse(compiled: CompiledCase) -> dict:
    """Structural figures of a compiled case (see the module docs). Keys are stable; values ``None`` when a
    figure could not be read."""
    k, arch = compiled.kernel, compiled.arch
    md = k.metadata
    warps = md.num_warps
    r: dict = {"num_warps": warps, "num_stages": md.num_stages, "shared_bytes": md.shared,
               "tmem_cols": getattr(md, "tmem_size", 0) or 0}
    r.update(_ptxas_usage(k.asm["ptx"], arch, getattr(md, "enable_fp_fusion", True)))
    st, ld = r["spill_store_bytes"], r["spill_load_bytes"]
    r["spill_bytes"] = None if st is None else st + ld
    r["ctas_per_sm"] = _ctas_per_sm(r["regs"], warps, md.shared)
    r.update(_ptx_counts(k.asm["ptx"]))
    ins = _sass_instructions(_sass(k.asm["cubin"]))
    ops = Counter(_opcode(t).split(".")[0] for _, t in ins)
    r["sass_mma"] = {op: n for op, n in sorted(ops.items()) if _is_mma(op)}
    r["sass_local"] = ops.get("LDL", 0) + ops.get("STL", 0)
    native = {90: r["ptx_wgmma"], 100: r["ptx_tcgen05_mma"]}[arch]
    r["mma_kind"] = _NATIVE_MMA[arch] if native else ("mma.sync" if r["ptx_mma_sync"] else None)
    body = _sass_hot_loop(ins)
    loop_ops = Counter(_opcode(t) for t in body)
    r["loop_instrs"] = len(body)
    r["loop_mma"] = sum(n for op, n in loop_ops.items() if _is_mma(op))
    r["loop_mufu"] = sum(n for op, n in loop_ops.items() if op.startswith("MUFU"))
    r["loop_depbar"] = sorted({int(m, 16) for t in body for m in re.findall(r"^DEPBAR\.LE SB0, (0x[0-9a-f]+)",
                                                                           re.sub(r"^@!?U?P\w+\s+", "", t))})
    r.update(_hot_loop_ttgir(k.asm["ttgir"]))
    flops, kind = r.get("mma_flops_per_iter"), r.get("mma_operands")
    peak = PEAK_FLOP_PER_CLK[arch].get(kind or "", None)
    if flops and peak and body and r["loop_mma"]:
        tensor = flops / peak
        issue = len(body) * warps / 4  # 4 schedulers per SM, one warp-instruction per clock each
        r["tensor_cycles"] = round(tensor, 1)
        r["issue_cycles"] = round(issue, 1)
        r["issue_tensor"] = round(issue / tensor, 2)
        r["mufu_tensor"] = round(r["loop_mufu"] * warps * 32 / 16 / tensor, 2)  # 16 MUFU lanes per SM per clock
    else:
        r["tensor_cycles"] = r["issue_cycles"] = r["issue_tensor"] = r["mufu_tensor"] = None
    r["int_signature"] = {n: t for n, t in compiled.signature.items() if t in ("i32", "i64")}
    return r


def check_expect(row: dict, expect: dict, arch: int) -> list[str]:
    """The ``expect`` targets that ``row`` (from :func:`analyse`) misses, as readable sentences (empty: all met)."""
    bad = []
    for key, want in expect.items():
        if key == "no_spills" and want:
            if row.get("spill_bytes") != 0 or row.get("sass_local"):
                bad.append(f"spills: {row.get('spill_bytes')} bytes, {row.get('sass_local')} local ld/st in SASS")
        elif key == "mma" and want:
            if not row.get("loop_mma"):
                bad.append("no tensor-core MMA in the hot loop")
            elif want is True and row.get("mma_kind") != _NATIVE_MMA[arch]:
                bad.append(f"hot loop uses {row.get('mma_kind')}, not {_NATIVE_MMA[arch]}")
        elif key == "no_byte_loads" and want:
            if row.get("byte_loads"):
                bad.append(f"{row['byte_loads']} byte-wide global loads")
        elif key == "stages_ahead":
            if (row.get("stages_ahead") or 0) < want:
                bad.append(f"tile loads {row.get('stages_ahead')} iteration(s) ahead, want >= {want}")
        elif key == "max_issue_tensor":
            if row.get("issue_tensor") is None or row["issue_tensor"] > want:
                bad.append(f"issue/tensor {row.get('issue_tensor')} > {want}")
    return bad


def run_case(case: StaticCase, arch: int) -> dict:
    """Compile and analyse one case for one arch; a failure is recorded in the row (``error``), never raised."""
    row: dict = {"case": case.name, "arch": arch, "shape": case.shape, "main": case.main,
                 "config": _config_label(case.kwargs)}
    t0 = time.perf_counter()
    try:
        compiled = compile_case(case, arch)
        row["compiles"] = True
        row.update(analyse(compiled))
        row["unmet"] = check_expect(row, case.expect, arch)
    except Exception as e:  # noqa: BLE001  (a report lists compile failures instead of stopping)
        row["compiles"] = False
        row["error"] = f"{type(e).__name__}: {e}"[:2000]
        logger.warning("%s sm_%d does not compile: %s", case.name, arch, row["error"].splitlines()[0])
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    return row


def _config_label(kwargs: dict) -> str:
    blocks = [f"{k}={v}" for k, v in kwargs.items() if k.startswith("BLOCK") or k in ("GROUP_M", "SPLIT")]
    launch = [f"{k}={kwargs[k]}" for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs]
    return " ".join(blocks + launch)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        return " ".join(f"{k}×{n}" for k, n in v.items()) or "–"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "–"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    """One line per (case, arch): the figures of :func:`analyse` that decide whether a kernel can be fast."""
    head = ("| case | arch | config | regs | spill B | smem KB | CTA/SM | MMA (loop) | ld.global widths | cp.async / TMA "
            "| stages ahead (waits) | sync loads in loop | issue/tensor | MUFU/tensor | unmet |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if not r.get("compiles"):
            lines.append(f"| {r['case']} | sm_{r['arch']} | {r['config']} | does not compile: "
                         f"{r.get('error', '').splitlines()[0][:120]} |" + " |" * 11)
            continue
        mma = f"{r['mma_kind'] or 'none'} ({r['loop_mma']})"
        cp = f"{_fmt(r['cp_async_widths'])} / {r['tma_loads']}"
        waits = f"{_fmt(r.get('stages_ahead'))} ({_fmt(r.get('loop_async_waits'))})"
        lines.append(
            f"| {r['case']} | sm_{r['arch']} | {r['config']} | {r['regs']} | {_fmt(r['spill_bytes'])} | "
            f"{r['shared_bytes'] / 1024:.0f} | {_fmt(r['ctas_per_sm'])} | {mma} | {_fmt(r['ld_global_widths'])} | "
            f"{cp} | {waits} | {_fmt(r.get('sync_loads_in_loop'))} | {_fmt(r['issue_tensor'])} | "
            f"{_fmt(r['mufu_tensor'])} | {'; '.join(r.get('unmet') or []) or '–'} |")
    return "\n".join(lines) + "\n"
