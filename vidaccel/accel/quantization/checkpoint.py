"""Quantized checkpoints: one safetensors file per transformer, with a vidaccel header, loaded without pickle
and without materialising bf16 weights."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict

import torch
from torch import nn

from ...core.pipeline_class import accelerate_pipeline_class
from ...core.technique import attached, record
from ...families import EXPERT_ATTRS, family_for, pipeline_transformers
from .config import QuantConfig
from .modules import Fp8Linear, NVFP4Linear, QuantLinear
from .technique import QuantTechnique
from .layers import set_child
from ...kernels.fp8.wrapper import Fp8Weight
from ...kernels.nvfp4.wrapper import NVFP4Weight

__all__ = ["save_quantized", "load_quantized", "load_quantized_transformer", "quantized_roles", "check_config",
           "FILE_FORMAT", "FILE_VERSION"]

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
    save_id = uuid.uuid4().hex  # the files of one save carry the same id: a stale file from another save is refused
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
            "activations": technique.config.activations, "quant_config": json.dumps(cfg), "save_id": save_id,
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


def _config_of(model) -> dict:
    """A model's config as the header stores it (JSON types, no private ``_`` keys)."""
    data = json.loads(json.dumps(dict(model.config), default=_json_default))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def check_config(path: str, stored: dict, target: dict, what: str) -> None:
    """Refuse a checkpoint whose header config differs from the model it is loaded into (keys both know)."""
    stored = {k: v for k, v in stored.items() if not k.startswith("_")}
    target = json.loads(json.dumps({k: v for k, v in target.items() if not k.startswith("_")}, default=_json_default))
    differ = sorted(k for k in set(stored) & set(target) if stored[k] != target[k])
    if differ:
        shown = ", ".join(f"{k}: file {stored[k]!r} vs {what} {target[k]!r}" for k in differ[:4])
        raise ValueError(f"{path}: was saved from a model with another config than the {what} ({shown}"
                         f"{', ...' if len(differ) > 4 else ''}); load it into the model it was made from")


def _finite(t: torch.Tensor) -> int:
    """Non-finite values in ``t`` (NaN / Inf; for float8, the NaN bit patterns)."""
    if t.dtype == torch.float8_e4m3fn:
        return int(((t.view(torch.uint8) & 0x7F) == 0x7F).sum())
    if t.dtype == torch.float8_e5m2:
        return int(((t.view(torch.uint8) & 0x7C) == 0x7C).sum())
    if t.is_floating_point():
        return int((~torch.isfinite(t)).sum())
    return 0


def quantized_roles(folder: str, expected: list[str] | None = None) -> list[str]:
    """Roles with a checkpoint file in ``folder``; refuses files of roles the target does not have (a stale
    ``transformer_2.safetensors`` left in a reused folder, for a Wan 2.1 pipeline) and files of different saves."""
    roles = [r for r in EXPERT_ATTRS if os.path.isfile(os.path.join(folder, f"{r}.safetensors"))]
    if expected is not None:
        stale = [r for r in roles if r not in expected]
        if stale:
            raise ValueError(f"{os.path.join(folder, stale[0] + '.safetensors')}: the target has no {stale[0]} (its "
                             f"transformers: {', '.join(expected)}); a stale file from another model's save? remove it")
    ids = {r: _read_header(os.path.join(folder, f"{r}.safetensors")).get("save_id") for r in roles}
    if len({i for i in ids.values() if i is not None}) > 1 or (None in ids.values() and len(set(ids.values())) > 1):
        raise ValueError(f"{folder}: its files come from different saves ({', '.join(f'{r}.safetensors' for r in roles)}"
                         "); a stale file from an earlier save? save again into an empty folder")
    return roles


def _read_role(path: str, role: str, model, meta: dict, dev: torch.device, config: QuantConfig):
    """Read and check every tensor of one file for ``model`` without changing it: ``(quantized modules, the other
    tensors, layer formats)``."""
    from safetensors import safe_open

    layers: dict[str, str] = json.loads(meta["layers"])
    with safe_open(path, framework="pt", device=str(dev)) as f:
        keys = set(f.keys())

        def get(key):
            if key not in keys:
                raise ValueError(f"{path}: tensor {key!r} is missing")
            # clone: safetensors hands out tensors at arbitrary file offsets, and CPU GEMMs round
            # differently on unaligned memory; a fresh allocation makes loaded outputs bit-identical
            t = f.get_tensor(key).clone()
            bad = _finite(t)
            if bad:
                raise ValueError(f"{path}: tensor {key!r} holds {bad} non-finite values (NaN / Inf) of {t.numel()}; the "
                                 "file is corrupt")
            return t

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
            quantized[name] = qmodule
        quant_keys = {f"{n}.{b}" for n, m in quantized.items() for b in list(m._buffers) + list(m._parameters)}
        expected = {k for k in model.state_dict() if not any(k.startswith(n + ".") for n in quantized)} | quant_keys
        missing = expected - keys
        if missing:
            more = "..." if len(missing) > 5 else ""
            raise ValueError(f"{path}: tensors missing for {sorted(missing)[:5]}{more}")
        rest = {k: get(k) for k in expected - quant_keys}
        current = model.state_dict()
        for k, v in rest.items():
            if not current[k].is_meta and tuple(current[k].shape) != tuple(v.shape):
                raise ValueError(f"{path}: tensor {k!r} is {tuple(v.shape)}, the model's is {tuple(current[k].shape)}")
    return quantized, rest, layers


