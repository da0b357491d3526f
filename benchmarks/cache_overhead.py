"""Per-call cost of vidaccel's cache bookkeeping against the cost of one transformer block.

The bookkeeping of a "block"-policy call is: the front residual (one subtraction), its relative L1 change
against the reference (two reductions and one host sync), and, on computed calls, storing the middle span's
residual (one subtraction). This script times those operations and one Wan2.1-1.3B-width block
(dim 1536, 12 heads of 128, ffn 8960) on the same tokens, with random weights, and prints the ratio.

    python benchmarks/cache_overhead.py --tokens 4096          # CPU (fp32)
    python benchmarks/cache_overhead.py --tokens 32760 --device cuda --dtype bf16   # Wan 480p on a GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from vidaccel.accel.caching.state import rel_l1 as _rel_l1, sub_all as _sub


def timeit(fn, device, repeats: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    block = WanTransformerBlock(1536, 8960, 12, qk_norm="rms_norm_across_heads", cross_attn_norm=True).to(device, dtype)
    x = torch.randn(1, args.tokens, 1536, device=device, dtype=dtype)
    text = torch.randn(1, 512, 1536, device=device, dtype=dtype)
    temb = torch.randn(1, 6, 1536, device=device, dtype=dtype)
    head = 128
    freqs = torch.randn(1, args.tokens, 1, head, device=device)
    rope = (freqs.cos(), freqs.sin())
    y = x + 0.01 * torch.randn_like(x)
    ref = (torch.randn_like(x),)

    with torch.no_grad():
        t_block = timeit(lambda: block(x, text, temb, rope), device, args.repeats)

        def bookkeeping():
            front = _sub((y,), (x,))
            _rel_l1(front, ref)
            _sub((y,), (x,))

        t_book = timeit(bookkeeping, device, args.repeats * 4)
    print(f"tokens {args.tokens}, {args.device} {args.dtype}: block {t_block * 1e3:.2f} ms, bookkeeping "
          f"{t_book * 1e3:.3f} ms per call = {100 * t_book / t_block:.2f} % of one block "
          f"({100 * t_book / (30 * t_block):.3f} % of a 30-block call)")


if __name__ == "__main__":
    main()
