"""Several GPUs: one video over N GPUs (context parallelism), or a prompt batch over N processes.

* :class:`ParallelConfig` / :func:`enable_parallelism`: diffusers' context parallelism (Ulysses, ring, or both)
  on every transformer of a pipeline, composing with vidaccel's techniques (applied before or after);
  ``vidaccel.load_pipeline(..., parallel=...)`` and the drop-in ``from_pretrained(..., parallel=...)`` call it.
* :mod:`.launch`: joining the group ``torchrun`` describes, rank-0-only writing, one failure ends all ranks.
* :mod:`.batch`: prompt files split across processes, resumable, with a summary.

Launch::

    torchrun --nproc-per-node 4 -m vidaccel generate "a cat surfing" --model Wan-AI/Wan2.1-T2V-14B-Diffusers \\
        --ulysses 4 -o cat.mp4
    torchrun --nproc-per-node 8 -m vidaccel generate --prompts prompts.txt -o videos/

Everything here loads lazily: importing :mod:`vidaccel.parallel` imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ParallelConfig, as_parallel_config

__all__ = ["ParallelConfig", "as_parallel_config", "enable_parallelism", "parallel_config_of", "init_distributed",
           "is_main_process", "rank", "world_size", "barrier", "failures_end_all_ranks"]

_LAZY = {
    "enable_parallelism": ".model",
    "parallel_config_of": ".model",
    "init_distributed": ".launch",
    "is_main_process": ".launch",
    "rank": ".launch",
    "world_size": ".launch",
    "barrier": ".launch",
    "failures_end_all_ranks": ".launch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vidaccel.parallel' has no attribute {name!r}")
