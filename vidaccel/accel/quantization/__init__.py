"""FP8 and NVFP4 weight quantization of the transformer(s), on vidaccel's own kernels and safetensors files.

``vidaccel.apply(pipe, QuantConfig(format=...))`` swaps every ``nn.Linear`` of the transformer (both Wan 2.2
experts) for a quantized module whose ``forward`` is one call into :mod:`vidaccel.kernels`:

* ``"fp8"`` — e4m3 weights with per-output-channel scales; activations quantized per token on every call
  (``activations="dynamic"``, W8A8 through ``torch._scaled_mm`` or vidaccel's Triton FP8 GEMM) or kept as
  they are (``activations="none"``, W8A16). ~2× fewer weight bytes than bf16. The projections one attention
  call applies to one input (q, k, v of the hidden states; Wan's text k, v: the family's
  ``attention_input_projections``) share one quantization of it per call (the same numbers as each quantizing
  its own); the cache holding it is emptied at the end of every transformer call.
* ``"nvfp4"`` — NVIDIA's NVFP4 (e2m1 values, an e4m3 scale per 16, an fp32 scale per tensor), weight-only
  (W4A16) through vidaccel's Triton GEMM that dequantizes in registers. 4.5 bits per weight; fragile
  layers stay in the model's dtype, or FP8 weight-only with ``skip_format="fp8"`` (the ``nvfp4`` preset does
  that and quantizes the text embedding too). Weight bytes per setting: ``benchmarks/RESULTS.md``.
* ``"mixed"`` — per layer NVFP4 or FP8, after 6Bit-Diffusion (arXiv 2025, "inference-time mixed-precision
  quantization for video diffusion"): the **first pipeline call after apply runs in full precision and
  calibrates** — for every layer it measures how much the per-channel amax of the layer's input moves from
  one denoising step to the next (same CFG branch) on the model's own trajectory. The most volatile
  ``mixed_fp8_fraction`` of the layers get FP8, the stable rest NVFP4; from the second call on the model is
  quantized. ``vidaccel.stats`` reports the mix; pass ``plan=`` to skip calibration (needed wherever a
  config is applied afresh for each run, as :func:`vidaccel.bench.run_benchmark` does). The volatility
  measure is vidaccel's reading of the paper's stable/volatile split, not a reimplementation of its code.

Kept in high precision by default (each model family's ``fragile_layers``, each with its reason): the patch
embedding, the timestep / text / image embeddings and the output projection (with CogVideoX's output norm
modulation).

**Remove is exact**: the original ``nn.Linear`` objects are kept (``keep_original="cpu"`` moves them to host
memory, costing the bf16 weight bytes there — on a CPU model that is simply the original weights staying
alive; ``"device"`` keeps them where they are, costing device memory) and :func:`vidaccel.remove` puts the
very same objects back. On small machines ``keep_original="disk"`` keeps nothing in memory and re-reads the
layers from the safetensors the transformer was loaded from (checked at apply to hold exactly its weights), and
``"none"`` keeps nothing (removing then raises). A model built by :func:`load_quantized` has no originals:
removing raises. LoRA adapters compose in both orders (:mod:`.lora`); checkpoints also travel in diffusers +
torchao's layout (:mod:`.torchao_format`).

**Per-layer SQNR** (``measure_sqnr="first_call"``, the default): during the first transformer call of each
pipeline call, every quantized layer also runs its original layer on ``sqnr_tokens`` evenly spaced tokens
(one extra small GEMM and one host sync per layer per pipeline call; with ``keep_original="cpu"`` on a GPU
that GEMM runs on the host, on the sampled rows copied there) and reports
``10·log10(Σ ref² / Σ (ref − out)²)`` in ``vidaccel.stats(pipe)["quant"][role]["layers"]``.

Checkpoints: :func:`save_quantized` writes one safetensors file per transformer with a ``__metadata__``
header ``{"format": "vidaccel-quant", "version": "1", ...}``; :func:`load_quantized` /
:func:`load_quantized_transformer` rebuild the quantized modules straight from the stored tensors (no
pickle, no bf16 copy of the quantized layers).

Example::

    import vidaccel
    from vidaccel.accel.quantization import QuantConfig, save_quantized, load_quantized_transformer

    pipe = vidaccel.load_pipeline("embedded")
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    frames = pipe("a red circle moving right on a black background").frames[0]
    print(vidaccel.stats(pipe)["quant"]["transformer"]["sqnr_db_mean"])
    save_quantized(pipe, "wan-fp8")                       # wan-fp8/transformer.safetensors
    transformer = load_quantized_transformer("wan-fp8")   # no bf16 weights materialized
"""

from __future__ import annotations

import importlib

from .config import FORMATS, QuantConfig

__all__ = ["QuantConfig", "FORMATS", "QuantTechnique", "QuantLinear", "Fp8Linear", "NVFP4Linear", "save_quantized",
           "load_quantized", "load_quantized_transformer", "weight_bytes", "estimate_weight_bytes",
           "quantize_linears", "quant_report", "FILE_FORMAT", "FILE_VERSION", "save_torchao", "load_torchao_transformer",
           "load_quantized_checkpoint"]

_LAZY = {
    "QuantTechnique": ".technique",
    "QuantLinear": ".modules", "Fp8Linear": ".modules", "NVFP4Linear": ".modules",
    "save_quantized": ".checkpoint", "load_quantized": ".checkpoint", "load_quantized_transformer": ".checkpoint",
    "FILE_FORMAT": ".checkpoint", "FILE_VERSION": ".checkpoint",
    "weight_bytes": ".layers", "estimate_weight_bytes": ".layers", "quantize_linears": ".layers",
    "quant_report": ".report",
    "save_torchao": ".torchao_format", "load_torchao_transformer": ".torchao_format",
    "load_quantized_checkpoint": ".torchao_format",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
