"""Tuning a pipeline that runs on several processes (one per GPU): every rank runs the same candidates in the
same order; rank 0's measurements, clock and files decide for all.

With ``torch.distributed`` initialised, every pipeline call is a collective call of all ranks, so all of them
must run the same configuration at the same time. Timings differ a little from rank to rank, and decisions
taken on different numbers would send the ranks down different paths; so after every batch rank 0's records
(and its elapsed time) are broadcast and every rank decides on them. Only rank 0 writes files. Broadcasts
carry JSON text in a byte tensor (no pickling). Without ``torch.distributed`` (one process) nothing is sent.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["Comm"]


class Comm:
    """Rank, world size and a JSON broadcast from rank 0."""

    def __init__(self):
        try:
            import torch.distributed as dist
        except ImportError:  # torch without distributed support
            dist = None
        self._dist = dist if dist is not None and dist.is_available() and dist.is_initialized() else None
        self.rank = self._dist.get_rank() if self._dist else 0
        self.world_size = self._dist.get_world_size() if self._dist else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (``obj`` must be JSON-able; other ranks' values are ignored)."""
        if self._dist is None or self.world_size == 1:
            return obj
        import torch

        device = torch.device("cpu")
        if self._dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        data = json.dumps(obj).encode("utf-8") if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=device)
        self._dist.broadcast(size, src=0)
        buf = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
        if self.is_main:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        self._dist.broadcast(buf, src=0)
        return obj if self.is_main else json.loads(bytes(buf.cpu().tolist()).decode("utf-8"))
