"""What an mp4 write promises, under a full disk (``prlimit --fsize``), interrupts and kills.

After every fault: either a readable file whose frame count the command reported truthfully, or the previous file
at the target untouched, and a non-zero exit where the promise was not kept. Subprocesses run the real CLI on a
tiny random-weight causal model (fast); in-process runs inject a signal exactly inside a pipe write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vidaccel.video import Mp4Encoder, NonFiniteFramesError, count_frames, read_video, save_video

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TRITON_INTERPRET": "1"}
PREVIOUS = b"the previous video, which must survive"
PRLIMIT = "prlimit"


def _has_prlimit() -> bool:
    try:
        return subprocess.run([PRLIMIT, "--version"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


needs_prlimit = pytest.mark.skipif(not _has_prlimit(), reason="util-linux prlimit is not installed")


def _cli(*args, cwd, limit: int | None = None, **popen):
    cmd = [sys.executable, "-m", "vidaccel.cli", *args]
    if limit is not None:
        cmd = [PRLIMIT, f"--fsize={limit}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=900, **popen)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".partial" in p.name], list(folder.iterdir())


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    """A tiny random-weight block-causal Wan folder for ``vidaccel long --model``."""
    from vidaccel.pipelines.long_video import CausalConfig
    from vidaccel.testing import tiny_wan_pipeline

    folder = tmp_path_factory.mktemp("causal")
    tiny_wan_pipeline(seed=3).save_pretrained(folder)
    CausalConfig(chunk_frames=2, window_frames=6, context_noise=0.02, max_sequence_length=16).save(folder)
    return folder


# -- save_video ----------------------------------------------------------------------------------------------
def test_save_video_round_trip_and_refusals(tmp_path):
    frames = np.random.default_rng(0).random((9, 32, 48, 3))
    out = tmp_path / "v.mp4"
    save_video(frames, out, fps=8)
    assert count_frames(out) == 9 and read_video(out).shape == (9, 32, 48, 3)
    bad = frames.copy()
    bad[4, 0, 0, 0] = np.nan
    out.write_bytes(PREVIOUS)
    with pytest.raises(NonFiniteFramesError, match="frame 4 holds NaN or Inf"):
        save_video(bad, out)
    (tmp_path / "d.mp4").mkdir()
    for path, needle in ((tmp_path / "d.mp4", "is a directory"), (tmp_path / "nope" / "x.mp4", "does not exist"),
                         (tmp_path / "x.gif", "must end in .mp4")):
        with pytest.raises(ValueError, match=needle):
            save_video(frames, path)
    with pytest.raises(ValueError, match="must be even"):
        save_video(frames[:, :31], out)
    assert out.read_bytes() == PREVIOUS
    _no_leftovers(tmp_path)


@needs_prlimit
def test_save_video_on_a_full_disk_leaves_the_previous_file(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(PREVIOUS)
    script = ("import numpy as np, sys\nfrom vidaccel.video import save_video, VideoWriteError\n"
              "try:\n    save_video(np.random.default_rng(0).random((40, 64, 64, 3)), sys.argv[1])\n"
              "except VideoWriteError as e:\n    print(e); sys.exit(3)\n")
    r = subprocess.run([PRLIMIT, "--fsize=4096", sys.executable, "-c", script, str(out)], capture_output=True,
                       text=True, env=ENV, timeout=300)
    assert r.returncode == 3, r.stderr
    assert "failed" in r.stdout and "was left as it was" in r.stdout
    assert out.read_bytes() == PREVIOUS
    _no_leftovers(tmp_path)


class _SignalInWrite:
    """Wraps an encoder's stdin: the ``n``-th write first sends SIGINT to this process (inside the write)."""

    def __init__(self, inner, counter, at):
        self._inner, self._counter, self._at = inner, counter, at

    def write(self, data):
        self._counter[0] += 1
        if self._counter[0] == self._at:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now: the signal is held, not raised here
        return self._inner.write(data)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _interrupt_nth_write(monkeypatch, at: int):
    counter = [0]
    real_init = Mp4Encoder.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._proc.stdin = _SignalInWrite(self._proc.stdin, counter, at)

    monkeypatch.setattr(Mp4Encoder, "__init__", init)
    return counter


