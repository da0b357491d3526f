"""The long-video mp4: one checked part per chunk, joined at the end, so a finished chunk is never lost.

``ChunkedMp4Writer(path, fps)`` writes each chunk it is given as a complete, closed mp4 part in ``<path>.parts/``
(through a temporary name, with the encoder's exit status and the part's frame count checked before the part
is renamed into place) and keeps ``<path>.parts/parts.txt``, an ffmpeg concat list of the finished parts.
:meth:`ChunkedMp4Writer.finish` joins the parts without re-encoding into a temporary file beside ``path``,
counts its frames and renames it onto ``path``; only then is the parts folder removed.

So, at every moment:

* ``path`` is either the previous file, untouched, or the new video, whole and checked;
* if the process (with its encoders) is killed outright, every chunk finished before the kill is in
  ``<path>.parts/`` as a playable mp4, listed in ``parts.txt``
  (``ffmpeg -f concat -safe 0 -i <path>.parts/parts.txt -c copy out.mp4`` joins them); only the chunk in
  flight is lost;
* SIGINT / SIGTERM are held while a part is written and while the parts are joined
  (:func:`vidaccel.video.deferred_signals`), so an interrupt never cuts a file short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess

import numpy as np

from ...video import (
    Mp4Encoder,
    VideoWriteError,
    check_output_path,
    count_frames,
    deferred_signals,
    ffmpeg_exe,
    temporary_path,
)

logger = logging.getLogger(__name__)

__all__ = ["ChunkedMp4Writer", "parts_folder"]


def parts_folder(path: str) -> str:
    """Where the finished chunks of a long video written to ``path`` wait until the video is complete."""
    return path + ".parts"


class ChunkedMp4Writer:
    """Writes a long video chunk by chunk (see the module docstring).

    Args:
        path: the mp4 to write (validated: ``.mp4``, not a directory, writable folder). A ``<path>.parts`` folder
            left by a killed run is refused, not overwritten: it holds that run's finished chunks.
        fps: frame rate.
    """

    def __init__(self, path, fps: float):
        self.path = check_output_path(path, "output")
        self.parts_dir = parts_folder(self.path)
        if os.path.lexists(self.parts_dir):
            raise ValueError(f"output={self.path!r} is not allowed: {self.parts_dir} exists (the finished chunks of an "
                             f"interrupted run?); join them with `ffmpeg -f concat -safe 0 -i "
                             f"{os.path.join(self.parts_dir, 'parts.txt')} -c copy joined.mp4`, or remove the folder")
        self.fps = fps
        self.parts: list[tuple[str, int]] = []

    @property
    def frames(self) -> int:
        """Frames in the finished parts (each counted back from its file)."""
        return sum(n for _, n in self.parts)

    def write_chunk(self, frames: np.ndarray) -> int:
        """Write uint8 ``[f, H, W, 3]`` frames as the next part; returns the frames counted back from it."""
        index = len(self.parts)
        name = f"part-{index:06d}.mp4"
        final = os.path.join(self.parts_dir, name)
        with deferred_signals():
            os.makedirs(self.parts_dir, exist_ok=True)
            tmp = os.path.join(self.parts_dir, f".{name}.partial")
            encoder = Mp4Encoder(tmp, frames.shape[2], frames.shape[1], self.fps,
                                 label=f"{self.path} (chunk {index})")
            try:
                encoder.write(frames)
                found = encoder.close()
                os.replace(tmp, final)
            except BaseException:
                encoder.abort()
                raise
            self.parts.append((final, found))
            self._write_list()
        return found

    def _write_list(self) -> None:
        listing = "".join(f"file '{os.path.basename(p)}'\n" for p, _ in self.parts)
        tmp = os.path.join(self.parts_dir, ".parts.txt.partial")
        with open(tmp, "w") as f:
            f.write(listing)
        os.replace(tmp, os.path.join(self.parts_dir, "parts.txt"))

    def finish(self) -> int:
        """Join the finished parts onto ``path`` (checked) and remove the parts folder; returns the frames written.

        With no finished part nothing is written and ``path`` is left as it was (0 is returned).

        Raises:
            VideoWriteError: the join failed (e.g. a full disk); ``path`` is unchanged and the parts stay in
                ``<path>.parts`` (the message says so).
        """
        with deferred_signals():
            if not self.parts:
                shutil.rmtree(self.parts_dir, ignore_errors=True)
                return 0
            expected = self.frames
            tmp = temporary_path(self.path)
            try:
                run = subprocess.run([ffmpeg_exe(), "-y", "-nostdin", "-f", "concat", "-safe", "0", "-i",
                                      os.path.join(self.parts_dir, "parts.txt"), "-c", "copy", "-v", "error",
                                      "-f", "mp4", tmp], capture_output=True, process_group=0)
                if run.returncode != 0:
                    detail = run.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
                    raise VideoWriteError(f"ffmpeg exit status {run.returncode}: {detail[0][:200]}")
                found = count_frames(tmp)
                if found != expected:
                    raise VideoWriteError(f"the joined file holds {found} frames, the parts {expected}")
                os.replace(tmp, self.path)
            except VideoWriteError as e:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
                raise VideoWriteError(f"joining the {len(self.parts)} finished chunks into {self.path} failed ({e}); "
                                      f"{self.path} was left as it was and the chunks are kept in {self.parts_dir} "
                                      "(parts.txt lists them for `ffmpeg -f concat -safe 0 -i parts.txt -c copy`)"
                                      ) from None
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        return found

    def finish_after(self, failure: BaseException | None) -> int:
        """:meth:`finish` at the end of a run that ``failure`` (if not ``None``) cut short: the failure keeps
        propagating, with notes saying what the output holds; returns the frames written."""
        try:
            written = self.finish()
        except VideoWriteError as e:
            if failure is None:
                raise
            failure.add_note(str(e))
            logger.error("%s", e)
            return 0
        if failure is not None and self.parts:
            failure.add_note(f"{self.path} keeps the {len(self.parts)} chunks finished before the failure "
                             f"({written} frames)")
        return written
