"""No file vidaccel reads is ever unpickled, and no text is ever executed.

The source scan walks the syntax tree of every module of ``vidaccel/`` and ``training/`` (so ``model.eval()`` and
words in docstrings do not count) for: ``torch.load`` without ``weights_only=True``, any import of ``pickle``
(or ``cPickle``, ``dill``, ``marshal``, ``shelve``), ``numpy.load(..., allow_pickle=True)``, and the builtins
``eval`` / ``exec`` / ``compile``. The resume tests plant state files that would run code if unpickled.
"""

from __future__ import annotations

import ast
import os
import pickle  # the test builds a hostile pickle; the package itself may not import it
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [ROOT / "vidaccel", ROOT / "training"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}


def _findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                                                     else [])
            if any(n.split(".")[0] in PICKLE_MODULES for n in names):
                out.append(f"line {node.lineno}: imports {names}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile", "__import__") and func.id != "compile" \
                or (isinstance(func, ast.Name) and func.id == "compile" and node.args and not isinstance(node.args[0], ast.Constant)):
            out.append(f"line {node.lineno}: calls {func.id}()")
        if isinstance(func, ast.Attribute) and func.attr == "load":
            owner = func.value.id if isinstance(func.value, ast.Name) else getattr(func.value, "attr", "")
            kwargs = {k.arg: k.value for k in node.keywords}
            if owner == "torch":
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    out.append(f"line {node.lineno}: torch.load without weights_only=True")
            if owner in ("np", "numpy"):
                flag = kwargs.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    out.append(f"line {node.lineno}: numpy.load with allow_pickle")
        if isinstance(func, ast.Attribute) and func.attr in ("loads", "load", "Unpickler") and \
                isinstance(func.value, ast.Name) and func.value.id in PICKLE_MODULES:
            out.append(f"line {node.lineno}: {func.value.id}.{func.attr}")
    return out


def test_the_package_never_unpickles_or_executes_text():
    found = {}
    files = [p for root in SCANNED for p in root.rglob("*.py")]
    assert len(files) > 50  # the scan sees the package at all
    for path in files:
        hits = _findings(path)
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}


def test_the_scan_catches_planted_calls(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("import pickle\nimport torch, numpy as np\n"
                       "def f(p, s):\n"
                       "    torch.load(p)\n    torch.load(p, weights_only=False)\n    np.load(p, allow_pickle=True)\n"
                       "    eval(s)\n    exec(s)\n    pickle.loads(s)\n"
                       "    torch.load(p, weights_only=True)\n    model.eval()\n")
    assert len(_findings(planted)) == 7


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _hostile_pickle(path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"step": 1, "x": _Boom()}, f)


def test_state_files_cannot_run_code(tmp_path, monkeypatch):
    from vidaccel.core.state_io import load_state, save_state

    monkeypatch.chdir(tmp_path)
    state = {"step": 3, "losses": [0.5, float("nan")], "opt": {"state": {0: {"step": torch.tensor(3.0)}},
                                                               "param_groups": [{"lr": 0.01, "betas": (0.9, 0.99),
                                                                                 "params": [0]}]},
             "params": {"w": torch.arange(6.0).view(2, 3)}}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["step"] == 3 and back["opt"]["state"][0]["step"].item() == 3.0
    assert back["opt"]["param_groups"][0]["betas"] == [0.9, 0.99] and 0 in back["opt"]["state"]
    assert torch.equal(back["params"]["w"], state["params"]["w"]) and back["losses"][1] != back["losses"][1]
    _hostile_pickle(tmp_path / "evil.safetensors")
    with pytest.raises(ValueError, match="is not a vidaccel state file"):
        load_state(tmp_path / "evil.safetensors")
    assert not (tmp_path / "PWNED").exists()


def test_linearize_resume_ignores_a_planted_pickle(tmp_path, monkeypatch, one_thread):
    """A crafted ``linearize_state.pt`` (the old resume file) is never read; a crafted ``.safetensors`` is refused."""
    import vidaccel
    from vidaccel.accel.linear_attention.distill import STATE_FILE
    from vidaccel.testing import tiny_call_kwargs, tiny_wan_pipeline

    monkeypatch.chdir(tmp_path)
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    _hostile_pickle(ckpt / "linearize_state.pt")
    kwargs = dict(prompts=["a red circle"], steps=2, call_kwargs=tiny_call_kwargs(pipe, num_inference_steps=2),
                  checkpoint_dir=ckpt, progress=False, max_calls=2)
    config = vidaccel.LinearAttentionConfig(layers=[0])
    first = vidaccel.linearize(pipe, config, resume=True, **kwargs)
    assert first.steps == 2 and (ckpt / STATE_FILE).is_file()
    resumed = vidaccel.linearize(pipe, config, resume=True, **dict(kwargs, steps=3))
    assert resumed.steps == 3 and len(resumed.losses) == 3
    _hostile_pickle(ckpt / STATE_FILE)
    with pytest.raises(ValueError, match="is not a vidaccel state file"):
        vidaccel.linearize(pipe, config, resume=True, **kwargs)
    assert not (tmp_path / "PWNED").exists()
