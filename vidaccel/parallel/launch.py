"""Processes launched by ``torchrun`` / ``accelerate launch``: joining the group, who writes, and failures.

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m vidaccel generate ...`` starts one process
per GPU with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment.
:func:`init_distributed` joins that group (NCCL on GPUs, gloo on CPUs) and pins the process to its GPU.

Only the main process (rank 0) writes a video that all ranks computed together (:func:`is_main_process`).
:func:`failures_end_all_ranks` makes a failure on one rank end every rank with the error shown once: the first
rank to fail reports it, ranks that fail after it stay quiet, and healthy ranks (which may be waiting in a
collective for the failed one) are ended by a watchdog polling the group's key-value store.

Nothing here imports torch at module level (the command line checks ranks before loading anything).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import threading
import time

logger = logging.getLogger(__name__)

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "local_rank", "is_main_process",
           "launched_world_size", "barrier", "failures_end_all_ranks", "reports_error", "EXIT_PEER_FAILED"]

#: Exit code of a healthy rank ended because another rank failed.
EXIT_PEER_FAILED = 1
_FAILURE_KEY = "vidaccel/failed_ranks"
_POLL_S = 0.2


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 outside ``torchrun`` / ``accelerate launch``)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _env_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_distributed() -> bool:
    """A process group with more than one process is active."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (the launcher's ``RANK`` before the group exists; 0 alone)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else _env_rank()


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else launched_world_size()


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    """Rank 0 (or a process outside any launch): the one that writes shared results."""
    return rank() == 0


def init_distributed(timeout_s: float = 1800.0):
    """Join the process group the launcher described, once; return ``True`` when more than one process runs.

    On a CUDA machine: NCCL, and ``torch.cuda.set_device(LOCAL_RANK)`` (so ``"cuda"`` means this process's GPU);
    otherwise gloo. Outside a launcher (``WORLD_SIZE`` unset or 1) it does nothing and returns ``False``.
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if launched_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: launch with "
                           "torchrun --nproc-per-node N (or accelerate launch)")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("rank %d of %d joined the %s group", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return dist.get_world_size() > 1


def barrier() -> None:
    import torch.distributed as dist

    if is_distributed():
        dist.barrier()


def reports_error(error: BaseException | None = None) -> bool:
    """Whether this process prints ``error``: the rank :func:`failures_end_all_ranks` chose for it; for errors
    raised outside it (argument validation, which every rank raises alike) rank 0 only."""
    chosen = getattr(error, "vidaccel_report", None)
    if chosen is not None:
        return bool(chosen)
    return _env_rank() == 0


def _store():
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: failures are reported by every failing rank, nothing is ended
        return None


class _Watchdog(threading.Thread):
    """Ends this process when another rank recorded a failure in the store."""

    def __init__(self, store):
        super().__init__(name="vidaccel-failure-watchdog", daemon=True)
        self.store = store
        self.stopped = threading.Event()
        self.failing = False

    def run(self):
        while not self.stopped.wait(_POLL_S):
            try:
                failed = self.store.check([_FAILURE_KEY])
            except Exception:  # noqa: BLE001 - the store's host (rank 0) is gone while this rank still runs
                failed = True
            if failed and not self.failing and not self.stopped.is_set():
                logger.info("another rank failed; ending this one")
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_PEER_FAILED)


@contextlib.contextmanager
def failures_end_all_ranks():
    """Inside this block, an exception on any rank ends every rank, and only the first failing rank reports it.

    The first rank to fail re-raises its exception marked ``vidaccel_report = True`` (the command line prints
    it, or Python shows the traceback); a rank that fails after it raises ``SystemExit(1)`` quietly; a healthy
    rank is ended (exit code :data:`EXIT_PEER_FAILED`) by a watchdog within a fraction of a second. Does nothing
    without an active process group.
    """
    store = _store() if is_distributed() else None
    if store is None:
        yield
        return
    watchdog = _Watchdog(store)
    watchdog.start()
    try:
        yield
    except BaseException as error:
        watchdog.failing = True
        first = store.add(_FAILURE_KEY, 1) == 1
        # rank 0 hosts the store: give the other ranks' watchdogs time to read the mark before exiting
        time.sleep(3 * _POLL_S)
        if not first:
            raise SystemExit(EXIT_PEER_FAILED) from None
        with contextlib.suppress(AttributeError):
            error.vidaccel_report = True
        raise
    finally:
        watchdog.stopped.set()
        watchdog.join(timeout=2 * _POLL_S)
