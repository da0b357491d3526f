"""Where the original ``nn.Linear`` layers wait for :func:`vidaccel.remove` (``QuantConfig.keep_original``).

* ``"cpu"`` / ``"device"``: the very objects, in host or device memory (costs their weight bytes there).
* ``"disk"``: nothing in memory. At apply the transformer's own safetensors files (the folder it was loaded
  from, found through ``config._name_or_path``, a local folder or a hub id already in the hub cache) are
  checked to hold exactly the in-memory weights of every quantized layer (read one layer at a time); on
  remove each layer is read back from them, cast to the dtype it had, and put where the quantized layer was.
* ``"none"``: nothing kept; :func:`vidaccel.remove` raises, naming what to do instead.

Host memory per option on Wan2.1-T2V-1.3B: ``benchmarks/RESULTS.md`` (section keep_original).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["DiskOriginals", "find_source_files"]

_WEIGHTS = "diffusion_pytorch_model.safetensors"
_INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _weight_files(folder: str) -> list[str]:
    index = os.path.join(folder, _INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    single = os.path.join(folder, _WEIGHTS)
    return [single] if os.path.isfile(single) else []


def _candidate_folders(model: nn.Module, role: str) -> list[str]:
    source = getattr(model.config, "_name_or_path", None) if hasattr(model, "config") else None
    if not source:
        return []
    source = os.fspath(source)
    roots = [source] if os.path.isdir(source) else []
    if not roots and source.count("/") == 1 and not os.path.exists(source):  # a hub id: its cached snapshot
        try:
            from huggingface_hub import snapshot_download

            roots = [snapshot_download(source, local_files_only=True)]
        except Exception:  # not in the cache (or no huggingface_hub): nothing to read back
            roots = []
    return [f for r in roots for f in (r, os.path.join(r, role))]


def find_source_files(model: nn.Module, role: str) -> tuple[list[str], list[str]]:
    """``(safetensors files, folders looked at)`` of the checkpoint ``model`` was loaded from."""
    folders = _candidate_folders(model, role)
    for folder in folders:
        files = _weight_files(folder)
        if files:
            return files, folders
    return [], folders


@dataclass
class _Entry:
    file: str
    dtype: torch.dtype
    requires_grad: bool
    has_bias: bool


class DiskOriginals:
    """The original weights of quantized layers, re-read from the checkpoint's safetensors on remove."""

    def __init__(self, model: nn.Module, role: str):
        self.files, looked = find_source_files(model, role)
        if not self.files:
            where = ", ".join(looked) if looked else "none (the transformer has no config._name_or_path)"
            raise ValueError(f"QuantConfig.keep_original='disk' needs the {role} to come from a safetensors "
                             f"checkpoint (from_pretrained of a folder or a cached hub id); folders looked at: {where}. "
                             "Use keep_original='cpu', 'device' or 'none'")
        self.entries: dict[str, _Entry] = {}
        self._keys = self._index()

    def _index(self) -> dict[str, str]:
        from safetensors import safe_open

        keys = {}
        for path in self.files:
            with safe_open(path, framework="pt") as f:
                for k in f.keys():
                    keys[k] = path
        return keys

    def _read(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self._keys[key], framework="pt") as f:
            return f.get_tensor(key)

    def verify_and_record(self, name: str, linear: nn.Linear) -> None:
        """Check the file holds exactly ``linear``'s weight (and bias) at ``name``; remember how to rebuild it."""
        w = linear.weight
        for suffix, t in (("weight", w), ("bias", linear.bias)):
            if t is None:
                continue
            key = f"{name}.{suffix}"
            if key not in self._keys:
                raise ValueError(f"QuantConfig.keep_original='disk': {self.files[0]} has no tensor {key!r}, so "
                                 f"{name} could not be restored from it; use keep_original='cpu' or 'device'")
            stored = self._read(key)
            if stored.shape != t.shape or not torch.equal(stored.to(t.dtype), t.detach().cpu()):
                raise ValueError(f"QuantConfig.keep_original='disk': {name}.{suffix} in memory differs from "
                                 f"{self._keys[key]} (weights changed after loading, e.g. a fused LoRA), so remove "
                                 "could not restore it from disk; use keep_original='cpu' or 'device'")
        self.entries[name] = _Entry(self._keys[f"{name}.weight"], w.dtype, w.requires_grad, linear.bias is not None)

    def restore(self, name: str, device: torch.device) -> nn.Linear:
        """A fresh ``nn.Linear`` holding the stored weights of ``name`` in their original dtype, on ``device``."""
        e = self.entries[name]
        weight = self._read(f"{name}.weight").to(device=device, dtype=e.dtype)
        with torch.device("meta"):
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=e.has_bias)
        linear.weight = nn.Parameter(weight, requires_grad=e.requires_grad)
        if e.has_bias:
            linear.bias = nn.Parameter(self._read(f"{name}.bias").to(device=device, dtype=e.dtype),
                                       requires_grad=e.requires_grad)
        return linear
