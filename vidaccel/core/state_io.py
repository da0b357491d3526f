"""Training state on disk without pickle: tensors in a safetensors file, everything else as JSON in its header.

:func:`save_state` takes a tree of dicts, lists and tuples whose leaves are tensors, ``int``, ``float``, ``str``,
``bool`` or ``None`` (what ``model.state_dict()``, ``optimizer.state_dict()`` and step counters are made of) and
writes it atomically (a temporary file renamed into place). :func:`load_state` reads it back: safetensors holds
only raw tensor bytes and the header only JSON, so reading a state file can never run code, whatever is in it.
Dict keys keep their type (``int`` keys of an optimizer's ``state`` stay ``int``); tuples come back as lists.

Example::

    save_state("ckpt.safetensors", {"step": 10, "model": model.state_dict(), "opt": opt.state_dict()})
    state = load_state("ckpt.safetensors")
"""

from __future__ import annotations

import json
import math
import os
import uuid

__all__ = ["save_state", "load_state", "STATE_FORMAT"]

STATE_FORMAT = "vidaccel-state"
_VERSION = "1"


def _encode(obj, tensors: dict, path: str):
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise ValueError(f"state key {k!r} at {path or 'the top'} is not allowed: keys must be str or int")
            items.append([k, _encode(v, tensors, f"{path}.{k}")])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"state value at {path or 'the top'} of type {type(obj).__name__} is not allowed: a state holds "
                     "tensors, numbers, strings, None, and dicts / lists of those")


def _decode(obj, tensors: dict, where: str):
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if key not in tensors:
                raise ValueError(f"{where}: the header names tensor {key!r}, which the file does not hold")
            return tensors[key]
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        if set(obj) == {"__dict__"}:
            return {k: _decode(v, tensors, where) for k, v in obj["__dict__"]}
        raise ValueError(f"{where}: the header holds an unknown entry {sorted(obj)[:3]}")
    return obj


def save_state(path: str | os.PathLike, state) -> str:
    """Write ``state`` (see the module docstring) to ``path`` atomically; returns the path."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    tensors: dict = {}
    tree = _encode(state, tensors, "")
    # safetensors refuses tensors sharing storage: give each its own
    tensors = {k: v.clone() for k, v in tensors.items()}
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.partial"
    try:
        save_file(tensors, tmp, metadata={"format": STATE_FORMAT, "version": _VERSION, "tree": json.dumps(tree)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_state(path: str | os.PathLike, device: str = "cpu"):
    """Read a state written by :func:`save_state`; ``ValueError`` naming the file for anything else."""
    from safetensors import safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device=device) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # not a safetensors file
        raise ValueError(f"{path} is not a vidaccel state file ({type(e).__name__}: {str(e)[:200]})") from None
    if meta.get("format") != STATE_FORMAT or meta.get("version") != _VERSION:
        raise ValueError(f"{path} is not a vidaccel state file (format={meta.get('format')!r}, "
                         f"version={meta.get('version')!r}; expected {STATE_FORMAT!r} version {_VERSION!r})")
    try:
        tree = json.loads(meta["tree"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: its header holds no readable state tree") from None
    return _decode(tree, tensors, path)
