"""Fuzz every subcommand and flag of the ``vidaccel`` command line with bad values.

Each case must exit with code 2 and print exactly one line on stderr, starting with ``error:`` and naming the
flag, with no traceback, **before any model is loaded** (the loaders, the conversion, the training and the
benchmark are replaced by a tripwire: reaching one fails the test). Bad values come from a fixed list per flag
kind plus hypothesis strategies that only produce invalid values (so a valid value never starts real work).

Checks that need the model (sizes against its position table and VAE grid, memory, steps against a preset's
warm-up, layer indices, the kind of model folder) are exercised on the real embedded model in
``test_model_dependent_errors_come_before_any_step``, with a hook counting transformer calls (none may run).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vidaccel.cli import main

from .fuzzing import COUNTS, FUZZ

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


class _Tripwire(Exception):
    pass


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Every way a subcommand starts real work raises; the working directory is a fresh folder."""
    import vidaccel.accel.linear_attention as la
    import vidaccel.bench as bench
    import vidaccel.convert as convert
    import vidaccel.loading as loading
    from vidaccel.pipelines.long_video import LongVideoPipeline

    def trip(*args, **kwargs):
        raise _Tripwire("work started")

    for owner, name in [(loading, "load_pipeline"), (convert, "convert_wan_original"), (la, "linearize"),
                        (bench, "run_benchmark")]:
        monkeypatch.setattr(owner, name, trip)
    monkeypatch.setattr(LongVideoPipeline, "from_pretrained", classmethod(trip))
    monkeypatch.setattr(LongVideoPipeline, "from_embedded", classmethod(trip))
    sys.path.insert(0, str(os.path.dirname(os.path.dirname(__file__))))
    import training.train as train

    monkeypatch.setattr(train, "train_embedded", trip)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("not a checkpoint")
    (tmp_path / "adir.mp4").mkdir()
    (tmp_path / "adir").mkdir()
    if os.geteuid() == 0:  # root may write anywhere: "ro" becomes a file, so "ro/x" still has no writable folder
        (tmp_path / "ro").write_text("")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
    return tmp_path


def _expect_refusal(capsys, argv: list[str], command: str):
    COUNTS[f"cli {command}"] += 1
    try:
        code = main(argv)
    except _Tripwire:
        raise AssertionError(f"{argv!r} started work instead of being refused") from None
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), (argv, err)
    assert "Traceback" not in err


# -- bad values per kind of flag ----------------------------------------------------------------------------
INTS = ["abc", "1.5", "", "0x10", "nan", "1e3", str(2**63), str(-(2**63) - 1), "9" * 5000]
NEG = ["-1", "-1000000000000000000000"]
FLOATS = ["abc", "", "nan", "inf", "-inf", "1e999", "NaN", "0x1p3x"]
PATHS_MP4 = ["", "x.gif", "adir.mp4", "/nonexistent/dir/x.mp4", "ro/x.mp4", "afile.txt/x.mp4", "a\x00b.mp4",
             "y" * 300 + ".mp4"]


def not_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


def not_float(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return True


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
BAD_INT_TEXT = TEXT.filter(not_int)
BAD_FLOAT_TEXT = TEXT.filter(not_float)


def bad_ints(lo: int | None = None, hi: int | None = None):
    options = [BAD_INT_TEXT]
    if lo is not None:
        options.append(st.integers(max_value=lo - 1).map(str))
    if hi is not None:
        options.append(st.integers(min_value=hi + 1).map(str))
    return st.one_of(*options)


def bad_floats(lo: float | None = None, hi: float | None = None, lo_open=False):
    options = [BAD_FLOAT_TEXT]
    if lo is not None:
        below = st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False, allow_infinity=False)
        options.append(below.map(repr))
    if hi is not None:
        options.append(st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False).map(repr))
    return st.one_of(*options)


def bad_choice(allowed):
    return TEXT.filter(lambda t: t not in allowed)