def test_interrupt_inside_a_pipe_write_never_cuts_a_file(tmp_path, monkeypatch):
    out = tmp_path / "v.mp4"
    out.write_bytes(PREVIOUS)
    _interrupt_nth_write(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        save_video(np.random.default_rng(0).random((9, 32, 32, 3)), out)
    assert out.read_bytes() == PREVIOUS  # not a 48-byte stub: the previous file, untouched
    _no_leftovers(tmp_path)


# -- generate ----------------------------------------------------------------------------------------------
@needs_prlimit
def test_generate_on_a_full_disk_exits_1_and_keeps_the_previous_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(PREVIOUS)
    r = _cli("generate", "a red circle moving right on a black background", "-o", str(out), "--frames", "17",
             "--height", "64", "--width", "64", "--steps", "1", cwd=tmp_path, limit=2048)
    assert r.returncode == 1, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "was left as it was" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert "wrote" not in r.stdout
    assert out.read_bytes() == PREVIOUS
    _no_leftovers(tmp_path)


def test_generate_refuses_non_finite_frames_and_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    import vidaccel.loading as loading
    from vidaccel.cli import main
    from vidaccel.testing import tiny_wan_pipeline

    out = tmp_path / "out.mp4"
    out.write_bytes(PREVIOUS)
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    real_call = type(pipe).__call__

    def nan_call(self, *args, **kwargs):
        result = real_call(self, *args, **kwargs)
        result.frames[0][3] = np.nan
        return result

    monkeypatch.setattr(type(pipe), "__call__", nan_call)
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pipe)
    code = main(["generate", "a red circle", "-o", str(out), "--frames", "9", "--height", "32", "--width", "32",
                 "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "frame 3 holds NaN or Inf" in err and "nothing was written" in err, err
    assert out.read_bytes() == PREVIOUS


# -- long ------------------------------------------------------------------------------------------------
LONG_ARGS = ["--steps", "1", "--chunk", "2", "--window", "6"]


def _wrote(stdout: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith("wrote"))
    return int(line.split(": ")[1].split(" frames")[0])


@needs_prlimit
def test_long_on_a_full_disk_exits_1_and_keeps_the_previous_file(tmp_path, causal_dir):
    out = tmp_path / "long.mp4"
    out.write_bytes(PREVIOUS)
    r = _cli("long", "a red circle", "--model", str(causal_dir), "--frames", "21", "-o", str(out), *LONG_ARGS,
             cwd=tmp_path, limit=2048)
    assert r.returncode == 1, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "chunk 0" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert out.read_bytes() == PREVIOUS
    assert not (tmp_path / "long.mp4.parts").exists() or not list((tmp_path / "long.mp4.parts").glob("part-*.mp4"))


@needs_prlimit
def test_long_join_on_a_full_disk_keeps_the_finished_parts(tmp_path):
    """Parts fit under the size limit, their join does not: the target stays as it was, the parts stay readable."""
    out = tmp_path / "long.mp4"
    out.write_bytes(PREVIOUS)
    probe = tmp_path / "probe.mp4"
    chunk = np.random.default_rng(1).random((8, 64, 64, 3))
    save_video(chunk, probe)
    limit = int(probe.stat().st_size * 1.6)  # one part fits; three parts joined do not
    probe.unlink()
    script = ("import numpy as np, sys\nfrom vidaccel.pipelines.long_video.writer import ChunkedMp4Writer\n"
              "from vidaccel.video import VideoWriteError, to_uint8_frames\n"
              "w = ChunkedMp4Writer(sys.argv[1], 16)\nrng = np.random.default_rng(1)\n"
              "for _ in range(3):\n    w.write_chunk(to_uint8_frames(rng.random((8, 64, 64, 3))))\n"
              "try:\n    w.finish()\nexcept VideoWriteError as e:\n    print(e); sys.exit(3)\n")
    r = subprocess.run([PRLIMIT, f"--fsize={limit}", sys.executable, "-c", script, str(out)], capture_output=True,
                       text=True, env=ENV, timeout=600)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "was left as it was and the chunks are kept in" in r.stdout
    assert out.read_bytes() == PREVIOUS
    parts = sorted((tmp_path / "long.mp4.parts").glob("part-*.mp4"))
    assert len(parts) == 3 and all(count_frames(p) == 8 for p in parts)
    assert (tmp_path / "long.mp4.parts" / "parts.txt").read_text().count("file ") == 3


def test_long_interrupt_inside_a_pipe_write_keeps_whole_chunks(tmp_path, causal_dir, monkeypatch, capsys):
    """SIGINT inside the write of chunk 1's part: the part is finished first, then the run stops; the file holds
    chunks 0 and 1 and the command says exactly that many frames, with exit 130."""
    from vidaccel.cli import main

    out = tmp_path / "long.mp4"
    out.write_bytes(PREVIOUS)
    counter = _interrupt_nth_write(monkeypatch, 2)  # one write per part: the 2nd is chunk 1's
    code = main(["long", "a red circle", "--model", str(causal_dir), "--frames", "45", "-o", str(out), *LONG_ARGS])
    printed = capsys.readouterr().out
    assert code == 130 and counter[0] >= 2
    assert "INTERRUPTED" in printed
    assert _wrote(printed) == count_frames(out) == read_video(out).shape[0] == 5 + 8
    assert not (tmp_path / "long.mp4.parts").exists()
    _no_leftovers(tmp_path)


def test_long_refuses_a_non_finite_chunk_naming_it(tmp_path, causal_dir, monkeypatch, capsys):
    import torch

    from vidaccel.cli import main
    from vidaccel.families.wan import WanStreamingDecoder

    real = WanStreamingDecoder.decode
    calls = [0]

    def decode(self, latents):
        calls[0] += 1
        pixels = real(self, latents)
        return pixels * float("nan") if calls[0] == 2 else pixels

    monkeypatch.setattr(WanStreamingDecoder, "decode", decode)
    out = tmp_path / "long.mp4"
    code = main(["long", "a red circle", "--model", str(causal_dir), "--frames", "21", "-o", str(out), *LONG_ARGS])
    err = capsys.readouterr().err
    assert code == 1 and "chunk 1 (pixel frames 5-12)" in err and "NaN or Inf" in err, err
    assert "holds the 5 frames of the 1 chunks finished before it" in err
    assert count_frames(out) == 5
    assert torch.isfinite(torch.from_numpy(read_video(out).astype("float32"))).all()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def test_sigkill_of_the_whole_process_group_loses_only_the_chunk_in_flight(tmp_path, causal_dir):
    """A container stop: Python and its encoders are killed outright in the middle of a long run. The previous
    output is untouched; every chunk finished before the kill is a readable part, and the parts join."""
    out = tmp_path / "long.mp4"
    out.write_bytes(PREVIOUS)
    proc = subprocess.Popen([sys.executable, "-m", "vidaccel.cli", "long", "a red circle", "--model", str(causal_dir),
                             "--frames", "400", "-o", str(out), *LONG_ARGS], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = tmp_path / "long.mp4.parts"
    deadline = time.time() + 600
    try:
        while len(list(parts.glob("part-*.mp4"))) < 3:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no chunk finished in time"
            time.sleep(0.05)
    finally:
        victims = _children(proc.pid)  # the encoders run in their own process groups
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert out.read_bytes() == PREVIOUS
    finished = sorted(parts.glob("part-*.mp4"))
    assert len(finished) >= 3
    counts = [count_frames(p) for p in finished]
    assert counts[0] == 5 and all(c == 8 for c in counts[1:])
    listed = [line for line in (parts / "parts.txt").read_text().split("\n") if line]
    names = [f"file '{p.name}'" for p in finished]
    assert listed in (names, names[:-1])  # a kill between a part's rename and the list update leaves it unlisted
    counts = counts[:len(listed)]
    joined = tmp_path / "joined.mp4"
    from vidaccel.video import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "concat", "-safe", "0", "-i", str(parts / "parts.txt"),
                    "-c", "copy", str(joined)], check=True, capture_output=True)
    assert count_frames(joined) == sum(counts)
    r = _cli("long", "a", "--model", str(causal_dir), "-o", str(out), *LONG_ARGS, cwd=tmp_path)
    assert r.returncode == 2 and "long.mp4.parts exists" in r.stderr  # the kept chunks are never overwritten


def test_sigterm_during_long_keeps_the_finished_chunks(tmp_path, causal_dir):
    out = tmp_path / "long.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "vidaccel.cli", "long", "a red circle", "--model", str(causal_dir),
                             "--frames", "400", "-o", str(out), *LONG_ARGS], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "long.mp4.parts"
    deadline = time.time() + 600
    while len(list(parts.glob("part-*.mp4"))) < 2:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr
    assert "INTERRUPTED" in stdout
    assert _wrote(stdout) == count_frames(out) >= 13
    assert not parts.exists()
