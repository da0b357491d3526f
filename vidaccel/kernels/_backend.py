"""Which kernel backends can run here: Triton on a GPU, the Triton interpreter on CPU, or plain torch."""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["triton_available", "triton_interpreting", "available_backends", "kernel_module", "check_linear_input"]


@functools.lru_cache(maxsize=None)
def _triton_version() -> str | None:
    try:
        import triton
    except Exception:  # ImportError, or a broken install on an unsupported platform
        return None
    return triton.__version__


def triton_interpreting() -> bool:
    """``TRITON_INTERPRET=1`` is set: Triton kernels run on CPU tensors (slowly; for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available(device: torch.device | str | None = None) -> bool:
    """Triton kernels can launch on ``device`` (a CUDA GPU, or any device under the interpreter)."""
    if _triton_version() is None:
        return False
    if triton_interpreting():
        return True
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return dev.type == "cuda" and torch.cuda.is_available()


def available_backends() -> dict[str, str]:
    """Kernel backends and whether/how each is usable on this machine (for ``vidaccel info``)."""
    version = _triton_version()
    out: dict[str, str] = {}
    if version is None:
        out["triton"] = "not installed"
    elif torch.cuda.is_available():
        out["triton"] = f"GPU ({torch.cuda.get_device_name(0)}), triton {version}"
    elif triton_interpreting():
        out["triton"] = f"interpreter on CPU (TRITON_INTERPRET=1), triton {version}: correct but slow"
    else:
        out["triton"] = f"installed (triton {version}) but no GPU; set TRITON_INTERPRET=1 to run kernels on CPU"
    import importlib.util

    flex = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    out["flex"] = "torch flex_attention available" if flex else "unavailable in this torch"
    out["gather"] = "SDPA over each query tile's window keys: the CPU default for sliding-tile attention"
    out["torch"] = f"torch {torch.__version__} reference / fallback: always available"
    return out


@functools.lru_cache(maxsize=None)
def _load_kernel_module(path: str, name: str, interpret: bool):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_{'interp' if interpret else 'gpu'}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_module(path: str, name: str):
    """Import the Triton kernel file ``path`` compiled for the current mode.

    ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, so the module is loaded once per mode (GPU or
    interpreter) under its own name.
    """
    return _load_kernel_module(path, name, triton_interpreting())


def check_linear_input(x: torch.Tensor, in_features: int) -> None:
    """Validate the activation of a quantized linear: floating point, last dim ``in_features``."""
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim but the weight expects {in_features}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
