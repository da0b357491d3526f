"""Every script in examples/ runs (few steps) and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


@pytest.mark.parametrize("script,args", [
    ("dropin_pipeline.py", ["--steps", "2", "-o", "{tmp}/d.mp4"]),
    ("apply_and_remove.py", ["--steps", "2"]),
    ("benchmark.py", ["--steps", "2", "--out", "{tmp}/b"]),
    ("tune.py", ["--steps", "3", "--minutes", "0.5", "-o", "{tmp}/t.json"]),
])
def test_example_runs(tmp_path, script, args):
    args = [a.format(tmp=tmp_path) for a in args]
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                       env=ENV, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    if script == "apply_and_remove.py":
        assert "output identical to the baseline" in r.stdout
    if script == "benchmark.py":
        assert (tmp_path / "b" / "bench.json").exists()
    if script == "tune.py":
        assert "chosen:" in r.stdout and (tmp_path / "t.json").exists() and (tmp_path / "t.png").exists()
