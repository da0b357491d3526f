"""Convert original-format Wan / Self-Forcing / CausVid / LongLive transformer checkpoints to a diffusers folder.

The key mapping is diffusers' own (``convert_wan_transformer_to_diffusers``); this module adds what those
causal checkpoints need around it: loading without pickle (safetensors, or ``torch.load(weights_only=True)``),
unwrapping trainer containers (``generator_ema`` / ``generator`` / ``state_dict`` / ``model``) and key prefixes,
inferring the ``WanTransformer3DModel`` config from the tensor shapes, and recording the causal settings
(``causal_config.json``) so :class:`vidaccel.pipelines.LongVideoPipeline` can load the result.

    vidaccel convert wan-original self_forcing_dmd.pt out_dir --base Wan2.1-T2V-1.3B-Diffusers --chunk-frames 3
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["load_original_state_dict", "infer_wan_config", "convert_wan_original"]

_CONTAINERS = ("generator_ema", "generator", "state_dict", "model_state_dict", "module", "model", "ema")
_PREFIXES = ("model.diffusion_model.", "_fsdp_wrapped_module.", "_orig_mod.", "module.", "generator.", "model.")
_WAN_TOP = ("blocks.", "patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.", "head.", "img_emb.")


def _strip_prefixes(key: str) -> str:
    """``generator.model._orig_mod.blocks.0...`` → ``blocks.0...`` (trainer / FSDP / compile wrappers)."""
    while not key.startswith(_WAN_TOP):
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return key
        key = key[len(prefix):]
    return key


def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint without pickle: safetensors, or ``torch.load(weights_only=True)`` for .pt/.pth/.bin."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # not a checkpoint at all: torch / safetensors fail in many ways on foreign bytes
        raise ValueError(f"{path} is not a readable checkpoint (safetensors, or a torch file of tensors loadable "
                         f"with weights_only=True): {type(e).__name__}: {str(e).strip()[:200]}") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path} is not a checkpoint of named tensors: it holds a {type(sd).__name__}")
    for _ in range(3):  # trainer containers nest: {"generator_ema": {...}}
        if isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
            key = next((k for k in _CONTAINERS if k in sd), None)
            if key is None:
                raise ValueError(f"{path}: no tensors found; top-level keys are {sorted(sd)[:10]}")
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} is not a checkpoint of named tensors")
    out = {_strip_prefixes(key): value for key, value in sd.items() if isinstance(value, torch.Tensor)}
    if not any(k.startswith("blocks.") for k in out):
        raise ValueError(f"{path}: no 'blocks.N.' keys after unwrapping; this is not a Wan transformer checkpoint")
    return out


def infer_wan_config(sd: dict[str, torch.Tensor], *, head_dim: int = 128, rope_max_seq_len: int = 1024) -> dict:
    """``WanTransformer3DModel`` config from diffusers-named tensors (heads = dim / ``head_dim``)."""
    pe = sd["patch_embedding.weight"]
    dim, in_channels = pe.shape[0], pe.shape[1]
    patch = tuple(int(p) for p in pe.shape[2:])
    num_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    if dim % head_dim:
        raise ValueError(f"model width {dim} is not a multiple of head_dim={head_dim}; pass the right --head-dim")
    out_channels = sd["proj_out.weight"].shape[0] // (patch[0] * patch[1] * patch[2])
    cfg = dict(
        patch_size=patch,
        num_attention_heads=dim // head_dim,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=sd["condition_embedder.text_embedder.linear_1.weight"].shape[1],
        freq_dim=sd["condition_embedder.time_embedder.linear_1.weight"].shape[1],
        ffn_dim=sd["blocks.0.ffn.net.0.proj.weight"].shape[0],
        num_layers=num_layers,
        cross_attn_norm="blocks.0.norm2.weight" in sd,
        qk_norm="rms_norm_across_heads" if "blocks.0.attn1.norm_q.weight" in sd else None,
        rope_max_seq_len=rope_max_seq_len,
    )
    if "condition_embedder.image_embedder.ff.net.0.proj.weight" in sd:
        cfg["image_dim"] = sd["condition_embedder.image_embedder.ff.net.0.proj.weight"].shape[1]
    return cfg


def convert_wan_original(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, base: str | None = None,
                         chunk_frames: int = 3, window_frames: int = 21, context_noise: float = 0.0,
                         max_sequence_length: int = 512, head_dim: int = 128, dtype: torch.dtype | None = None) -> Path:
    """Write ``out_dir`` as a diffusers Wan pipeline folder with ``causal_config.json``.

    Args:
        checkpoint: original-format transformer weights (.safetensors, or .pt/.pth loaded weights-only).
        out_dir: destination folder.
        base: a diffusers Wan pipeline folder whose VAE, text encoder, tokenizer and scheduler are copied
            (e.g. a local ``Wan2.1-T2V-1.3B-Diffusers``); without it only ``transformer/`` and the causal
            settings are written.
        chunk_frames, window_frames, context_noise, max_sequence_length: the causal settings
            (Self-Forcing: 3 latent frames per chunk, 21-frame window).
    """
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from .pipelines.long_video.config import CausalConfig

    causal = CausalConfig(chunk_frames=chunk_frames, window_frames=window_frames, context_noise=context_noise,
                          max_sequence_length=max_sequence_length)
    if base is not None and not (Path(base) / "model_index.json").is_file():
        raise ValueError(f"--base={base!r} is not a diffusers pipeline folder (no model_index.json)")
    original = load_original_state_dict(checkpoint)
    try:
        sd = convert_wan_transformer_to_diffusers(original)
        config = infer_wan_config(sd, head_dim=head_dim)
        with torch.device("meta"):
            model = WanTransformer3DModel(**config)
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    except KeyError as e:
        raise ValueError(f"{checkpoint}: tensor {e} is missing; this is not a complete Wan transformer checkpoint") from None
    except (RuntimeError, IndexError, TypeError) as e:
        raise ValueError(f"{checkpoint}: its tensors do not form a Wan transformer ({str(e).strip()[:200]})") from None
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: weights do not match the inferred config {config}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if dtype is not None:
        model = model.to(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if base is not None:
        base_path = Path(base)
        if not (base_path / "model_index.json").is_file():
            raise ValueError(f"--base={base!r} is not a diffusers pipeline folder (no model_index.json)")
        index = json.loads((base_path / "model_index.json").read_text())
        for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
            if (base_path / name).is_dir():
                shutil.copytree(base_path / name, out / name, dirs_exist_ok=True)
        index["_class_name"] = "WanPipeline"
        index["transformer"] = ["diffusers", "WanTransformer3DModel"]
        index.pop("transformer_2", None)
        index["boundary_ratio"] = None
        (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    model.save_pretrained(out / "transformer", safe_serialization=True)
    causal.save(out)
    logger.info("converted %s → %s (%d layers, dim %d)", checkpoint, out, config["num_layers"],
                config["num_attention_heads"] * head_dim)
    return out
