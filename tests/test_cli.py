"""The vidaccel command line, end to end, in subprocesses (real exit codes, real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vidaccel.video import read_video

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def vidaccel(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vidaccel.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def test_generate_writes_mp4_with_requested_size(tmp_path):
    out = tmp_path / "clip.mp4"
    r = vidaccel("generate", "a red circle moving right on a black background", "-o", str(out),
                 "--frames", "9", "--height", "64", "--width", "96", "--steps", "2", "--seed", "3")
    assert r.returncode == 0, r.stderr
    frames = read_video(out)
    assert frames.shape == (9, 64, 96, 3)
    assert "wrote" in r.stdout and "denoise" in r.stdout and "accelerated" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--frames", "10"], "--frames=10 is not allowed: it must be 4k+1"),
    (["--frames", "0"], "--frames=0 is not allowed"),
    (["--height", "100"], "--height=100 is not allowed: it must be a positive multiple of 16"),
    (["--width", "-16"], "--width=-16 is not allowed"),
    (["--steps", "-2"], "--steps=-2 is not allowed: it must be >= 1"),
    (["--steps", "abc"], "--steps='abc' is not an integer"),
    (["--guidance", "-1"], "--guidance=-1.0 is not allowed"),
    (["--preset", "turbo"], "--preset='turbo' is not allowed; choose one of: none"),
    (["--dtype", "fp12"], "--dtype='fp12' is not allowed"),
    (["-o", "clip.gif"], "--output='clip.gif' is not allowed"),
    (["--device", "cuda:7"], "device='cuda:7'"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, needle):
    # In-process for speed: `vidaccel` is `sys.exit(main())`, so main's return value is the exit code.
    from vidaccel.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["generate", "a red circle", *args])
    err = capsys.readouterr().err
    if "--device" in args and code == 0:
        pytest.skip("a CUDA device exists here")
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not list(tmp_path.glob("*.mp4"))


def test_bad_argument_real_exit_code():
    r = vidaccel("generate", "a red circle", "--frames", "12")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_size_off_the_model_grid_is_refused(tmp_path, capsys):
    from vidaccel.cli import main
    from vidaccel.loading import load_pipeline
    from vidaccel.families import family_for

    pipe = load_pipeline("embedded", device="cpu")
    multiple = pipe.vae_scale_factor_spatial * family_for(pipe.transformer).patch_size(pipe.transformer)[1]
    bad = multiple + 16 if multiple > 16 else None
    if bad is None:
        pytest.skip("this embedded model accepts every multiple of 16")
    assert main(["generate", "a red circle", "--width", str(bad), "-o", str(tmp_path / "x.mp4")]) == 2
    assert f"--width={bad} is not allowed for this model: it must be a multiple of {multiple}" in capsys.readouterr().err


def test_info_lists_versions_and_backends():
    r = vidaccel("info", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("vidaccel", "torch", "diffusers", "triton", "device", "kernel_backends", "presets"):
        assert key in data
    assert "torch" in data["kernel_backends"] and "none" in data["presets"]


def test_unknown_subcommand_and_no_command():
    r = vidaccel("fly")
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr
    assert vidaccel().returncode == 2


def test_bench_cli_writes_reports(tmp_path):
    r = vidaccel("bench", "--config", "fbc:0.2", "--frames", "5", "--height", "32", "--width", "32",
                 "--steps", "3", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (tmp_path / "b" / name).stat().st_size > 0
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["baseline", "diffusers-fbc:0.2"]
    r = vidaccel("bench", "--config", "warp9")
    assert r.returncode == 2 and "--config='warp9' is not known" in r.stderr


def test_linearize_cli_bad_arguments(capsys):
    from vidaccel.cli import main

    assert main(["linearize", "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "Traceback" not in err