# subcommand -> (arguments before the flag, {flag: (fixed bad values, strategy of bad values)})
PRESETS = ["none", "quality", "balanced", "fast", "fp8", "nvfp4"]
SIZE = {
    "--frames": (INTS + NEG + ["0", "10", "2", "100005"], bad_ints(1).filter(lambda t: not_int(t) or int(t) < 1)),
    "--height": (INTS + NEG + ["0", "8", "100", str(2**21)], bad_ints(16, 2**20)),
    "--width": (INTS + NEG + ["0", "15", "24", str(2**21)], bad_ints(16, 2**20)),
    "--steps": (INTS + NEG + ["0", "10001"], bad_ints(1, 10_000)),
    "--guidance": (FLOATS + ["-1", "100.5", "1e300"], bad_floats(0, 100)),
    "--device": (["gpu", "cuda", "cuda:9", "tpu", "", "cpu:x", "-1"], st.sampled_from(["gpu", "cuda:0", "xla", "mps"])),
    "--dtype": (["fp12", "", "int8", "float64"], bad_choice(["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"])),
}
COMMANDS = {
    "generate": (["generate", "a red circle"], {
        **SIZE,
        "--output": (PATHS_MP4, TEXT.filter(lambda t: not t.lower().endswith(".mp4"))),
        "--preset": (["turbo", "", "FAST", "none "], bad_choice(PRESETS)),
        "--seed": (INTS + NEG + [str(2**63), str(2**70)], bad_ints(0, 2**63 - 1)),
        "--fps": (INTS + NEG + ["0", "1001"], bad_ints(1, 1000)),
        "--model": (["afile.txt", "adir", "", "a\x00b"], st.sampled_from(["afile.txt", "adir"])),
        "--ulysses": (INTS + NEG + ["0", "3"], bad_ints(1, 10_000)),
        "--ring": (INTS + NEG + ["0", "3"], bad_ints(1, 10_000)),
        "--prompts": (["missing.txt", "adir", ""], st.sampled_from(["missing.txt", "adir"])),
    }),
    "bench": (["bench"], {
        **SIZE,
        "--config": (["warp9", "fbc:nan", "fbc:inf", "fbc:-1", "fbc:x", "taylorseer:0", "taylorseer:-3",
                      "taylorseer:1.5", "taylorseer:nan", "magcache:inf", "cache-dit:nan", ""],
                     st.one_of(bad_choice(PRESETS + ["fbc", "magcache", "taylorseer", "cache-dit"]),
                               BAD_FLOAT_TEXT.map(lambda t: "fbc:" + t).filter(lambda t: t != "fbc:"),
                               bad_ints(1, 10_000).map(lambda t: "taylorseer:" + t).filter(lambda t: t != "taylorseer:"))),
        "--seeds": (INTS + NEG + ["0", "10001"], bad_ints(1, 10_000)),
        "--repeats": (INTS + NEG + ["0"], bad_ints(1, 10_000)),
        "--out": (["afile.txt", "/nonexistent/dir/x", "ro/x", "", "a\x00b"], st.sampled_from(["afile.txt", "ro/y"])),
    }),
    "long": (["long", "a red circle"], {
        "--seconds": (FLOATS + NEG + ["0", "1e8", "1e-300"], bad_floats(0, 1e7, lo_open=True)),
        "--frames": (INTS + NEG + ["0", str(10**9 + 1)], bad_ints(1, 10**9)),
        "--switch": (["x:a", "nan:a", "inf:a", "-1:a", "0:a", "1:", "1", "11:a"], TEXT.filter(lambda t: ":" not in t)),
        "--output": (PATHS_MP4, TEXT.filter(lambda t: not t.lower().endswith(".mp4"))),
        "--model": (["afile.txt", "adir", "", "nonexistent-folder"], st.sampled_from(["afile.txt", "adir"])),
        "--chunk": (INTS + NEG + ["0", str(2**31)], bad_ints(1, 2**31 - 1)),
        "--window": (INTS + NEG + ["0"], bad_ints(1, 2**31 - 1)),
        "--sink": (INTS + NEG, bad_ints(0, 2**31 - 1)),
        "--ema": (FLOATS + ["-0.1", "1", "1.5"], bad_floats(0, 1)),
        "--steps": (INTS + NEG + ["0", "10001"], bad_ints(1, 10_000)),
        "--guidance": (FLOATS + ["-1", "101"], bad_floats(0, 100)),
        "--seed": (INTS + NEG + [str(2**70)], bad_ints(0, 2**63 - 1)),
        "--fps": (FLOATS + ["0", "-16", "1001"], bad_floats(0, 1000, lo_open=True)),
        "--positions": (["", "rel", "ABSOLUTE"], bad_choice(["relative", "absolute"])),
        "--device": SIZE["--device"],
        "--preset": (["turbo", "", "fastest"], bad_choice(PRESETS)),
    }),
    "convert": (["convert", "wan-original", "afile.txt", "out"], {
        "source_format": (["", "wan", "original", "safetensors"], bad_choice(["wan-original"])),
        "checkpoint": (["missing.pt", "adir", "", "a\x00b"], st.sampled_from(["missing.pt", "adir"])),
        "out_dir": (["afile.txt", "/nonexistent/dir/x", "ro/x", ""], st.sampled_from(["afile.txt", "ro/z"])),
        "--base": (["adir", "afile.txt", "/nonexistent"], st.sampled_from(["adir", "afile.txt"])),
        "--chunk-frames": (INTS + NEG + ["0", str(2**31)], bad_ints(1, 2**31 - 1)),
        "--window-frames": (INTS + NEG + ["1", "5"], bad_ints(2, 2**31 - 1)),
        "--context-noise": (FLOATS + ["-0.1", "1", "2"], bad_floats(0, 1)),
        "--head-dim": (INTS + NEG + ["0", "65537"], bad_ints(1, 65536)),
    }),
    "linearize": (["linearize", "-o", "lin.safetensors", "--prompt", "a red circle"], {
        "--output": (["", "x.pt", "adir", "/nonexistent/x.safetensors", "ro/x.safetensors"],
                     TEXT.filter(lambda t: not t.lower().endswith(".safetensors"))),
        "--layers": (["x", "1,a", "-1", "1.5", "0,-2"], TEXT.filter(lambda t: t != "auto").filter(
            lambda t: any(not_int(x) or int(x) < 0 for x in t.split(",") if x.strip()))),
        "--num-layers": (INTS + NEG, bad_ints(0, 2**31)),
        "--feature-map": (["", "softmax", "ELU"], bad_choice(["hedgehog", "elu", "relu"])),
        "--rope": (["", "both"], bad_choice(["numerator", "none"])),
        "--steps": (INTS + NEG + [str(10**7 + 1)], bad_ints(0, 10**7)),
        "--lr": (FLOATS + ["0", "-1", "11"], bad_floats(0, 10, lo_open=True)),
        "--final-weight": (FLOATS + ["-1", "1e7"], bad_floats(0, 1e6)),
        "--inference-steps": (INTS + NEG + ["0"], bad_ints(1, 10_000)),
        "--height": SIZE["--height"], "--width": SIZE["--width"], "--num-frames": SIZE["--frames"],
        "--seeds": (["x", "1,a", "-1", str(2**70), "", ","], TEXT.filter(lambda t: any(
            not_int(x) or not 0 <= int(x) < 2**63 for x in t.split(",") if x.strip()) or not t.replace(",", "").strip())),
        "--checkpoint-dir": (["afile.txt", "/nonexistent/x/y", "ro/x"], st.sampled_from(["afile.txt", "ro/w"])),
        "--prompts-file": (["missing.txt", "adir", ""], st.sampled_from(["missing.txt", "adir"])),
        "--device": SIZE["--device"], "--dtype": SIZE["--dtype"],
        "model": (["afile.txt", "adir"], st.sampled_from(["afile.txt", "adir"])),
    }),
    "train-embedded": (["train-embedded"], {
        "--threads": (INTS + NEG + ["0", "5000"], bad_ints(1, 4096)),
        "--minutes": (["t2v", "t2v=x", "t2v=nan", "t2v=0", "t2v=-1", "warp=3", "latents=3", "=3"],
                      st.sampled_from(["t2v=inf", "vae=", "x=1"])),
        "--stages": (["", "warp", "t2v,warp", ","], st.sampled_from(["nope", "t2v,,x"])),
        "--set": (["x=1", "lr=nan", "lr=inf", "lr=abc", "height=33", "t2v_steps=-1", "t2v_steps=1.5", "nope"],
                  st.sampled_from(["batch=0", "seed=x", "n_short=0"])),
        "--out": (["afile.txt", "/nonexistent/x/y"], st.sampled_from(["afile.txt"])),
        "--workdir": (["afile.txt", "/nonexistent/x/y"], st.sampled_from(["afile.txt"])),
    }),
    "info": (["info"], {"--jsn": ([""], st.just("")), "--json": (["x"], st.just("x"))}),
    "tune": (["tune", "--prompt", "a red circle", "--prompt", "a blue square", "--budget", "psnr=30"], {
        **SIZE,
        "--budget": (["", "psnr", "psnr=x", "psnr=nan", "psnr=-1", "foo=3", "psnr=30,psnr=31", "ssim=2"],
                     TEXT.filter(lambda t: "=" not in t)),
        "--minutes": (FLOATS + NEG + ["0"], bad_floats(0, lo_open=True)),
        "--output": (["", "t.txt", "adir.json", "/nonexistent/dir/t.json"],
                     TEXT.filter(lambda t: not t.lower().endswith(".json"))),
        "--techniques": (["", "cache,warp", "quantize", ","], bad_choice(["cache", "sliding_window", "quant"])),
        "--seeds": (INTS + NEG + ["0"], bad_ints(1, 10_000)),
        "--low-steps": (INTS + NEG + ["0"], bad_ints(1, 10_000)),
        "--prompts": (["missing.txt", "adir", ""], st.sampled_from(["missing.txt", "adir"])),
        "--adapter": (["missing.safetensors", "adir", "afile.txt"], st.sampled_from(["missing.safetensors", "adir"])),
    }),
}
POSITIONAL = {"source_format": 1, "checkpoint": 2, "out_dir": 3, "model": None}
CASES = [(cmd, flag) for cmd, (_, flags) in COMMANDS.items() for flag in flags]


