"""The shape of the package: imports run one way, modules stay readable, model-family knowledge stays in
``vidaccel/families``, ``import vidaccel`` stays light, and training never writes into the installed package."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidaccel"
MAX_LINES = 500
#: Files that may name one model family: the families themselves, the drop-in pipeline classes, the
#: Wan-only converter of original checkpoints, and the tiny test pipelines.
FAMILY_FILES = ("families/", "pipelines/wan.py", "pipelines/cogvideox.py", "convert.py", "testing.py")
#: diffusers internals only a family module may touch.
FAMILY_INTERNALS = ("transformer_wan", "transformer_cogvideox", "_get_qkv_projections", "apply_rotary_emb",
                    "WanAttnProcessor", "CogVideoXAttnProcessor2_0", "scale_shift_table", "norm_q", "norm_k")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every vidaccel module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [(base, a.name) for a in node.names]
        for module, member in targets:
            if member is not None and f"{module}.{member}" in modules:
                found.add(f"{module}.{member}")  # `from pkg import submodule`
            elif module in modules:
                found.add(module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_the_package():
    modules = _modules()
    graph = {name: _imports(name, path, modules) - {name} for name, path in modules.items()}
    assert sum(len(v) for v in graph.values()) > 50  # the walk sees the imports at all
    assert _cycles(graph) == []


def test_the_import_walk_finds_a_planted_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_layers_import_one_way():
    """families → core → techniques / kernels → api → parallel → pipelines → cli: no module imports a later
    layer."""
    order = ["vidaccel.kernels", "vidaccel.families", "vidaccel.core", "vidaccel.accel", "vidaccel.api",
             "vidaccel.parallel", "vidaccel.pipelines", "vidaccel.cli"]
    modules = _modules()

    def layer(name):
        hits = [i for i, prefix in enumerate(order) if name == prefix or name.startswith(prefix + ".")]
        return hits[0] if hits else None

    wrong = []
    for name, path in modules.items():
        mine = layer(name)
        if mine is None:
            continue
        for dep in _imports(name, path, modules):
            theirs = layer(dep)
            if theirs is not None and theirs > mine:
                wrong.append(f"{name} -> {dep}")
    assert wrong == []


def test_modules_stay_readable():
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(line.startswith("# size:") for line in lines[:5]):
            too_long.append(f"{path.relative_to(PACKAGE)}: {len(lines)} lines")
    assert too_long == []


def _family_violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            names = [n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(node.args[1])]
            if any(n.startswith(("Wan", "CogVideoX")) for n in names):
                out.append(f"line {node.lineno}: isinstance on a model class")
        if isinstance(node, ast.Compare):
            consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
            attrs = [a.attr for a in ast.walk(node) if isinstance(a, ast.Attribute)]
            if any(c in ("wan", "cogvideox") for c in consts) or "model_class" in attrs:
                out.append(f"line {node.lineno}: branch on a family name")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            if any(internal in n for n in names for internal in FAMILY_INTERNALS):
                out.append(f"line {node.lineno}: imports family internals {names}")
        if isinstance(node, ast.Attribute) and node.attr in FAMILY_INTERNALS:
            out.append(f"line {node.lineno}: touches {node.attr}")
    return out


def test_family_knowledge_lives_in_the_family_modules():
    bad = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(FAMILY_FILES):
            continue
        found = _family_violations(path)
        if found:
            bad[rel] = found
    assert bad == {}


def test_the_family_check_catches_a_planted_branch(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("from diffusers.models.transformers.transformer_wan import _get_qkv_projections\n"
                       "def f(model, family, attn):\n"
                       "    if isinstance(model, WanTransformer3DModel):\n        pass\n"
                       "    if family.name == 'cogvideox':\n        pass\n"
                       "    return attn.norm_q\n")
    assert len(_family_violations(planted)) == 4


def test_import_vidaccel_and_help_stay_light():
    probe = ("import sys, json, vidaccel, vidaccel.cli; "
             "print(json.dumps({m: m in sys.modules for m in ('diffusers', 'diffusers.hooks', 'transformers', "
             "'triton', 'torch')}))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1])
    assert loaded == {"diffusers": False, "diffusers.hooks": False, "transformers": False, "triton": False,
                      "torch": False}
    help_run = subprocess.run([sys.executable, "-m", "vidaccel.cli", "-h"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "generate" in help_run.stdout


def test_lazy_names_resolve():
    import vidaccel

    for name in vidaccel.__all__:
        assert getattr(vidaccel, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vidaccel.nope  # noqa: B018
