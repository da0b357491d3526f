"""Processes launched by ``torchrun`` / ``accelerate launch``: joining the group, who writes, and failures.

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m vidaccel generate ...`` starts one process
per GPU with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment.
:func:`init_distributed` joins that group (NCCL on GPUs, gloo on CPUs) and pins the process to its GPU.

Only the main process (rank 0) writes a video that all ranks computed together (:func:`is_main_process`).
:func:`failures_end_all_ranks` makes a failure on one rank end every rank with the error shown once: the first
rank to fail reports it, ranks that fail after it stay quiet, and healthy ranks (which may be waiting in a
collective for the failed one) are ended by a watchdog polling the group's key-value store. The report comes
before any rank ends, so a launcher that stops the others when one exits cannot cut it off.

Nothing here imports torch at module level (the command line checks ranks before loading anything).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import threading
import traceback
from typing import Callable

logger = logging.getLogger(__name__)

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "local_rank", "is_main_process",
           "launched_world_size", "barrier", "failures_end_all_ranks", "reports_error", "EXIT_PEER_FAILED"]

#: Exit code of a healthy rank ended because another rank failed.
EXIT_PEER_FAILED = 1
_CLAIM_KEY = "vidaccel/failures"  # counter: the rank that makes it 1 reports
_FAILED_KEY = "vidaccel/failed"  # set once the report is out: every other rank ends
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
    """Whether this process prints an error raised before :func:`failures_end_all_ranks` took over (argument
    validation, which every rank raises alike): rank 0 only, or a process outside any launch."""
    return _env_rank() == 0


def _store():
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: failures are reported by every failing rank, nothing is ended
        return None


class _Watchdog(threading.Thread):
    """Ends this process once a failed rank has reported (or the store's host, rank 0, is gone)."""

    def __init__(self, store):
        super().__init__(name="vidaccel-failure-watchdog", daemon=True)
        self.store = store
        self.stopped = threading.Event()
        self.failing = False

    def run(self):
        while not self.stopped.wait(_POLL_S):
            try:
                failed = self.store.check([_FAILED_KEY])
            except Exception:  # noqa: BLE001 - the store's host (rank 0) is gone
                # rank 0 may just have finished a moment before this rank leaves the guarded block
                if self.stopped.wait(2.0):
                    return
                failed = True
            if failed and not self.failing and not self.stopped.is_set():
                logger.info("another rank failed; ending this one")
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_PEER_FAILED)


def _print_traceback(error: BaseException) -> int:
    traceback.print_exception(error)
    return 1


@contextlib.contextmanager
def failures_end_all_ranks(report: Callable[[BaseException], int] | None = None):
    """Inside this block, an exception on any rank ends every rank, and the error is shown once.

    The first rank to fail calls ``report(error)`` (default: print the traceback; it returns the exit code),
    then marks the failure in the group's store and exits with that code; a rank that fails after it exits
    quietly (:data:`EXIT_PEER_FAILED`) once the first has reported; a healthy rank (maybe waiting in a collective
    for the failed one) is ended by a watchdog within a fraction of a second. ``torchrun`` then stops too.
    Does nothing without an active process group.
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
        if isinstance(error, SystemExit) and error.code in (0, None):
            raise
        if store.add(_CLAIM_KEY, 1) == 1:
            try:
                code = (report or _print_traceback)(error)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                store.set(_FAILED_KEY, str(rank()))
            raise SystemExit(code) from None
        with contextlib.suppress(Exception):
            store.wait([_FAILED_KEY], datetime.timedelta(seconds=60))
        raise SystemExit(EXIT_PEER_FAILED) from None
    finally:
        watchdog.stopped.set()
        watchdog.join(timeout=2 * _POLL_S)