def _argv(command: str, flag: str, value: str) -> list[str]:
    base, _ = COMMANDS[command]
    base = list(base)
    if flag in POSITIONAL:
        if POSITIONAL[flag] is None:  # linearize's model
            return base + [value]
        base[POSITIONAL[flag]] = value
        return base
    return base + [f"{flag}={value}"] if value.startswith("-") or not value else base + [flag, value]


@pytest.mark.parametrize("command,flag", CASES, ids=[f"{c}{f}" for c, f in CASES])
def test_bad_flag_values(command, flag, no_work, capsys):
    fixed, strategy = COMMANDS[command][1][flag]
    for value in fixed:
        _expect_refusal(capsys, _argv(command, flag, value), command)

    @FUZZ
    @given(value=strategy)
    def run(value):
        _expect_refusal(capsys, _argv(command, flag, value), command)

    run()


@pytest.mark.parametrize("argv", [["fly"], ["generate"], ["long"], ["convert", "wan-original"], ["generate", "a", "--bogus"],
                                  ["bench", "extra"], ["-q"], ["generate", "a", "--steps"]])
def test_bad_command_lines(argv, no_work, capsys):
    _expect_refusal(capsys, argv, "structure")


def test_real_exit_codes_in_a_subprocess(tmp_path):
    """The same contract through ``python -m vidaccel.cli``: exit 2, one stderr line, nothing written."""
    for argv in (["generate", "a", "--seed", str(2**70)], ["generate", "a", "--guidance", "inf"],
                 ["long", "a", "--seconds", "inf"], ["bench", "--config", "taylorseer:0"],
                 ["generate", "a", "-o", str(tmp_path)], ["long", "a", "--device", "cuda:0"]):
        COUNTS["cli subprocess"] += 1
        r = subprocess.run([sys.executable, "-m", "vidaccel.cli", *argv], capture_output=True, text=True, env=ENV,
                           cwd=tmp_path, timeout=300)
        if "--device" in argv and r.returncode == 0:
            continue  # a machine with CUDA
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (argv, r.stderr)
    assert not list(tmp_path.iterdir())


