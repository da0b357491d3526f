"""Quantized checkpoints that travel: diffusers + torchao's layout, and loading by hub id.

* :func:`save_torchao` writes each quantized transformer as diffusers does for a ``TorchAoConfig`` model
  (``config.json`` with its ``quantization_config`` + ``diffusion_pytorch_model.safetensors`` holding torchao's
  flattened tensors), so ``WanTransformer3DModel.from_pretrained(folder)`` loads it with diffusers + torchao and
  no vidaccel. NVFP4 layers become ``NVFP4Tensor`` (the same bits: scales in cuBLAS's swizzled layout),
  FP8 weight-only layers ``Float8Tensor`` with per-row scales (``Float8WeightOnlyConfig``); a mix of the two is
  stored under torchao's ``FqnToConfig``. W8A8 layers (``activations="dynamic"``) have no torchao form that runs
  outside sm89+ GPUs and are refused; NVFP4 needs ``in_features % 16 == 0`` (every Wan / CogVideoX layer).
* :func:`load_torchao_transformer` reads such a checkpoint (written by vidaccel or by diffusers + torchao) into
  vidaccel's kernels, from the safetensors header alone: every tensor entry must be a plain tensor,
  ``NVFP4Tensor`` (weight-only, 16-value blocks) or ``Float8Tensor`` (per-row scales, weight-only); anything
  else is refused by name. No pickle, no torchao needed to load.
* :func:`load_quantized_checkpoint` takes a folder or a hub id (resolved with ``huggingface_hub``; pass
  ``cache_dir=`` for a cache other than the default, which ``huggingface_hub`` reads when it is imported) and
  loads either format; vidaccel's own files keep their header checks (:mod:`.checkpoint`).

Example::

    vidaccel.apply(pipe, QuantConfig(format="nvfp4"))
    save_torchao(pipe, "wan-nvfp4-torchao")          # wan-nvfp4-torchao/transformer/{config.json, *.safetensors}
    # anywhere, without vidaccel:
    #   WanTransformer3DModel.from_pretrained("wan-nvfp4-torchao/transformer")
    transformer = load_quantized_checkpoint("my-org/wan-nvfp4-torchao")   # back into vidaccel's kernels
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

from ...core.technique import attached, record
from ...families import family_for, pipeline_transformers
from .config import QuantConfig
from .layers import locate
from .lora import has_lora_layers
from .modules import Fp8Linear, NVFP4Linear, QuantLinear
from .originals import _weight_files
from .technique import QuantTechnique
from ...kernels.fp8 import naive as fp8_naive
from ...kernels.fp8.wrapper import Fp8Weight
from ...kernels.nvfp4.wrapper import NVFP4Weight

__all__ = ["save_torchao", "load_torchao_transformer", "load_quantized_checkpoint", "quantized_roles", "resolve_source",
           "to_blocked", "from_blocked"]

_CONFIG = "config.json"
_WEIGHTS = "diffusion_pytorch_model.safetensors"


# -- NVFP4 scale layout (cuBLAS block-scaling: 128x4 tiles, each stored as 32x16) ----------------------------
def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """``[N, K/16]`` block scales → torchao's swizzled ``[32·⌈N/128⌉, 16·⌈K/64⌉]``."""
    rows, cols = scales.shape
    rb, cb = math.ceil(rows / 128), math.ceil(cols / 4)
    padded = scales.new_zeros(rb * 128, cb * 4)
    padded[:rows, :cols] = scales
    blocks = padded.view(rb, 128, cb, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(rb * 32, cb * 16)


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_blocked`: ``[N, K/16]`` block scales."""
    rb, cb = math.ceil(rows / 128), math.ceil(cols / 4)
    if blocked.numel() != rb * cb * 512:
        raise ValueError(f"swizzled NVFP4 scales have {blocked.numel()} values; a {rows}x{cols * 16} weight needs "
                         f"{rb * cb * 512}")
    t = blocked.reshape(rb * cb, 32, 4, 4).transpose(1, 2).reshape(rb, cb, 128, 4).permute(0, 2, 1, 3)
    return t.reshape(rb * 128, cb * 4)[:rows, :cols].contiguous()


# -- save ----------------------------------------------------------------------------------------------------
def _torchao_tensor(q: QuantLinear, dtype: torch.dtype):
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor
    from torchao.quantization import Float8Tensor

    if isinstance(q, NVFP4Linear):
        if q.in_features % 16:
            raise ValueError(f"{q.name}: NVFP4 in torchao needs in_features % 16 == 0, this layer has "
                             f"{q.in_features}; keep it out of the quantized set (QuantConfig.skip)")
        return NVFP4Tensor(q.weight_packed, to_blocked(q.weight_block_scale), 16, dtype,
                           per_tensor_scale=q.weight_global_scale.reshape(()), is_swizzled_scales=True)
    if q.activations != "none":
        raise ValueError(f"{q.name}: FP8 with dynamic activations (W8A8) has no torchao form that runs without an "
                         "sm89+ GPU; share QuantConfig(format='fp8', activations='none') (weight-only) or NVFP4")
    return Float8Tensor(q.weight_fp8, q.weight_scale.view(-1, 1), block_size=[1, q.in_features], dtype=dtype)


def _config_json(model: nn.Module, quant_type, skipped: list[str]) -> dict:
    import diffusers
    from diffusers import TorchAoConfig

    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items()
           if k not in ("_name_or_path", "quantization_config")}
    cfg["_class_name"] = type(model).__name__
    cfg["_diffusers_version"] = diffusers.__version__
    cfg["quantization_config"] = TorchAoConfig(quant_type, modules_to_not_convert=skipped).to_dict()
    return cfg


def save_torchao(target, folder: str | os.PathLike) -> list[str]:
    """Write each quantized transformer of ``target`` in diffusers + torchao's layout; returns the folders written
    (``folder/<role>`` for a pipeline, ``folder`` for a bare transformer). Needs torchao.

    Raises:
        ValueError: a transformer without :class:`QuantConfig` applied, with LoRA layers, with W8A8 layers, or
            with an NVFP4 layer whose ``in_features`` is not a multiple of 16.
    """
    from safetensors.torch import save_file
    from torchao.prototype.mx_formats import NVFP4WeightOnlyConfig
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
    from torchao.quantization import Float8WeightOnlyConfig, FqnToConfig

    folder = os.fspath(folder)
    bare = isinstance(target, nn.Module)
    written = []
    for role, model in pipeline_transformers(target):
        technique = attached(model).get(QuantTechnique.name)
        if technique is None or not technique.quantized:
            raise ValueError(f"{role} ({type(model).__name__}) is not quantized: apply QuantConfig first")
        if has_lora_layers(model):
            raise ValueError(f"{role} holds LoRA layers; unload_lora_weights() first (fuse_lora() bakes a LoRA in)")
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        state = {k: v.detach() for k, v in model.state_dict().items()}
        configs = {}
        for name, q in technique.quantized.items():
            for buf in list(q._buffers) + ["bias"]:
                state.pop(f"{name}.{buf}", None)
            state[f"{name}.weight"] = _torchao_tensor(q, dtype)
            if q.bias is not None:
                state[f"{name}.bias"] = q.bias.detach()
            configs[name] = (NVFP4WeightOnlyConfig(use_dynamic_per_tensor_scale=True) if isinstance(q, NVFP4Linear)
                             else Float8WeightOnlyConfig())
        kinds = {type(c).__name__ for c in configs.values()}
        quant_type = next(iter(configs.values())) if len(kinds) == 1 else FqnToConfig(configs)
        skipped = sorted(n for n, m in model.named_modules() if type(m) is nn.Linear)
        tensors, metadata = flatten_tensor_state_dict(state)
        seen: dict[int, str] = {}
        for k, v in tensors.items():  # safetensors refuses shared storage
            key = v.untyped_storage().data_ptr() if v.numel() else id(v)
            tensors[k] = v.clone().contiguous() if key in seen else v.contiguous()
            seen[key] = k
        out = folder if bare else os.path.join(folder, role)
        os.makedirs(out, exist_ok=True)
        save_file(tensors, os.path.join(out, _WEIGHTS), metadata={**metadata, "format": "pt"})
        with open(os.path.join(out, _CONFIG), "w") as f:
            json.dump(_config_json(model, quant_type, skipped), f, indent=2, default=str)
        written.append(out)
    return written


# -- load ----------------------------------------------------------------------------------------------------
def resolve_source(source: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                   local_files_only: bool | None = None) -> str:
    """A local folder for ``source``: the folder itself, or a hub id's snapshot through ``huggingface_hub``
    (downloaded, or found in ``cache_dir`` / the default hub cache when offline)."""
    path = os.fspath(source)
    if os.path.isdir(path):
        return path
    if os.path.exists(path) or path.count("/") != 1:
        raise ValueError(f"{path!r} is neither a folder nor a hub id (org/name)")
    from huggingface_hub import snapshot_download

    kwargs = {"revision": revision, "cache_dir": os.fspath(cache_dir) if cache_dir is not None else None}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        return snapshot_download(path, **kwargs)
    except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, offline...
        raise ValueError(f"{path!r}: not a local folder, and the hub could not provide it ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _torchao_folder(folder: str, role: str) -> str | None:
    for candidate in (os.path.join(folder, role), folder):
        path = os.path.join(candidate, _CONFIG)
        if os.path.isfile(path):
            with open(path) as f:
                qc = json.load(f).get("quantization_config") or {}
            if qc.get("quant_method") == "torchao":
                return candidate
    return None


def _entries(files: list[str]) -> dict[str, tuple[str, dict]]:
    """``{tensor name: (file, header entry)}`` from the safetensors headers, validated against a whitelist."""
    from safetensors import safe_open

    out = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        if "tensor_names" not in meta:
            raise ValueError(f"{path}: no 'tensor_names' in the safetensors header: not a torchao-flattened checkpoint")
        for name in json.loads(meta["tensor_names"]):
            entry = json.loads(meta[name])
            kind = entry.get("_type")
            if kind not in ("Tensor", "NVFP4Tensor", "Float8Tensor"):
                raise ValueError(f"{path}: {name} is a {kind!r}; vidaccel loads plain tensors, NVFP4Tensor "
                                 "(NVFP4WeightOnlyConfig) and Float8Tensor (Float8WeightOnlyConfig, per-row)")
            out[name] = (path, entry)
    return out


def _nvfp4_weight(name, entry, get, out_features, in_features) -> NVFP4Weight:
    data = entry.get("_data", {})
    names = set(entry.get("_tensor_data_names", []))
    if data.get("block_size") != 16 or "act_per_tensor_scale" in names or data.get("act_quant_kwargs"):
        raise ValueError(f"{name}: NVFP4Tensor with block_size={data.get('block_size')} / activation quantization is "
                         "not supported; vidaccel loads weight-only NVFP4 with 16-value blocks")
    base = name.rsplit(".", 1)
    prefix = f"{base[0]}._{base[1]}_"
    qdata = get(prefix + "qdata").view(torch.uint8)
    scale = get(prefix + "scale")
    k16 = in_features // 16
    block = from_blocked(scale, out_features, k16) if data.get("is_swizzled_scales") else scale.reshape(out_features, k16)
    g = get(prefix + "per_tensor_scale").float().reshape(()) if "per_tensor_scale" in names else torch.ones(())
    return NVFP4Weight(qdata.contiguous(), block.contiguous(), g, in_features)


def _fp8_weight(name, entry, get, out_features, in_features) -> Fp8Weight:
    data = entry.get("_data", {})
    if data.get("block_size") not in (None, [1, in_features]) or data.get("act_quant_kwargs"):
        raise ValueError(f"{name}: Float8Tensor with block_size={data.get('block_size')} / activation quantization is "
                         f"not supported; vidaccel loads weight-only FP8 with per-row scales (block_size [1, K])")
    base = name.rsplit(".", 1)
    prefix = f"{base[0]}._{base[1]}_"
    qdata = get(prefix + "qdata")
    scale = get(prefix + "scale").float().reshape(out_features)
    zero = scale == 0  # torchao leaves an all-zero row as scale 0 (codes NaN); vidaccel's rule: scale 1/448, codes 0
    if zero.any():
        scale = torch.where(zero, torch.full_like(scale, 1.0 / fp8_naive.FP8_MAX), scale)
        qdata = torch.where(zero[:, None], torch.zeros_like(qdata), qdata)
    return Fp8Weight(qdata.contiguous(), scale.contiguous())


def load_torchao_transformer(source: str | os.PathLike, role: str = "transformer", *,
                             device: torch.device | str | None = None, revision: str | None = None,
                             cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None):
    """Build a transformer from a diffusers + torchao checkpoint with its quantized layers on vidaccel's kernels.

    ``source``: a folder holding ``config.json`` + safetensors (or a pipeline folder with a ``<role>/`` one), or a
    hub id. The result has :class:`QuantConfig` applied (``vidaccel.stats`` works) and, like
    :func:`~.checkpoint.load_quantized_transformer`, cannot be removed (there are no high-precision weights).
    """
    import diffusers
    from accelerate import init_empty_weights
    from safetensors import safe_open

    root = resolve_source(source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    folder = _torchao_folder(root, role)
    if folder is None:
        raise ValueError(f"{os.fspath(source)!r}: no config.json with a torchao quantization_config in {root} or "
                         f"{os.path.join(root, role)}")
    with open(os.path.join(folder, _CONFIG)) as f:
        cfg = json.load(f)
    cls = getattr(diffusers, cfg.get("_class_name", ""), None)
    if cls is None:
        raise ValueError(f"{folder}: model class {cfg.get('_class_name')!r} is not a diffusers class")
    files = _weight_files(folder)
    if not files:
        raise ValueError(f"{folder}: no {_WEIGHTS} (or sharded index); .bin checkpoints are never unpickled")
    entries = _entries(files)
    with init_empty_weights(include_buffers=False):
        model = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_") and k != "quantization_config"})
    model.eval()
    family_for(model)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    handles = {fp: safe_open(fp, framework="pt", device=str(dev)) for fp in files}
    where = {k: fp for fp, h in handles.items() for k in h.keys()}

    def get(key: str) -> torch.Tensor:
        if key not in where:
            raise ValueError(f"{folder}: tensor {key!r} is missing")
        # clone: a fresh allocation (safetensors hands out tensors at arbitrary file offsets)
        return handles[where[key]].get_tensor(key).clone()

    quantized, formats = {}, {}
    plain = {}
    for name, (_, entry) in entries.items():
        if entry["_type"] == "Tensor":
            plain[name] = get(name)
            continue
        layer = name.rsplit(".", 1)[0]
        try:
            parent, attr = locate(model, layer)
        except AttributeError:
            raise ValueError(f"{folder}: layer {layer!r} does not exist in {cls.__name__}") from None
        old = getattr(parent, attr)
        if not isinstance(old, nn.Linear):
            raise ValueError(f"{folder}: {layer!r} is a {type(old).__name__}, expected nn.Linear")
        bias = get(f"{layer}.bias") if f"{layer}.bias" in entries else None
        dtype = old.weight.dtype
        if entry["_type"] == "NVFP4Tensor":
            q = NVFP4Linear(_nvfp4_weight(name, entry, get, old.out_features, old.in_features), bias, name=layer)
            formats[layer] = "nvfp4"
        else:
            q = Fp8Linear(_fp8_weight(name, entry, get, old.out_features, old.in_features), bias, activations="none",
                          name=layer)
            formats[layer] = "fp8-weight"
        q.compute_dtype = dtype
        setattr(parent, attr, q)
        quantized[layer] = q
        plain.pop(f"{layer}.bias", None)
    expected = {k for k in model.state_dict() if not any(k.startswith(n + ".") for n in quantized)}
    missing = sorted(expected - set(plain))
    if missing:
        raise ValueError(f"{folder}: tensors missing for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    model.load_state_dict(plain, strict=False, assign=True)
    kinds = set(formats.values())
    config = (QuantConfig(format="nvfp4") if kinds == {"nvfp4"} else
              QuantConfig(format="fp8", activations="none") if kinds == {"fp8-weight"} else
              QuantConfig(format="mixed", plan={n: ("nvfp4" if f == "nvfp4" else "fp8") for n, f in formats.items()}))
    technique = QuantTechnique(model, config, family_for(model), role=role)
    technique.loaded = True
    technique.attach_loaded(quantized, formats)
    record(model, technique)
    return model


def load_quantized_checkpoint(source: str | os.PathLike, role: str = "transformer", *,
                              device: torch.device | str | None = None, revision: str | None = None,
                              cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                              expected_config: dict | None = None):
    """A quantized transformer from a folder or hub id, in vidaccel's format (``<role>.safetensors`` with the
    vidaccel header, all of its checks) or diffusers + torchao's (``[<role>/]config.json`` + safetensors).
    ``expected_config`` (the base pipeline's ``<role>/config.json``): the vidaccel header's config must equal it."""
    from .checkpoint import load_quantized_transformer

    root = resolve_source(source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    if os.path.isfile(os.path.join(root, f"{role}.safetensors")):
        return load_quantized_transformer(root, role, device=device, expected_config=expected_config)
    if _torchao_folder(root, role) is not None:
        return load_torchao_transformer(root, role, device=device)
    raise ValueError(f"{os.fspath(source)!r} ({root}) holds neither {role}.safetensors (vidaccel save_quantized) nor "
                     f"a diffusers + torchao {role}/config.json")


def quantized_roles(source: str | os.PathLike, expected: list[str] | None = None, **kwargs) -> tuple[str, list[str]]:
    """``(local folder, roles with a quantized checkpoint)`` of a folder or hub id (either format); vidaccel-format
    files are checked as :func:`.checkpoint.quantized_roles` does (no stale expert file, one save)."""
    from .checkpoint import quantized_roles as vidaccel_roles

    root = resolve_source(source, **kwargs)
    vidaccel_roles(root, expected)
    roles = [r for r in ("transformer", "transformer_2")
             if os.path.isfile(os.path.join(root, f"{r}.safetensors")) or
             (_torchao_folder(root, r) is not None and os.path.isdir(os.path.join(root, r)))]
    return root, roles
