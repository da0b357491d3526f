"""NVFP4 linear layers (W4A16): e2m1 values two per byte, an e4m3 scale per 16 values, an fp32 scale per tensor.

``naive.py`` is the spec (bit-exact with torchao's ``nvfp4_quantize``); ``triton_kernel.py`` holds the W4A16
GEMM that dequantizes in registers; ``wrapper.py`` the public, validated wrappers re-exported here.
"""

from .wrapper import BACKENDS, DEQUANT_MIN_M, NVFP4Weight, nvfp4_dequantize, nvfp4_linear

__all__ = ["NVFP4Weight", "nvfp4_linear", "nvfp4_dequantize", "BACKENDS", "DEQUANT_MIN_M"]