# -- checks against the loaded model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded_pipe():
    import vidaccel

    return vidaccel.load_pipeline("embedded", device="cpu")


@pytest.fixture
def counted(embedded_pipe, monkeypatch, tmp_path):
    """``load_pipeline`` hands out the one embedded pipeline (presets applied and removed per case); the transformer
    counts its calls."""
    import vidaccel
    import vidaccel.loading as loading

    calls = []
    handle = embedded_pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))

    def load(model, *, dtype=None, device=None, accel=None, **kwargs):
        vidaccel.remove(embedded_pipe)
        if accel not in (None, "none"):
            vidaccel.apply(embedded_pipe, accel)
        return embedded_pipe

    monkeypatch.setattr(loading, "load_pipeline", load)
    monkeypatch.chdir(tmp_path)
    yield calls
    handle.remove()
    vidaccel.remove(embedded_pipe)


@pytest.mark.parametrize("argv,needle", [
    (["generate", "a", "--height", "8192"], "--height=8192 is not allowed for this model: it is 256 tokens, beyond its "
                                            "position table of 64"),
    (["generate", "a", "--width", "4096", "--height", "64"], "--width=4096 is not allowed for this model"),
    (["generate", "a", "--frames", "257"], "--frames=257 is not allowed for this model: it is 65 latent frames"),
    (["generate", "a", "--width", "48"], "--width=48 is not allowed for this model: it must be a multiple of 32"),
    (["generate", "a", "--steps", "1001"], "--steps=1001 is not allowed for this model: its scheduler has 1000"),
    (["bench", "--height", "8192"], "--height=8192 is not allowed for this model"),
    (["linearize", "-o", "l.safetensors", "--prompt", "a", "--layers", "99"], "layers=[99] is not allowed: the "
                                                                             "transformer has 6 layers"),
    (["linearize", "-o", "l.safetensors", "--prompt", "a", "--num-layers", "7"], "num_layers=7 is not allowed"),
    (["linearize", "-o", "l.safetensors", "--prompt", "a", "--height", "8192"], "--height=8192 is not allowed"),
])
def test_model_dependent_errors_come_before_any_step(argv, needle, counted, capsys):
    COUNTS[f"cli {argv[0]} (model-dependent)"] += 1
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert counted == [], "a transformer step ran before the refusal"