def load_quantized(target, folder: str | os.PathLike, *, device: torch.device | str | None = None,
                   role: str | None = None):
    """Load ``folder/<role>.safetensors`` into each transformer of ``target`` (a pipeline or a transformer).

    ``role`` names the file for a bare transformer (default ``"transformer"``; ``"transformer_2"`` for Wan 2.2's
    low-noise expert). ``device``: where the tensors go (default: the model's device, CPU for a meta model).

    Quantized layers are built straight from the stored tensors; every other tensor is assigned in place. When
    the transformer was built with empty (meta) weights (``accelerate.init_empty_weights``, or
    :func:`load_quantized_transformer`), no bf16 copy of the quantized layers is ever made. The result has
    :class:`QuantConfig` applied (``vidaccel.stats`` works) but cannot be removed: there are no originals.

    Every file is checked before anything changes: the header (format, version, model class, and the model
    config, which must equal the target's), every tensor (present, the right shape, finite), and the folder
    (no file for a transformer the target lacks, all files from one save). A failure leaves ``target`` as it was.

    Raises:
        ValueError: a missing file, a wrong or missing ``format`` / ``version`` header, another model class or
            config, tensors that do not fit the model or hold NaN / Inf, or a stale file in the folder.
    """
    folder = os.fspath(folder)
    pairs = pipeline_transformers(target)
    if role is not None:
        if not isinstance(target, nn.Module):
            raise ValueError("load_quantized(role=...) is for a bare transformer; a pipeline's roles are its own")
        pairs = [(role, pairs[0][1])]
    elif not isinstance(target, nn.Module):
        quantized_roles(folder, [r for r, _ in pairs])
    loaded = []
    for role, model in pairs:  # read and check everything first
        path = os.path.join(folder, f"{role}.safetensors")
        meta = _read_header(path)
        if meta["model_class"] != type(model).__name__:
            raise ValueError(f"{path}: holds a {meta['model_class']}, but the {role} is a {type(model).__name__}")
        if technique_of(model) is not None:
            raise ValueError(f"{role} already has QuantConfig applied; load into an unquantized or empty model")
        if "model_config" in meta:
            try:
                stored = json.loads(meta["model_config"])
            except ValueError:
                raise ValueError(f"{path}: its header's model_config is not valid JSON") from None
            check_config(path, stored, _config_of(model), f"{role} it is loaded into")
        try:
            cfg_fields = json.loads(meta.get("quant_config", "{}"))
            config = QuantConfig(**{k: v for k, v in cfg_fields.items() if k in QuantConfig.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: its header's quant_config is not a valid QuantConfig ({e})") from None
        if device is not None:
            dev = torch.device(device)
        else:
            first = next(iter(model.parameters()), None)
            dev = first.device if first is not None and not first.is_meta else torch.device("cpu")
        quantized, rest, layers = _read_role(path, role, model, meta, dev, config)
        loaded.append((role, model, config, quantized, rest, layers))
    for role, model, config, quantized, rest, layers in loaded:  # then change the models
        for name, qmodule in quantized.items():
            set_child(model, name, qmodule)
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
                               device: torch.device | str | None = None, expected_config: dict | None = None
                               ) -> nn.Module:
    """Build the transformer stored in ``folder/<role>.safetensors`` without materializing any bf16 weights.

    The model class and config come from the file's header; parameters are created empty (meta) and then
    assigned the stored tensors. Pass the result to ``WanPipeline.from_pretrained(..., transformer=...)``.
    ``expected_config`` (the base pipeline's ``<role>/config.json``): the header's config must equal it.
    """
    import diffusers
    from accelerate import init_empty_weights

    path = os.path.join(os.fspath(folder), f"{role}.safetensors")
    meta = _read_header(path)
    cls = getattr(diffusers, meta["model_class"], None)
    if cls is None or "model_config" not in meta:
        raise ValueError(f"{path}: model class {meta['model_class']!r} / config cannot be rebuilt by diffusers")
    try:
        config = {k: v for k, v in json.loads(meta["model_config"]).items() if not k.startswith("_")}
    except (ValueError, AttributeError):
        raise ValueError(f"{path}: its header's model_config is not a JSON object") from None
    if expected_config is not None:
        check_config(path, config, expected_config, f"{role} of the pipeline")
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(config)
    model.eval()
    load_quantized(model, folder, device=device, role=role)
    return model

