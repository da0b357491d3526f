"""Quantized checkpoints: one safetensors file per transformer, with a vidaccel header, loaded without pickle
and without materialising bf16 weights."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch
from torch import nn

from ...core.pipeline_class import accelerate_pipeline_class
from ...core.technique import attached, record
from ...families import family_for, pipeline_transformers
from .config import QuantConfig
from .modules import Fp8Linear, NVFP4Linear, QuantLinear
from .technique import QuantTechnique
from .layers import set_child
from ...kernels.fp8.wrapper import Fp8Weight
from ...kernels.nvfp4.wrapper import NVFP4Weight

__all__ = ["save_quantized", "load_quantized", "load_quantized_transformer", "FILE_FORMAT", "FILE_VERSION"]

FILE_FORMAT = "vidaccel-quant"
FILE_VERSION = "1"


def technique_of(model: nn.Module) -> QuantTechnique | None:
    t = attached(model).get(QuantTechnique.name)
    return t if isinstance(t, QuantTechnique) else None


def save_quantized(target, folder: str | os.PathLike) -> list[str]:
    """Write each quantized transformer of ``target`` to ``folder/<role>.safetensors``; returns the paths.

    The file holds the transformer's whole state (quantized layers as their e4m3 / packed-e2m1 / scale tensors,
    everything else as it is) and a ``__metadata__`` header: ``format`` = ``"vidaccel-quant"``,
    ``version`` = ``"1"``, ``role``, ``model_class``, ``model_config`` (JSON), ``layers`` (JSON
    ``{name: "fp8" | "fp8-weight" | "nvfp4"}``), ``activations``, ``quant_config`` (JSON).

    Raises:
        ValueError: a transformer has no :class:`QuantConfig` applied, or is still calibrating (``"mixed"``).
    """
    from safetensors.torch import save_file

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = []
    from .lora import has_lora_layers

    for role, model in pipeline_transformers(target):
        technique = technique_of(model)
        if has_lora_layers(model):
            raise ValueError(f"{role} ({type(model).__name__}) holds LoRA layers; a quantized checkpoint stores the base "
                             "model only: unload_lora_weights() first (fuse_lora() before that bakes the LoRA in)")
        if technique is None or not technique.quantized:
            raise ValueError(f"{role} ({type(model).__name__}) is not quantized: apply QuantConfig first"
                             + (" and run one calibration call (format='mixed')" if technique is not None else ""))
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        seen: dict[int, str] = {}
        for k, v in tensors.items():  # safetensors refuses shared storage
            key = v.untyped_storage().data_ptr() if v.numel() else id(v)
            if key in seen:
                tensors[k] = v.clone()
            seen[key] = k
        cfg = {k: v for k, v in asdict(technique.config).items() if k not in ("plan",)}
        metadata = {
            "format": FILE_FORMAT, "version": FILE_VERSION, "role": role, "model_class": type(model).__name__,
            "model_config": json.dumps(dict(model.config), default=_json_default),
            "layers": json.dumps({n: technique.formats[n] for n in technique.quantized}),
            "activations": technique.config.activations, "quant_config": json.dumps(cfg),
        }
        path = os.path.join(folder, f"{role}.safetensors")
        save_file(tensors, path, metadata=metadata)
        paths.append(path)
    return paths


def _json_default(obj):
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    return str(obj)


def _read_header(path: str) -> dict:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file; expected a safetensors file written by vidaccel save_quantized")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # not a safetensors file at all
        raise ValueError(f"{path}: not a readable safetensors file ({e}); "
                         "expected a vidaccel-quant checkpoint") from None
    fmt, version = meta.get("format"), meta.get("version")
    if fmt != FILE_FORMAT or version != FILE_VERSION:
        raise ValueError(f"{path}: header has format={fmt!r}, version={version!r}; expected format={FILE_FORMAT!r}, "
                         f"version={FILE_VERSION!r} (a checkpoint written by vidaccel save_quantized)")
    for key in ("layers", "role", "model_class"):
        if key not in meta:
            raise ValueError(f"{path}: header lacks {key!r}; expected a complete vidaccel-quant header")
    return meta


def load_quantized(target, folder: str | os.PathLike, *, device: torch.device | str | None = None,
                   role: str | None = None):
    """Load ``folder/<role>.safetensors`` into each transformer of ``target`` (a pipeline or a transformer).

    ``role`` names the file for a bare transformer (default ``"transformer"``; ``"transformer_2"`` for Wan 2.2's
    low-noise expert). ``device``: where the tensors go (default: the model's device, CPU for a meta model).

    Quantized layers are built straight from the stored tensors; every other tensor is assigned in place. When
    the transformer was built with empty (meta) weights (``accelerate.init_empty_weights``, or
    :func:`load_quantized_transformer`), no bf16 copy of the quantized layers is ever made. The result has
    :class:`QuantConfig` applied (``vidaccel.stats`` works) but cannot be removed: there are no originals.

    Raises:
        ValueError: a missing file, a wrong or missing ``format`` / ``version`` header, another model class,
            or tensors that do not fit the model.
    """
    from safetensors import safe_open

    folder = os.fspath(folder)
    pairs = pipeline_transformers(target)
    if role is not None:
        if not isinstance(target, nn.Module):
            raise ValueError("load_quantized(role=...) is for a bare transformer; a pipeline's roles are its own")
        pairs = [(role, pairs[0][1])]
    for role, model in pairs:
        path = os.path.join(folder, f"{role}.safetensors")
        meta = _read_header(path)
        if meta["model_class"] != type(model).__name__:
            raise ValueError(f"{path}: holds a {meta['model_class']}, but the {role} is a {type(model).__name__}")
        if technique_of(model) is not None:
            raise ValueError(f"{role} already has QuantConfig applied; load into an unquantized or empty model")
        layers: dict[str, str] = json.loads(meta["layers"])
        cfg_fields = json.loads(meta.get("quant_config", "{}"))
        cfg_fields = {k: v for k, v in cfg_fields.items() if k in QuantConfig.__dataclass_fields__}
        config = QuantConfig(**cfg_fields)
        if device is not None:
            dev = torch.device(device)
        else:
            first = next(iter(model.parameters()), None)
            dev = first.device if first is not None and not first.is_meta else torch.device("cpu")
        with safe_open(path, framework="pt", device=str(dev)) as f:
            keys = set(f.keys())

            def get(key):
                if key not in keys:
                    raise ValueError(f"{path}: tensor {key!r} is missing")
                # clone: safetensors hands out tensors at arbitrary file offsets, and CPU GEMMs round
                # differently on unaligned memory; a fresh allocation makes loaded outputs bit-identical
                return f.get_tensor(key).clone()

            quantized: dict[str, QuantLinear] = {}
            for name, fmt in layers.items():
                try:
                    old = model.get_submodule(name)
                except AttributeError:
                    raise ValueError(f"{path}: layer {name!r} does not exist in the {role}") from None
                if not isinstance(old, nn.Linear):
                    raise ValueError(f"{path}: layer {name!r} is a {type(old).__name__}, expected nn.Linear")
                bias = get(f"{name}.bias") if f"{name}.bias" in keys else None
                if fmt == "nvfp4":
                    qw = NVFP4Weight(get(f"{name}.weight_packed"), get(f"{name}.weight_block_scale"),
                                     get(f"{name}.weight_global_scale").reshape(()), old.in_features)
                    qmodule = NVFP4Linear(qw, bias, backend=config.backend, name=name)
                elif fmt in ("fp8", "fp8-weight"):
                    qw = Fp8Weight(get(f"{name}.weight_fp8"), get(f"{name}.weight_scale"))
                    act = "none" if fmt == "fp8-weight" else config.activations
                    qmodule = Fp8Linear(qw, bias, activations=act, backend=config.backend, name=name)
                else:
                    raise ValueError(f"{path}: layer {name!r} has format {fmt!r}; expected fp8, fp8-weight or nvfp4")
                if (qmodule.out_features, qmodule.in_features) != (old.out_features, old.in_features):
                    raise ValueError(f"{path}: layer {name!r} is {qmodule.out_features}x{qmodule.in_features}, the "
                                     f"model's is {old.out_features}x{old.in_features}")
                set_child(model, name, qmodule)
                quantized[name] = qmodule
            expected = set(model.state_dict().keys())
            missing = expected - keys
            if missing:
                more = "..." if len(missing) > 5 else ""
                raise ValueError(f"{path}: tensors missing for {sorted(missing)[:5]}{more}")
            quant_keys = {f"{n}.{b}" for n, m in quantized.items() for b in list(m._buffers) + list(m._parameters)}
            rest = {k: get(k) for k in expected - quant_keys}
        model.load_state_dict(rest, strict=False, assign=True)
        technique = QuantTechnique(model, config, family_for(model), role=role,
                                          pipeline=None if isinstance(target, nn.Module) else target)
        technique.loaded = True
        technique.attach_loaded(quantized, layers)
        record(model, technique)
    if not isinstance(target, nn.Module):
        accelerate_pipeline_class(target)
    return target


def load_quantized_transformer(folder: str | os.PathLike, role: str = "transformer", *,
                               device: torch.device | str | None = None) -> nn.Module:
    """Build the transformer stored in ``folder/<role>.safetensors`` without materializing any bf16 weights.

    The model class and config come from the file's header; parameters are created empty (meta) and then
    assigned the stored tensors. Pass the result to ``WanPipeline.from_pretrained(..., transformer=...)``.
    """
    import diffusers
    from accelerate import init_empty_weights

    path = os.path.join(os.fspath(folder), f"{role}.safetensors")
    meta = _read_header(path)
    cls = getattr(diffusers, meta["model_class"], None)
    if cls is None or "model_config" not in meta:
        raise ValueError(f"{path}: model class {meta['model_class']!r} / config cannot be rebuilt by diffusers")
    config = {k: v for k, v in json.loads(meta["model_config"]).items() if not k.startswith("_")}
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(config)
    model.eval()
    load_quantized(model, folder, device=device, role=role)
    return model