def test_memory_estimate_refuses_before_any_step(counted, capsys, monkeypatch):
    """A size inside the position table but far beyond memory is refused up front (here: 1 GiB "available")."""
    import vidaccel.memory

    monkeypatch.setattr(vidaccel.memory, "available_bytes", lambda device: 2**30)
    COUNTS["cli generate (model-dependent)"] += 1
    assert main(["generate", "a", "--height", "2048", "--width", "2048", "--frames", "249"]) == 2
    err = capsys.readouterr().err
    assert "the call needs at least" in err and "GiB available on cpu" in err and err.count("\n") == 1, err
    assert counted == []


def test_long_refuses_a_model_that_is_not_block_causal(tmp_path, capsys):
    """``long --model`` on a non-causal Wan folder, a CogVideoX folder and a broken folder: exit 2, one line."""
    from vidaccel.pipelines.long_video import CausalConfig
    from vidaccel.testing import tiny_cogvideox_pipeline, tiny_wan_pipeline

    tiny_wan_pipeline().save_pretrained(tmp_path / "wan")
    cog = tmp_path / "cog"
    tiny_cogvideox_pipeline("1.0").save_pretrained(cog)
    CausalConfig(chunk_frames=2, window_frames=4).save(cog)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    (broken / "causal_config.json").write_text('{"chunk_frames": "x"}')
    capsys.readouterr()  # the saves' progress bars
    for folder, needles in ((tmp_path / "wan", ["has no causal_config.json"]),
                            (cog, ["not a rolling-KV long-video model", "could not be loaded"]),
                            (broken, ["CausalConfig.chunk_frames='x' is not allowed"])):
        COUNTS["cli long (model-dependent)"] += 1
        assert main(["long", "a", "--model", str(folder), "-o", str(tmp_path / "x.mp4")]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and any(n in lines[0] for n in needles), err
    assert not (tmp_path / "x.mp4").exists()


def test_convert_refuses_a_non_checkpoint(tmp_path, capsys):
    for content in (b"not a checkpoint", b"\x80\x04K\x01.", b""):
        path = tmp_path / "c.pt"
        path.write_bytes(content)
        COUNTS["cli convert (file contents)"] += 1
        assert main(["convert", "wan-original", str(path), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a" in err, err
    assert not (tmp_path / "out" / "transformer").exists()
