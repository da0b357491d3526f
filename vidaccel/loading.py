"""``vidaccel.load_pipeline``: one call from a model name to a ready, accelerated pipeline."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .accel import resolve_accel
from .core.technique import technique_for
from .core.validation import check_path, shown
from .families import pipeline_transformers

logger = logging.getLogger(__name__)

__all__ = ["load_pipeline", "parse_dtype", "default_device", "EMBEDDED_NAMES"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}

#: Names that load a model shipped inside the package instead of a folder or hub id.
EMBEDDED_NAMES = ("embedded", "shapes-t2v")


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """``None``, a floating ``torch.dtype`` or one of ``float32|fp32|bfloat16|bf16|float16|fp16``."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in set(_DTYPES.values())):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype={shown(dtype)} is not allowed: use one of {', '.join(_DTYPES)} or torch.float32 / "
                     "torch.bfloat16 / torch.float16")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_device(device: Any) -> torch.device:
    if device is None:
        return torch.device(default_device())
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"device={shown(device)} is not allowed: use a torch device such as 'cpu', 'cuda', 'cuda:1'")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={shown(device)} is not allowed: use a torch device such as 'cpu', 'cuda', "
                         "'cuda:1'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={shown(device)} is not allowed: vidaccel runs on 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={shown(device)} is not allowed: CUDA is not available on this machine; use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={shown(device)} is not allowed: this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    return dev


def _embedded_pipeline(dtype):
    """The shipped ``shapes-t2v`` model, or, when its weights are absent, a labelled random-weight tiny model."""
    from .pipelines import WanPipeline

    try:
        from .models import EMBEDDED_DEFAULTS, embedded_path

        path = embedded_path("shapes-t2v")
    except (ImportError, FileNotFoundError) as e:
        from .core.pipeline_class import accelerated_class_for
        from .testing import tiny_wan_pipeline

        logger.warning("embedded model weights are not available (%s); using a TINY RANDOM-WEIGHT Wan model: "
                       "its videos are noise", e)
        pipe = tiny_wan_pipeline()
        pipe.__class__ = accelerated_class_for(type(pipe))
        pipe.vidaccel_model = {"name": "tiny-random", "trained": False,
                               "defaults": dict(height=32, width=32, num_frames=9, num_inference_steps=8,
                                                guidance_scale=5.0, negative_prompt="")}
        return pipe.to(dtype=dtype) if dtype is not None else pipe
    from .models import EMBEDDED_DTYPE_NAME

    # Weights ship as float16 to halve the package; compute in float32 unless asked otherwise.
    pipe = WanPipeline.from_pretrained(os.fspath(path), dtype=dtype or parse_dtype(EMBEDDED_DTYPE_NAME))
    pipe.vidaccel_model = {"name": "shapes-t2v", "trained": True, "defaults": dict(EMBEDDED_DEFAULTS["shapes-t2v"])}
    return pipe


def load_pipeline(model: str | os.PathLike = "embedded", *, dtype: Any = None, device: Any = None, accel: Any = None,
                  parallel: Any = None, **kwargs):
    """Load a Wan or CogVideoX pipeline as its vidaccel class, move it to ``device`` and apply ``accel``.

    Args:
        model: ``"embedded"`` (the small trained model that ships with vidaccel, works offline), a local
            folder written by ``save_pretrained``, or a hub id such as ``"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"``
            (loaded by diffusers ``from_pretrained``, the path users take with real weights).
        dtype: ``None`` (the checkpoint's default), a ``torch.dtype`` or a name (``"bf16"``...).
        device: ``None`` (CUDA when available, else CPU) or any torch device spec.
        accel: ``None``, a preset name, a technique config or a list of those (see :func:`vidaccel.apply`).
        parallel: ``None`` (one process), or a :class:`vidaccel.parallel.ParallelConfig` (a dict of its fields,
            or an int: the Ulysses degree) to spread every transformer call over the processes ``torchrun``
            started (one per GPU; this joins their group, and ``device=None`` means this process's GPU).
        **kwargs: passed to diffusers ``from_pretrained``.

    Returns:
        The pipeline, an instance of its vidaccel class (``pipe.last_run`` is recorded on every call).

    Example::

        pipe = vidaccel.load_pipeline("embedded", accel="balanced")
        frames = pipe("a red circle moving right on a black background").frames[0]
    """
    from .api import apply
    from .core.pipeline_class import accelerated_class_for

    from .parallel.config import as_parallel_config

    name = check_path("", "model", model)
    dtype = parse_dtype(dtype)
    parallel = as_parallel_config(parallel)
    try:
        configs = resolve_accel(accel)
    except ValueError as e:
        raise ValueError(f"accel={shown(accel)} is not allowed: {e}") from None
    for config in configs:  # unknown config types are refused before the (slow) load
        try:
            technique_for(config)
        except ValueError as e:
            raise ValueError(f"accel={shown(accel)} is not allowed: {e}") from None
    if os.path.isfile(name):
        raise ValueError(f"model={shown(name)} is not allowed: it is a file; give 'embedded', a diffusers pipeline "
                         "folder or a hub id")
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "model_index.json")):
        raise ValueError(f"model={shown(name)} is not allowed: the folder has no model_index.json (not a diffusers "
                         "pipeline folder)")
    if parallel is not None:
        from .parallel.launch import init_distributed

        init_distributed()  # before the device: it pins this process to its GPU
    dev = _parse_device(device)
    if name in EMBEDDED_NAMES:
        pipe = _embedded_pipeline(dtype)
    else:
        from diffusers import DiffusionPipeline

        if dtype is not None:
            kwargs["dtype"] = dtype
        pipe = DiffusionPipeline.from_pretrained(name, **kwargs)
        pipeline_transformers(pipe)  # raises ValueError for unsupported model classes
        pipe.__class__ = accelerated_class_for(type(pipe))
        pipe.vidaccel_model = {"name": name, "trained": True, "defaults": {}}
    pipe = pipe.to(dev)
    if configs:
        apply(pipe, *configs)
    if parallel is not None:
        from .parallel.model import enable_parallelism

        enable_parallelism(pipe, parallel)
    return pipe
