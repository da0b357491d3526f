"""Linear-attention adapter files: a safetensors file holding the swapped layers (per transformer role), the
feature map, the RoPE mode, the layer ranking and the trained feature-map parameters."""

from __future__ import annotations

import json
import os

from ...core.validation import shown

__all__ = ["ADAPTER_FORMAT", "ADAPTER_VERSION", "read_adapter_metadata", "save_adapter", "load_adapter_tensors"]

#: ``format`` metadata value of adapter files.
ADAPTER_FORMAT = "vidaccel-linear-attention"
ADAPTER_VERSION = "1"


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of an adapter file (``roles``, ``ranking``, ``sensitivity`` are parsed JSON)."""
    from safetensors import safe_open

    path = os.fspath(path)
    label = f"LinearAttentionConfig.adapter={shown(path)} is not allowed"
    if not os.path.isfile(path):
        raise ValueError(f"{label}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # not a safetensors file
        raise ValueError(f"{label}: it is not a safetensors file ({str(e)[:200]})") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{label}: it is not a linear-attention adapter "
                         f"(metadata format={meta.get('format')!r}, expected {ADAPTER_FORMAT!r})")
    missing = [k for k in ("model_class", "feature_map", "rope", "roles") if k not in meta]
    if missing:
        raise ValueError(f"{label}: its header lacks {missing}; expected an adapter written by vidaccel.linearize")
    for key in ("roles", "ranking", "sensitivity"):
        try:
            meta[key] = json.loads(meta.get(key) or "{}")
        except ValueError:
            raise ValueError(f"{label}: its header field {key!r} is not valid JSON") from None
        if not isinstance(meta[key], dict):
            raise ValueError(f"{label}: its header field {key!r} is not a JSON object")
    return meta


def save_adapter(path: str | os.PathLike, techniques: dict) -> str:
    """Write the techniques' (one per role) layers, ranking and parameters as a safetensors adapter."""
    from safetensors.torch import save_file

    tensors, roles, ranking, sensitivity = {}, {}, {}, {}
    model_class = feature_map = rope = None
    for role, tech in techniques.items():
        for name, p in tech.feature_maps.state_dict().items():
            tensors[f"{role}.{name}"] = p.detach().float().cpu().contiguous()
        roles[role] = {"layers": list(tech.layers), "num_model_layers": len(tech.family.blocks(tech.model))}
        ranking[role] = list(tech.ranking) if tech.ranking is not None else None
        sensitivity[role] = {str(i): e for i, e in (tech.sensitivity or {}).items()}
        model_class, feature_map, rope = type(tech.model).__name__, tech.config.feature_map, tech.config.rope
    meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "model_class": model_class,
            "feature_map": feature_map, "rope": rope, "roles": json.dumps(roles), "ranking": json.dumps(ranking),
            "sensitivity": json.dumps(sensitivity)}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=meta)
    return path


def load_adapter_tensors(path: str, role: str) -> dict:
    from safetensors.torch import load_file

    prefix = role + "."
    return {k[len(prefix):]: v for k, v in load_file(path).items() if k.startswith(prefix)}

