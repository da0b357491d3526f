# size: one op's Triton kernels, their launcher, autotune space and static cases read together; splitting them apart
# would scatter the launch specialisation the static report must reproduce.
"""One block-sparse flash-attention forward in Triton (dense attention is the case "visit every block").

* online softmax in the exp2 domain, fp32 accumulation; fp16 / bf16 operands (fp32 inputs are computed in bf16 on
  a GPU, see :func:`compute_dtype`; the interpreter keeps fp32);
* any head dim: the block is padded to a power of two ≥ 16 and masked (D = 60, 64, 128 ...);
* dense mode: only the last, ragged key block is masked; every interior block runs without masks;
* int64 offsets (75,600 tokens × heads × 128 overflows int32);
* sparse mode works on the tile layout of :mod:`.layout`: query block ``m`` lies in unit ``u = m*BLOCK_M // UNIT``
  and visits the key units of its window, computed from the tile geometry (no index load in the loop, so Triton
  pipelines the key/value loads as in the dense loop); padding keys get ``key_bias`` (-1e30) added to their scores;
* configs are data (:data:`AUTOTUNE_CONFIGS`), pruned per unit, head dim and GPU architecture by
  :func:`prune_configs`; on a GPU the best is measured once per (shape bucket, device) and cached on disk
  (:func:`autotune_dir`); ``VIDACCEL_ATTENTION_CONFIG`` pins one; under the interpreter the first pruned config runs.

Under ``TRITON_INTERPRET=1`` (CPU) ``tl.dot`` on bf16 is wrong, so operands are upcast to fp32 there.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import tempfile
import time

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreting

__all__ = [
    "AUTOTUNE_CONFIGS",
    "CONFIG_ENV",
    "AUTOTUNE_DIR_ENV",
    "autotune_dir",
    "block_sparse_attention_triton",
    "compute_dtype",
    "parse_config",
    "prune_configs",
]

logger = logging.getLogger(__name__)

#: Candidate launch configs (data); :func:`prune_configs` keeps those that fit a launch. The static report
#: (``benchmarks/results/gpu_static.md``) gives each one's registers, pipelining depth and issue/tensor bound:
#: 128×128 with 3 stages (224 KB of shared memory at head dim 128, Hopper / Blackwell only) issues its loads two
#: iterations ahead at the lowest issue/tensor; 64×64 runs 2 CTAs per SM. 128×32 with 4 warps was dropped
#: (250+ registers, spills on sm_100).
AUTOTUNE_CONFIGS: list[dict] = [
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
    dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2),
    dict(BLOCK_M=16, BLOCK_N=16, num_warps=2, num_stages=2),
]
#: Environment variable pinning one config, e.g. ``"BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=3"``.
CONFIG_ENV = "VIDACCEL_ATTENTION_CONFIG"
#: Environment variable overriding the autotune cache folder (default ``~/.cache/vidaccel/autotune/<device>``).
AUTOTUNE_DIR_ENV = "VIDACCEL_AUTOTUNE_DIR"
_CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
#: Shared memory per CTA by compute capability (bytes): configs that cannot fit are never compiled.
_SMEM_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 103: 232448, 120: 101376}


def prune_configs(configs: list[dict], unit: int, block_d: int, capability: int | None = None,
                  elem_bytes: int = 2) -> list[dict]:
    """Configs usable for a unit size (0 = dense), padded head dim and compute capability (``None``: any GPU).

    * blocks must divide the unit (every kernel block lies inside one unit);
    * 128×128 blocks are dropped for head dims above 128;
    * on Hopper and later (capability ≥ 90) a warpgroup (4 warps) needs ≥ 64 query rows for ``wgmma`` /
      ``tcgen05``: configs with ``BLOCK_M < 16 * num_warps`` (BM16 / BM32) could only use ``mma.sync`` and lose;
    * Q plus ``num_stages`` K/V tiles must fit the architecture's shared memory.
    """
    out = []
    for c in configs:
        if unit and (unit % c["BLOCK_M"] or unit % c["BLOCK_N"]):
            continue
        if block_d > 128 and c["BLOCK_M"] * c["BLOCK_N"] > 128 * 64:
            continue
        if capability is not None:
            if capability >= 90 and c["BLOCK_M"] < 16 * c["num_warps"]:
                continue
            smem = (c["BLOCK_M"] + 2 * c["num_stages"] * c["BLOCK_N"]) * block_d * elem_bytes
            if smem > _SMEM_LIMIT.get(capability, 101376):
                continue
        out.append(c)
    if not out:
        raise ValueError(f"no Triton config fits unit={unit} (a multiple of 16 is needed), head dim {block_d} and "
                         f"compute capability {capability}")
    return out


# Reductions and zeros use only Triton builtins: triton.language's own @jit helpers (tl.max, tl.sum,
# tl.zeros) are bound to the compiler or the interpreter when triton is first imported, which in a test
# process may happen before TRITON_INTERPRET=1 is set. tl.reduce with the standard combine functions is
# what tl.max / tl.sum expand to, and the interpreter runs those combine functions vectorised.
_max_combine = tl.standard._elementwise_max
_sum_combine = tl.standard._sum_combine


@triton.jit
def _load_rows(ptrs, rows_in, offs_d, D, MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a [rows, BLOCK_D] tile; masks only what may be out of bounds (unmasked loads vectorise)."""
    if EVEN_D:
        if MASK_ROWS:
            return tl.load(ptrs, mask=rows_in[:, None], other=0.0)
        else:
            return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=rows_in[:, None] & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _attend_block(acc, l_i, m_i, q, K, V, KBias, k_base, v_base, start_n, stride_kl, stride_vl, Lk, D,
                  qk_scale, HAS_BIAS: tl.constexpr, MASK_K: tl.constexpr, EVEN_D: tl.constexpr,
                  UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    in_k = cols < Lk
    rows = cols.to(tl.int64)[:, None]
    k = _load_rows(K + k_base + rows * stride_kl + offs_d[None, :], in_k, offs_d, D, MASK_K, EVEN_D)
    v = _load_rows(V + v_base + rows * stride_vl + offs_d[None, :], in_k, offs_d, D, MASK_K, EVEN_D)
    if HAS_BIAS:  # issued with K and V, so the pipeliner copies it ahead like them (fp32: 8-byte pieces)
        bias = tl.load(KBias + cols)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    if HAS_BIAS:
        s = s + bias[None, :]
    if MASK_K:
        s = tl.where(in_k[None, :], s, -1.0e30)
    m_new = tl.maximum(m_i, tl.reduce(s, 1, _max_combine))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.reduce(p, 1, _sum_combine)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, KBias,
              stride_qb, stride_ql, stride_qh, stride_kb, stride_kl, stride_kh,
              stride_vb, stride_vl, stride_vh, stride_ob, stride_ol, stride_oh,
              H, Lq, Lk, D, qk_scale,
              n_text_units, n_units, NT, NH, NW, WT, WH, WW,
              UNIT: tl.constexpr, SPARSE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_D: tl.constexpr,
              UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, RETURN_LSE: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    tl.static_assert(BLOCK_D >= 16)
    # fp32 operands would run without tensor cores (and spill): the wrapper converts them to bf16 on a GPU
    tl.static_assert(UPCAST or Q.dtype.element_ty != tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_base = b * stride_qb + h * stride_qh
    k_base = b * stride_kb + h * stride_kh
    v_base = b * stride_vb + h * stride_vh
    o_base = b * stride_ob + h * stride_oh
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_q = offs_m < Lq
    q_rows = offs_m.to(tl.int64)[:, None]
    # sparse mode works on the padded tile layout: lengths are whole blocks, nothing to mask but D
    q = _load_rows(Q + q_base + q_rows * stride_ql + offs_d[None, :], in_q, offs_d, D, not SPARSE, EVEN_D)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    if SPARSE:
        tl.static_assert(UNIT % BLOCK_M == 0)
        tl.static_assert(UNIT % BLOCK_N == 0)
        BLOCKS_PER_UNIT: tl.constexpr = UNIT // BLOCK_N
        unit = (pid_m * BLOCK_M) // UNIT
        is_text = unit < n_text_units
        # the query tile's coordinates and the first tile of its window (layout.window_starts: centred,
        # shifted inward at the borders)
        j = tl.maximum(unit - n_text_units, 0)
        st = tl.minimum(tl.maximum(j // (NH * NW) - WT // 2, 0), NT - WT)
        sh = tl.minimum(tl.maximum((j // NW) % NH - WH // 2, 0), NH - WH)
        sw = tl.minimum(tl.maximum(j % NW - WW // 2, 0), NW - WW)
        box = n_text_units + (st * NH + sh) * NW + sw  # key unit of the window's first tile
        # text queries visit every unit; video queries the text units, then the window's tiles in order
        n_visit = tl.where(is_text, n_units, n_text_units + WT * WH * WW)
        for it in range(0, n_visit * BLOCKS_PER_UNIT):
            c = it // BLOCKS_PER_UNIT
            # position in the window box (unsigned: cheaper division; negative for text key units, unused then)
            r = (c - n_text_units).to(tl.uint32)
            a = r // (WH * WW).to(tl.uint32)
            r2 = r - a * (WH * WW).to(tl.uint32)
            bb = r2 // WW.to(tl.uint32)
            in_box = box + ((a * NH + bb) * NW + (r2 - bb * WW)).to(tl.int32)
            key_unit = tl.where(is_text | (c < n_text_units), c, in_box)
            start_n = key_unit.to(tl.int64) * UNIT + (it % BLOCKS_PER_UNIT) * BLOCK_N
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, K, V, KBias, k_base, v_base, start_n,
                                          stride_kl, stride_vl, Lk, D, qk_scale, HAS_BIAS, False, EVEN_D,
                                          UPCAST, DOT_PREC, BLOCK_N, BLOCK_D)
    else:
        n_full = (Lk // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):  # interior blocks: no masks
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, K, V, KBias, k_base, v_base, start_n,
                                          stride_kl, stride_vl, Lk, D, qk_scale, HAS_BIAS, False, EVEN_D,
                                          UPCAST, DOT_PREC, BLOCK_N, BLOCK_D)
        if n_full < Lk:  # the last, ragged block
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, K, V, KBias, k_base, v_base, n_full,
                                          stride_kl, stride_vl, Lk, D, qk_scale, HAS_BIAS, True, EVEN_D,
                                          UPCAST, DOT_PREC, BLOCK_N, BLOCK_D)
    acc = acc / l_i[:, None]
    if RETURN_LSE:  # natural-log log-sum-exp of the scaled scores, [B, H, Lq] fp32 (m_i is in log2 units)
        tl.store(LSE + pid_bh.to(tl.int64) * Lq + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=in_q)
    out_ptrs = O + o_base + q_rows * stride_ol + offs_d[None, :]
    out = acc.to(O.dtype.element_ty)
    if EVEN_D:
        if SPARSE:
            tl.store(out_ptrs, out)
        else:
            tl.store(out_ptrs, out, mask=in_q[:, None])
    else:
        tl.store(out_ptrs, out, mask=in_q[:, None] & (offs_d[None, :] < D))


# -- launch -------------------------------------------------------------------------------------------------------
def compute_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The operand dtype the kernel runs for inputs of ``dtype``: fp32 is computed in bf16 with fp32 accumulation
    on a GPU (relative error ~1e-2, as bf16 inputs; fp32 tensor-core-free code would spill and run several times
    slower), kept in fp32 under the interpreter."""
    if dtype == torch.float32 and not triton_interpreting() and torch.device(device).type == "cuda":
        return torch.bfloat16
    return dtype


def _geometry(plan) -> tuple[int, ...]:
    """The kernel's sparse-mode integers: text units, units, tiles per dim, window tiles per dim."""
    if plan is None:
        return (0, 0, 1, 1, 1, 1, 1, 1)
    return (plan.n_text_units, plan.n_units, *plan.n_tiles, *plan.window_tiles)


def _kernel_args(q, k, v, o, lse, bias, plan, H: int, Lq: int, Lk: int, D: int, scale: float,
                 return_lse: bool, upcast: bool) -> tuple[tuple, dict]:
    """Positional args and constexprs of one launch (real tensors, or static.T mocks with a shape)."""
    block_d = max(16, triton.next_power_of_2(D))
    args = (q, k, v, o, lse, bias,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            H, Lq, Lk, D, scale * math.log2(math.e), *_geometry(plan))
    meta = dict(UNIT=plan.unit if plan is not None else 0, SPARSE=plan is not None,
                HAS_BIAS=plan is not None and plan.has_padding, EVEN_D=D == block_d, UPCAST=upcast,
                RETURN_LSE=return_lse, DOT_PREC="ieee" if upcast else "tf32", BLOCK_D=block_d)
    return args, meta


def _split(c: dict):
    c = dict(c)
    return c, c.pop("num_warps"), c.pop("num_stages")


@functools.lru_cache(maxsize=16)
def parse_config(text: str) -> dict:
    """``"BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=3"`` → dict; a ValueError names what is wrong."""
    where = f"{CONFIG_ENV}={text!r}"
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in _CONFIG_KEYS:
            raise ValueError(f"{where}: {part!r} is not allowed; give {', '.join(k + '=<int>' for k in _CONFIG_KEYS)}")
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(f"{where}: {name}={value.strip()!r} is not an integer") from None
    missing = [k for k in _CONFIG_KEYS if k not in out]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}; give all of {', '.join(_CONFIG_KEYS)}")
    for name in ("BLOCK_M", "BLOCK_N"):
        if out[name] < 16 or out[name] & (out[name] - 1):
            raise ValueError(f"{where}: {name}={out[name]} is not allowed: a power of two >= 16")
    if out["num_warps"] not in (1, 2, 4, 8, 16):
        raise ValueError(f"{where}: num_warps={out['num_warps']} is not allowed: 1, 2, 4, 8 or 16")
    if not 1 <= out["num_stages"] <= 8:
        raise ValueError(f"{where}: num_stages={out['num_stages']} is not allowed: 1 to 8")
    return out


def _pinned_config(unit: int) -> dict | None:
    text = os.environ.get(CONFIG_ENV, "").strip()
    if not text:
        return None
    c = parse_config(text)
    if unit and (unit % c["BLOCK_M"] or unit % c["BLOCK_N"]):
        raise ValueError(f"{CONFIG_ENV}={text!r} cannot run this launch: BLOCK_M={c['BLOCK_M']} and "
                         f"BLOCK_N={c['BLOCK_N']} must divide the tile unit {unit}")
    return c


def autotune_dir(device: torch.device | str | None = None) -> str:
    """Folder of the autotune cache of ``device``: ``$VIDACCEL_AUTOTUNE_DIR`` or
    ``~/.cache/vidaccel/autotune/<device name>`` (one JSON file per op)."""
    override = os.environ.get(AUTOTUNE_DIR_ENV, "").strip()
    if override:
        return override
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = "cpu"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vidaccel", "autotune", re.sub(r"[^A-Za-z0-9._-]+", "_", name))


def _bucket(n: int) -> int:
    """Lengths share a tuned config within a power-of-two bucket (at least 1024)."""
    return max(1024, triton.next_power_of_2(max(1, n)))


def _do_bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=40)


class _Autotuner:
    """Measures every pruned config once per key and device; results live in memory and in ``attention.json``
    under :func:`autotune_dir`. A cached config that is no longer a candidate is measured again."""

    def __init__(self, op: str, bench=None):
        self.op = op
        self.bench = bench or _do_bench
        self.memory: dict[tuple[str, str], dict] = {}

    def _path(self, device) -> str:
        return os.path.join(autotune_dir(device), f"{self.op}.json")

    def _read(self, path: str) -> dict:
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable autotune cache %s: %s", path, e)
            return {}

    def _write(self, path: str, key: str, entry: dict) -> None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = self._read(path)
            data[key] = entry
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError as e:
            logger.warning("could not write the autotune cache %s: %s", path, e)

    def best(self, key: str, candidates: list[dict], run, device) -> dict:
        path = self._path(device)
        if (path, key) in self.memory:
            return self.memory[(path, key)]
        cached = self._read(path).get(key)
        if cached and cached.get("config") in candidates:
            self.memory[(path, key)] = cached["config"]
            return cached["config"]
        t0 = time.perf_counter()
        times = []
        for c in candidates:
            try:
                times.append(self.bench(lambda: run(c)))
            except Exception as e:  # noqa: BLE001  (out of resources: this config cannot run here)
                logger.info("attention config %s failed: %s", c, e)
                times.append(float("inf"))
        best = candidates[min(range(len(candidates)), key=times.__getitem__)]
        if math.isinf(min(times)):
            raise RuntimeError(f"no attention config could run for {key}")
        logger.info("autotuned %s in %.1f s: %s (%.3f ms)", key, time.perf_counter() - t0, best, min(times))
        self._write(path, key, {"config": best, "ms": {json.dumps(c, sort_keys=True): round(t, 4)
                                                       for c, t in zip(candidates, times)},
                                "triton": triton.__version__})
        self.memory[(path, key)] = best
        return best


_TUNER = _Autotuner("attention")


def block_sparse_attention_triton(q, k, v, *, plan=None, scale: float | None = None, config: dict | None = None,
                                  return_lse: bool = False):
    """Launch the kernel. ``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]`` (last dim contiguous).

    Sparse when ``plan`` (a :class:`~.layout.TilePlan`) is given: then q, k, v are in its layout
    (``Lq == Lk == plan.length``) and query unit ``u`` visits the key units of its window. ``config`` forces one
    launch config (else: ``VIDACCEL_ATTENTION_CONFIG``, else the autotuned one on a GPU, else the first pruned
    config under the interpreter). fp32 inputs run in :func:`compute_dtype` and return fp32. With ``return_lse``
    also returns the log-sum-exp ``[B, H, Lq]`` (fp32, natural log).
    """
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    if plan is not None and not (Lq == Lk == plan.length):
        raise ValueError(f"sparse mode needs q and k in the tile layout: Lq={Lq}, Lk={Lk}, plan.length={plan.length}")
    if config is None:
        config = _pinned_config(plan.unit if plan is not None else 0)
    out_dtype = q.dtype
    run_dtype = compute_dtype(q.dtype, q.device)
    q, k, v = (x.to(run_dtype) if x.dtype != run_dtype else x for x in (q, k, v))
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    o = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    lse = torch.empty((B, H, Lq), dtype=torch.float32, device=q.device) if return_lse else o
    scale = D**-0.5 if scale is None else scale
    interpreting = triton_interpreting()
    bias = plan.key_bias if plan is not None and plan.has_padding else o
    args, meta = _kernel_args(q, k, v, o, lse, bias, plan, H, Lq, Lk, D, scale, return_lse,
                              upcast=interpreting or run_dtype == torch.float32)
    unit = meta["UNIT"]
    capability = None if interpreting else torch.cuda.get_device_capability(q.device)
    capability = None if capability is None else capability[0] * 10 + capability[1]

    def launch(c):
        c, warps, stages = _split(c)
        grid = (triton.cdiv(Lq, c["BLOCK_M"]), B * H)
        _attn_fwd[grid](*args, **meta, **c, num_warps=warps, num_stages=stages)

    if config is None:
        candidates = prune_configs(AUTOTUNE_CONFIGS, unit, meta["BLOCK_D"], capability, q.element_size())
        if interpreting or len(candidates) == 1:
            config = candidates[0]
        else:
            span = plan.video_count * plan.unit if plan is not None else Lk
            key = (f"{'sparse' if plan is not None else 'dense'} unit={unit} d={meta['BLOCK_D']} "
                   f"even_d={meta['EVEN_D']} bias={meta['HAS_BIAS']} lse={return_lse} {run_dtype}->{out_dtype} "
                   f"lq={_bucket(Lq)} keys={_bucket(span)} bh={triton.next_power_of_2(B * H)} sm={capability}")
            config = _TUNER.best(key, candidates, launch, q.device)
    launch(config)
    return (o, lse) if return_lse else o


# -- static GPU report (vidaccel.kernels.static) -------------------------------------------------------------------
#: Real shapes: (label, batch, heads, head dim, token grid after patching, text tokens, window in tokens).
STATIC_MODELS = (
    ("wan480p", 1, 12, 128, (21, 30, 52), 0, (12, 16, 24)),    # Wan2.1-1.3B, 480x832 x 81 frames
    ("wan720p", 1, 12, 128, (21, 45, 80), 0, (12, 24, 32)),    # Wan2.1, 720x1280 x 81 frames
    ("cogvideox5b", 2, 48, 64, (13, 30, 45), 226, (8, 16, 24)),  # CogVideoX-5B, 480x720 x 49 frames, CFG batch 2
)


def static_cases() -> list:
    """Every config the wrapper can pick on sm_90 / sm_100, dense and block-sparse, at Wan 480p / 720p and
    CogVideoX-5B shapes (bf16), plus the launches for fp32 inputs and for the log-sum-exp (long video);
    see :mod:`vidaccel.kernels.static`."""
    from ..static import StaticCase, T
    from .layout import CUDA_ALIGN, default_tile, tile_plan

    cases = []
    for label, B, H, D, grid, text, window in STATIC_MODELS:
        block_d = max(16, triton.next_power_of_2(D))
        for plan in (None, tile_plan(grid, window, default_tile(grid, text), text, align=CUDA_ALIGN)):
            L = plan.length if plan is not None else text + math.prod(grid)
            kind = "block_sparse" if plan is not None else "dense"
            shape = (f"B={B} H={H} D={D} grid={grid} text={text}: tile {plan.tile}, {L} positions, window {window}"
                     if plan is not None else f"B={B} L={L} H={H} D={D}")
            variants = [("", torch.bfloat16, False)]
            if label == "wan480p":  # fp32 inputs run as bf16 with an fp32 output; long video needs the LSE
                variants += [("/fp32", torch.float32, False)] + ([("/lse", torch.bfloat16, True)] if plan is None
                                                                 else [])
            for suffix, dtype, lse in variants:
                x = T(compute_dtype(dtype, "cuda"), (B, L, H, D))
                o = T(dtype, (B, L, H, D))
                bias = T(torch.float32) if plan is not None and plan.has_padding else o
                args, meta = _kernel_args(x, x, x, o, T(torch.float32) if lse else o, bias, plan, H, L, L, D,
                                          D**-0.5, lse, upcast=False)
                for arch in (90, 100):
                    configs = prune_configs(AUTOTUNE_CONFIGS, meta["UNIT"], block_d, arch)
                    for i, c in enumerate(configs[:1] if suffix else configs):
                        cfg, warps, stages = _split(c)
                        name = (f"attention/{kind}/{label}/bm{cfg['BLOCK_M']}n{cfg['BLOCK_N']}w{warps}s{stages}"
                                f"{suffix}")
                        if any(cs.name == name for cs in cases):  # the same config on both archs: one case
                            continue
                        other = 100 if arch == 90 else 90
                        both = c in prune_configs(AUTOTUNE_CONFIGS, meta["UNIT"], block_d, other)
                        main = label == "wan480p" and i == 0 and not suffix
                        cases.append(StaticCase(
                            name=name, kernel=_attn_fwd, args=args,
                            kwargs=dict(meta, **cfg, num_warps=warps, num_stages=stages),
                            archs=(90, 100) if both else (arch,), main=main,
                            expect=(dict(no_spills=True, mma=True, stages_ahead=2) if main
                                    else dict(no_spills=True, mma=True)),
                            shape=f"{shape} {str(dtype).replace('torch.', '')}" + (" +LSE" if lse else "")))
    return cases


def static_notes() -> str:
    """Markdown: tile padding of the block-sparse layout at the default tile of each real grid."""
    from .layout import CUDA_ALIGN, DEFAULT_TILE, default_tile, tile_plan

    lines = ["### Tile padding (block-sparse layout, CUDA alignment 64)\n",
             "Positions of the layout over real tokens (the work of every query and key block scales with it), at "
             f"STA's {'×'.join(map(str, DEFAULT_TILE))} tile and at `default_tile(grid, text)`.\n",
             "| model | grid | text | tokens | tile 4×8×8: positions, padding | default tile | unit | positions "
             "| padding |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, _, _, _, grid, text, window in STATIC_MODELS:
        tokens = text + math.prod(grid)
        sta = tile_plan(grid, window, tuple(min(t, g) for t, g in zip(DEFAULT_TILE, grid)), text, align=CUDA_ALIGN)
        plan = tile_plan(grid, window, default_tile(grid, text), text, align=CUDA_ALIGN)
        lines.append(f"| {label} | {'×'.join(map(str, grid))} | {text} | {tokens:,} | {sta.length:,}, "
                     f"+{100 * sta.padding:.1f} % | {'×'.join(map(str, plan.tile))} | {plan.unit} | {plan.length:,} | "
                     f"+{100 * plan.padding:.1f} % |")
    return "\n".join(lines) + "\n"
