"""The one-shot GPU acceptance script's smoke mode: the same code paths on CPU at tiny shapes (Triton interpreter),
so the script that a GPU run depends on is known to work before a GPU is lent. Timings in smoke mode mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_acceptance_smoke(tmp_path):
    out = tmp_path / "acceptance.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_acceptance.py"), "--smoke",
                          "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["passed"] and not result["errors"]
    assert {"name", "type"} <= set(result["device"]) and result["versions"]["torch"]
    ops = {r["op"] for r in result["checks"]}
    assert {"attention", "fp8", "nvfp4", "linear_attention"} <= ops
    for r in result["checks"]:
        if r["tol"] is not None:  # every correctness figure is a finite number under its tolerance
            assert r["passed"] and r["rel_err"] == r["rel_err"] and r["rel_err"] <= r["tol"], r
    checks = {r["check"] for r in result["checks"]}
    assert "long-video chunk + LSE (auto)" in checks and any(c.startswith("block-sparse") for c in checks)
    runs = {r["run"]: r for r in result["e2e"]}
    assert {"none", "balanced", "fast", "fp8", "nvfp4"} <= set(runs) and any(n.startswith("window") for n in runs)
    for name, r in runs.items():
        assert "error" not in r and r["finite"] and r["seconds"] > 0, (name, r.get("error"))
    assert runs["none"]["rel_diff_vs_none"] == 0.0
    assert runs["fp8"]["rel_diff_vs_none"] > 0  # the preset changed the computation
