"""SIGTERM during a long-video call: the loop stops after the chunk in progress and the mp4 is closed normally."""

from __future__ import annotations

import signal
import threading

__all__ = ["install_sigterm", "restore_sigterm"]


def install_sigterm(pipe):
    """Make SIGTERM set ``pipe._stop_requested`` (checked between chunks); returns the previous handler, or
    ``None`` off the main thread (where signal handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        pipe._stop_requested = True

    return signal.signal(signal.SIGTERM, handler)


def restore_sigterm(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
