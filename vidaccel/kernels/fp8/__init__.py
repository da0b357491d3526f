"""FP8 (e4m3) linear layers: per-output-channel weight scales, dynamic per-token activation scales.

``naive.py`` is the spec; ``triton_kernel.py`` holds the Triton kernels (per-token quantization, FP8 GEMM);
``wrapper.py`` the public, validated wrappers re-exported here.
"""

from .wrapper import (
    BACKENDS,
    Fp8Activation,
    Fp8ActivationCache,
    Fp8Weight,
    fp8_gemm,
    fp8_linear,
    quantize_activation,
    quantize_per_token,
    scaled_mm_supported,
)

__all__ = ["Fp8Weight", "Fp8Activation", "Fp8ActivationCache", "fp8_linear", "fp8_gemm", "quantize_activation",
           "quantize_per_token", "scaled_mm_supported", "BACKENDS"]
