"""Launch configurations pinned from the environment (to measure a kernel's configs one by one on a GPU)."""

from __future__ import annotations

import os

__all__ = ["pinned_config"]

_ALLOWED = ("five comma-separated ints BLOCK_M,BLOCK_N,BLOCK_K,num_warps,num_stages: BLOCK_M, BLOCK_N and BLOCK_K "
            "powers of two >= 16, num_warps in 1, 2, 4, 8, 16, num_stages in 1..8")


def pinned_config(env: str) -> dict | None:
    """``{BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M: 8, num_warps, num_stages}`` from ``$env``, or ``None`` when unset.

    Raises ``ValueError`` naming the variable, its value and what is allowed.
    """
    raw = os.environ.get(env)
    if raw is None or raw.strip() == "":
        return None
    try:
        bm, bn, bk, warps, stages = (int(v) for v in raw.split(","))
    except ValueError:
        raise ValueError(f"{env}={raw!r} is not allowed; allowed: {_ALLOWED}") from None
    pow2 = all(v >= 16 and v & (v - 1) == 0 for v in (bm, bn, bk))
    if not (pow2 and warps in (1, 2, 4, 8, 16) and 1 <= stages <= 8):
        raise ValueError(f"{env}={raw!r} is not allowed; allowed: {_ALLOWED}")
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
