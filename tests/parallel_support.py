"""Test support for context parallelism on CPU: gloo ranks forked from pytest, and the one shim diffusers needs.

* :func:`cpu_device_count_shim` works around diffusers 0.42.1 failing before anything runs on a machine without
  an accelerator: ``ModelMixin._resolve_parallel_config`` (called by ``enable_parallelism``) computes
  ``rank % torch.accelerator.device_count()``, a division by zero on CPU-only torch. The shim makes
  ``device_count()`` report 1 while it is active; nothing else in diffusers' context-parallel path needs an
  accelerator (the mesh is built on ``"cpu"`` with gloo). It lives here, never in the library: on a GPU machine
  it does nothing.
* :func:`run_distributed` forks ``world`` processes (fork, not spawn: a spawned rank re-imports diffusers, ~11 s
  on 2 cores; a forked one starts at once with everything the test process imported), joins a gloo group
  with a short timeout in each, runs ``fn(rank, world, *args)`` and returns the ranks' results, failing the
  test on an exception, a dead rank or the overall deadline.

  The rendezvous store lives in the test process, as torchrun's agent hosts it
  (``TORCHELASTIC_USE_AGENT_STORE``): with rank 0 hosting it, a rank 0 that finished first took the store down
  while a slower rank was still reading a ``new_group`` rendezvous from it (``DistNetworkError: Connection
  reset by peer`` on a loaded machine).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
import traceback

import pytest
import torch

__all__ = ["GLOO_TIMEOUT_S", "cpu_device_count_shim", "run_distributed"]

#: gloo collective timeout inside the forked ranks: a rank waiting on a missing peer fails after this.
GLOO_TIMEOUT_S = 20.0


@contextlib.contextmanager
def cpu_device_count_shim():
    """``torch.accelerator.device_count()`` reports 1 on a CPU-only machine while active (see module docs)."""
    original = torch.accelerator.device_count
    if original() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _plain(value):
    """Tensors as numpy arrays: torch pickles tensors through shared file descriptors that die with the rank."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _child(rank, world, port, fn, args, queue, init_group, log_path):
    import torch.distributed as dist

    if log_path is not None:  # this rank's stdout/stderr (file descriptors and pytest's captures) into a file
        fd = os.open(f"{log_path}.{rank}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                      TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    try:
        if init_group:
            dist.init_process_group("gloo", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=GLOO_TIMEOUT_S))
        queue.put((rank, "ok", _plain(fn(rank, world, *args))))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        queue.put((rank, "error", traceback.format_exc()[-4000:]))
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()


def run_distributed(fn, *args, world: int = 2, timeout: float = 120.0, init_group: bool = True,
                    log_path: str | None = None, expect_failure: bool = False):
    """Run ``fn(rank, world, *args)`` on ``world`` forked ranks; return ``[result of rank 0, rank 1, ...]``.

    ``init_group=False`` only sets the torchrun environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and
    leaves joining the group to ``fn``. ``expect_failure=True`` returns ``{rank: ("ok" | "error" | "died",
    payload or exit code)}`` instead of failing the test.
    """
    import multiprocessing as mp

    import torch.distributed as dist

    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    # port 0: the OS picks a free one, no window in which another process can take it
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=GLOO_TIMEOUT_S))
    port = store.port
    procs = [ctx.Process(target=_child, args=(r, world, port, fn, args, queue, init_group, log_path), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    results: dict[int, tuple] = {}
    try:
        while len(results) < world:
            if not queue.empty():
                rank, status, payload = queue.get()
                results[rank] = (status, payload)
                if status == "error" and not expect_failure:
                    # the other ranks' outcomes too (a peer's failure is often the cause), briefly
                    deadline = min(deadline, time.monotonic() + 5.0)
                continue
            dead = [i for i, p in enumerate(procs) if p.exitcode is not None and i not in results]
            if dead and queue.empty():
                time.sleep(0.2)  # a result may still be in flight
                if queue.empty():
                    for i in dead:
                        results[i] = ("died", procs[i].exitcode)
                continue
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        del store  # the rendezvous server, once no rank can still read from it
    failed = {} if expect_failure else {r: v for r, v in results.items() if v[0] != "ok"}
    missing = sorted(set(range(world)) - set(results))
    if failed or missing:
        lines = [f"rank {r} raised:\n{payload}" if status == "error" else f"rank {r} died: exit code {payload}"
                 for r, (status, payload) in sorted(failed.items())]
        if missing:
            lines.append(f"rank(s) {missing} did not finish within {timeout}s (or 5 s after a peer failed)")
        pytest.fail("\n".join(lines))
    if expect_failure:
        return results
    return [results[r][1] for r in range(world)]
