"""Frames in, mp4 out, with guarantees (imageio-ffmpeg ships its own ffmpeg, so this works offline).

What a write promises:

* **the target is replaced only by a whole, checked file**: frames go to a temporary file beside the target,
  the encoder's exit status is checked, the frames in the written file are counted back, and only then is the
  file renamed onto the target (an atomic ``os.replace``). On any failure (encoder crash, full disk, file-size
  limit, an interrupt) the previous file at the target is untouched and :class:`VideoWriteError` says why;
* **interrupts never land inside a write**: SIGINT / SIGTERM arriving while frames go down the encoder's pipe
  or while a file is finished are delivered right after (:func:`deferred_signals`); the encoder runs in its
  own process group, so a terminal's Ctrl-C reaches only Python;
* **non-finite frames are refused** before anything is written, naming the first bad frame
  (:class:`NonFiniteFramesError`).

:class:`Mp4Encoder` is the building block (one ffmpeg process writing one file, checked on close);
:func:`save_video` writes a whole video with it; the long-video pipeline writes one checked part per chunk
(``vidaccel/pipelines/long_video/writer.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import uuid

import numpy as np

from .core.validation import check_path, shown

__all__ = ["VideoWriteError", "NonFiniteFramesError", "to_uint8_frames", "save_video", "read_video", "count_frames",
           "check_output_path", "temporary_path", "deferred_signals", "Mp4Encoder", "ffmpeg_exe"]

#: libx264 constant rate factor of every mp4 vidaccel writes (imageio's ``quality=8``).
CRF = 10


class VideoWriteError(OSError):
    """The encoder failed or the written file is not what was promised; the target path was not changed."""


class NonFiniteFramesError(ValueError):
    """Frames hold NaN or Inf values (nothing was written)."""


def to_uint8_frames(frames, what: str = "frames") -> np.ndarray:
    """Pipeline output (np float in [0, 1], uint8, torch, or a list of PIL images) → uint8 ``[F, H, W, 3]``.

    A leading batch dimension of size 1 is dropped; a larger batch raises ``ValueError``; NaN or Inf raise
    :class:`NonFiniteFramesError` naming the first bad frame (``what`` says whose frames they are).
    """
    if isinstance(frames, (list, tuple)) and frames and hasattr(frames[0], "convert"):
        frames = np.stack([np.asarray(im.convert("RGB")) for im in frames])
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 5:
        if arr.shape[0] != 1:
            raise ValueError(f"{what} has a batch of {arr.shape[0]} videos; pass one video [F, H, W, 3]")
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{what} must have shape [F, H, W, 3], got {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    finite = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteFramesError(f"{what}: frame {int(bad[0])} holds NaN or Inf values ({len(bad)} of "
                                   f"{arr.shape[0]} frames are not finite)")
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def check_output_path(path, name: str = "output", suffix: str = ".mp4") -> str:
    """``path`` as ``str`` if a file can be written there: it ends in ``suffix``, is not a directory, and its
    folder exists and is writable (a rename into it is how the file lands). ``ValueError`` naming ``name``."""
    path = check_path("", name, path)
    if suffix and not path.lower().endswith(suffix):
        raise ValueError(f"{name}={shown(path)} is not allowed: the file name must end in {suffix}")
    if os.path.isdir(path):
        raise ValueError(f"{name}={shown(path)} is not allowed: it is a directory; give a file path ending in {suffix}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is not a directory" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"{name}={shown(path)} is not allowed: its folder {shown(folder)} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={shown(path)} is not allowed: its folder {shown(folder)} is not writable")
    base = os.path.basename(path)
    if len(os.fsencode(base)) > 200:  # room for the temporary name's suffix within NAME_MAX (255 bytes)
        raise ValueError(f"{name}={shown(path)} is not allowed: the file name is longer than 200 bytes")
    return path


def temporary_path(path: str, tag: str = "partial") -> str:
    """A fresh name beside ``path`` for the file being written (same folder, so the final rename is atomic)."""
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{uuid.uuid4().hex[:8]}.{tag}")


@contextlib.contextmanager
def deferred_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Hold SIGINT / SIGTERM until the block ends, then deliver them to the handlers that were installed before
    (Ctrl-C raises ``KeyboardInterrupt`` right after the block). Only the main thread can hold signals; elsewhere
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}

    def hold(signum, frame):
        if signum not in received:
            received.append(signum)

    for s in signals:
        previous[s] = signal.signal(s, hold)
    try:
        yield
    finally:
        for s in signals:
            signal.signal(s, previous[s])
        for signum in received:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def count_frames(path: str | os.PathLike) -> int:
    """Video frames stored in the file (packets of its first video stream, read without decoding)."""
    path = os.fspath(path)
    run = subprocess.run([ffmpeg_exe(), "-nostdin", "-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
                         capture_output=True, process_group=0)
    frames = None
    for line in run.stderr.decode(errors="replace").replace("\r", "\n").splitlines():
        if line.startswith("frame="):
            with contextlib.suppress(ValueError, IndexError):
                frames = int(line.split("=", 1)[1].split()[0])
    if run.returncode != 0 or frames is None:
        last = run.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise VideoWriteError(f"{path} is not a readable video (ffmpeg exit status {run.returncode}: {last[0][:200]})")
    return frames


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the file-size limit or a full disk)" if name == "SIGXFSZ" else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"


class Mp4Encoder:
    """One ffmpeg process encoding uint8 RGB frames ``[f, H, W, 3]`` into an H.264 mp4 at ``path``.

    :meth:`write` sends frames (signals held while they go down the pipe); :meth:`close` waits for ffmpeg,
    checks its exit status and the frame count of the file, and raises :class:`VideoWriteError` when either
    is wrong. :meth:`abort` stops it and deletes the file. Width and height must be even (yuv420p).
    """

    def __init__(self, path: str, width: int, height: int, fps: float, label: str | None = None):
        if width % 2 or height % 2:
            raise ValueError(f"frames of {width}x{height} cannot be encoded as H.264 yuv420p: width and height must "
                             "be even")
        from fractions import Fraction

        self.path = path
        self.label = label or path  # the name messages give (the target, for a temporary file)
        self.size = (width, height)
        self.frames = 0
        self._log = tempfile.TemporaryFile()
        rate = str(Fraction(fps).limit_denominator(1001))
        cmd = [ffmpeg_exe(), "-y", "-nostdin", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
               "-pix_fmt", "rgb24", "-r", rate, "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
               "-crf", str(CRF), "-v", "error", "-f", "mp4", path]
        # own process group: a terminal's Ctrl-C reaches Python (which holds it until a write is done), not ffmpeg
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                      process_group=0)

    def _stderr(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""

    def _failed(self, what: str) -> VideoWriteError:
        code = self._proc.poll()
        detail = self._stderr()
        status = _describe_exit(code) if code is not None else "still running"
        return VideoWriteError(f"writing {self.label} failed: {what}; the encoder (ffmpeg) {status}"
                               + (f": {detail}" if detail else ""))

    def write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.size[1], self.size[0], 3):
            raise ValueError(f"frames must be uint8 [f, {self.size[1]}, {self.size[0]}, 3], got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        data = np.ascontiguousarray(frames).tobytes()
        with deferred_signals():
            try:
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
            except OSError as e:  # BrokenPipeError: ffmpeg died (full disk, size limit, killed)
                self._proc.wait()
                raise self._failed(f"frames could not be sent ({e.strerror or e})") from None
        self.frames += frames.shape[0]

    def close(self) -> int:
        """Finish the file and check it; returns the frame count read back."""
        with deferred_signals():
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            code = self._proc.wait()
            if code != 0:
                raise self._failed("the file was not finished")
            try:
                found = count_frames(self.path)
            except VideoWriteError as e:
                raise VideoWriteError(f"writing {self.label} failed: the written file cannot be read back ({e})") from None
            if found != self.frames:
                raise VideoWriteError(f"writing {self.label} failed: {self.frames} frames were sent but the file holds "
                                      f"{found}")
        self._log.close()
        return found

    def abort(self) -> None:
        """Stop ffmpeg and delete what it wrote."""
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._log.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def save_video(frames, path: str | os.PathLike, fps: float = 16, quality: int | None = None) -> str:
    """Write ``frames`` to an H.264 mp4 at ``path`` and return the path.

    The frames go to a temporary file beside ``path`` that replaces ``path`` only once ffmpeg exited cleanly and
    the file holds every frame; otherwise :class:`VideoWriteError` and ``path`` is as it was. ``quality`` is
    accepted for compatibility and ignored (every mp4 uses the same CRF).

    Raises:
        ValueError: bad ``path`` (see :func:`check_output_path`), ``fps``, or frame shape;
            :class:`NonFiniteFramesError` for NaN / Inf frames.
        VideoWriteError: the encoder failed or the file is not what was sent.
    """
    from .core.validation import check_number

    arr = to_uint8_frames(frames)
    path = check_output_path(path, "path")
    check_number("", "fps", fps, lo=0, hi=1000, lo_open=True)
    if arr.shape[0] == 0:
        raise ValueError("frames is empty: there is nothing to write")
    tmp = temporary_path(path)
    encoder = Mp4Encoder(tmp, arr.shape[2], arr.shape[1], fps, label=path)
    try:
        encoder.write(arr)
        encoder.close()
        with deferred_signals():
            os.replace(tmp, path)
    except VideoWriteError as e:
        encoder.abort()
        raise VideoWriteError(f"{e}; {path} was left as it was") from None
    except BaseException:
        encoder.abort()
        raise
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read an mp4 back as uint8 ``[F, H, W, 3]``."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(os.fspath(path))
    try:
        return np.stack([frame for frame in reader.iter_data()])  # list(reader) asks len() = inf
    finally:
        reader.close()
