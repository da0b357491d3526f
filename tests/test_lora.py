"""LoRA (peft, diffusers ``load_lora_weights``) with every technique, in both orders, on Wan 2.1, Wan 2.2 (both
experts) and CogVideoX; the LoRA is made in the test with peft and saved with ``save_lora_weights``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.accel import load_techniques
from vidaccel.accel.quantization import QuantConfig, QuantLinear
from vidaccel.core.technique import registered_config_types, technique_for_type
from vidaccel.families import pipeline_transformers

from .conftest import make_pipeline, run_pipe

peft = pytest.importorskip("peft")

load_techniques()
pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["wan21", "wan22", "cogvideox-1.0"]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _steps(kind: str) -> dict:
    return dict(num_inference_steps=8 if kind == "wan22" else 4)  # Wan 2.2: both experts get calls


def _lora_loader(pipe):
    roles = [r for r, _ in pipeline_transformers(pipe)]

    def load(folder, name="style"):
        pipe.load_lora_weights(folder, adapter_name=name)
        if "transformer_2" in roles:
            pipe.load_lora_weights(folder, adapter_name=name, load_into_transformer_2=True)
    return load


def make_lora(kind: str, folder, seed: int = 0, targets=TARGETS) -> None:
    """A random LoRA (non-zero ``lora_B``) for the tiny pipeline ``kind``, saved with ``save_lora_weights``."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = make_pipeline(kind)
    tr = pipe.transformer
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(targets)), adapter_name="made")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    type(pipe).save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(tr, adapter_name="made"))


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    out = {}
    for kind in FAMILIES:
        base = "cogvideox" if kind.startswith("cog") else "wan21"
        if base not in out:
            folder = tmp_path_factory.mktemp(f"lora-{base}")
            make_lora(base if base == "wan21" else "cogvideox-1.0", folder)
            out[base] = folder
    return {k: out["cogvideox" if k.startswith("cog") else "wan21"] for k in FAMILIES}


def _quant_layers(pipe):
    return {role: [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
            for role, model in pipeline_transformers(pipe)}


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
@pytest.mark.parametrize("kind", FAMILIES)
def test_lora_and_quantization_in_both_orders(kind, fmt, loras):
    cfg = QuantConfig(format=fmt)
    ref = make_pipeline(kind)
    base = run_pipe(ref, **_steps(kind))
    _lora_loader(ref)(loras[kind])
    lora_only = run_pipe(ref, **_steps(kind))
    assert not np.array_equal(lora_only, base)

    # A: LoRA first, then quantization: LoRA's own layers stay in high precision, names stay canonical
    a = make_pipeline(kind)
    _lora_loader(a)(loras[kind])
    vidaccel.apply(a, cfg)
    for role, names in _quant_layers(a).items():
        assert names and not any(".lora_" in n for n in names), names
    for role, st in vidaccel.stats(a)["quant"].items():
        assert not any("base_layer" in n or "lora_" in n for n in list(st["layers"]) + list(st["skipped"]))
    out_a = run_pipe(a, **_steps(kind))
    assert not np.array_equal(out_a, lora_only)

    # B: quantization first, then the LoRA: the same quantized bits plus the same LoRA branch
    b = make_pipeline(kind)
    vidaccel.apply(b, cfg)
    quant_only = run_pipe(b, **_steps(kind))
    _lora_loader(b)(loras[kind])
    for _, model in pipeline_transformers(b):
        wrapper = model.get_submodule(_first_target(model))
        assert type(wrapper).__name__ == "QuantLoraLinear" and isinstance(wrapper.base_layer, QuantLinear)
        assert wrapper.lora_A["style"].weight.dtype == torch.float32  # the model's dtype, not e4m3
    out_b = run_pipe(b, **_steps(kind))
    np.testing.assert_array_equal(out_b, out_a)

    # scale changes after apply take effect; weight 0 is the quantized model without LoRA
    components = [r for r, _ in pipeline_transformers(b)]
    b.set_adapters(["style"], adapter_weights=[0.0])
    np.testing.assert_array_equal(run_pipe(b, **_steps(kind)), quant_only)
    b.set_adapters(["style"], adapter_weights=[0.5])
    half = run_pipe(b, **_steps(kind))
    assert not np.array_equal(half, out_b) and not np.array_equal(half, quant_only)
    b.set_adapters(["style"], adapter_weights=[1.0])

    # fuse into the quantized weights; unfuse restores them exactly; remove is refused while fused
    b.fuse_lora(components=components)
    assert np.isfinite(run_pipe(b, **_steps(kind))).all()
    _assert_fused_is_quant_of_merged_weight(b)
    with pytest.raises(ValueError, match="unfuse_lora.*nothing was removed"):
        vidaccel.remove(b)
    b.unfuse_lora(components=components)
    np.testing.assert_array_equal(run_pipe(b, **_steps(kind)), out_b)

    # remove: the LoRA over the original layers, bit-identical to never quantized; unload: the base model
    vidaccel.remove(b)
    np.testing.assert_array_equal(run_pipe(b, **_steps(kind)), lora_only)
    b.unload_lora_weights()
    np.testing.assert_array_equal(run_pipe(b, **_steps(kind)), base)
    # A: unload the LoRA first (the quantized layer moves into the wrapper's place), then remove
    a.unload_lora_weights()
    np.testing.assert_array_equal(run_pipe(a, **_steps(kind)), quant_only)
    vidaccel.remove(a)
    np.testing.assert_array_equal(run_pipe(a, **_steps(kind)), base)


def _assert_fused_is_quant_of_merged_weight(pipe):
    """Every fused quantized layer holds exactly ``quant(W_original + ΔW)`` (no second rounding)."""
    from vidaccel.accel.quantization.layers import build_quantized

    checked = 0
    for _, model in pipeline_transformers(pipe):
        for name, m in model.named_modules():
            if type(m).__name__ != "QuantLoraLinear" or not m.merged:
                continue
            q = m.base_layer
            lin = torch.nn.Linear(q.in_features, q.out_features, bias=False)
            lin.weight.data = q.original.weight.float() + sum(m.get_delta_weight(a).float() for a in m.merged_adapters)
            fmt = "nvfp4" if q.fmt == "nvfp4" else "fp8"
            expect = build_quantized(lin, fmt, QuantConfig(format=fmt), name)
            for buf in q._quant_buffers:
                assert torch.equal(q._buffers[buf].view(torch.uint8) if q._buffers[buf].element_size() == 1
                                   else q._buffers[buf], expect._buffers[buf].view(torch.uint8)
                                   if expect._buffers[buf].element_size() == 1 else expect._buffers[buf]), (name, buf)
            checked += 1
    assert checked > 0


def _first_target(model) -> str:
    return next(n for n, m in model.named_modules() if n.endswith("attn1.to_q"))


def test_lora_fused_before_quantization(loras):
    plain = make_pipeline("wan21")
    _lora_loader(plain)(loras["wan21"])
    plain.fuse_lora()
    fused_plain = run_pipe(plain)
    pipe = make_pipeline("wan21")
    _lora_loader(pipe)(loras["wan21"])
    pipe.fuse_lora()
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    fused_quant = run_pipe(pipe)
    assert not np.array_equal(fused_quant, fused_plain) and np.abs(fused_quant - fused_plain).max() < 0.25
    with pytest.raises(RuntimeError, match="fused before quantization"):
        pipe.unfuse_lora()
    vidaccel.remove(pipe)  # the fused original layers come back into their LoRA wrappers
    np.testing.assert_array_equal(run_pipe(pipe), fused_plain)
    pipe.unfuse_lora()
    plain.unfuse_lora()
    np.testing.assert_array_equal(run_pipe(pipe), run_pipe(plain))


def test_lora_on_a_fragile_layer_keeps_the_skip_rule(tmp_path):
    make_lora("wan21", tmp_path, targets=TARGETS + ["proj_out"])
    pipe = make_pipeline("wan21")
    pipe.load_lora_weights(str(tmp_path), adapter_name="style")
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    st = vidaccel.stats(pipe)["quant"]["transformer"]
    assert "proj_out" in st["skipped"] and "proj_out" not in st["layers"]
    assert type(pipe.transformer.proj_out.base_layer) is torch.nn.Linear
    vidaccel.remove(pipe)


def test_save_quantized_refuses_lora_layers(loras, tmp_path):
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    _lora_loader(pipe)(loras["wan21"])
    with pytest.raises(ValueError, match="unload_lora_weights"):
        vidaccel.save_quantized(pipe, tmp_path)


OTHER = [t for t in registered_config_types() if t.__module__.startswith("vidaccel.") and t is not QuantConfig]


@pytest.mark.parametrize("config_type", OTHER, ids=lambda t: t.__name__)
@pytest.mark.parametrize("kind", FAMILIES)
def test_lora_with_every_other_technique_in_both_orders(kind, config_type, loras):
    example = technique_for_type(config_type).example_config
    name = technique_for_type(config_type).name
    pipe = make_pipeline(kind)
    base = run_pipe(pipe, **_steps(kind))
    load = _lora_loader(pipe)
    load(loras[kind])
    lora_only = run_pipe(pipe, **_steps(kind))
    vidaccel.apply(pipe, example())  # LoRA, then the technique
    out_a = run_pipe(pipe, **_steps(kind))
    assert not np.array_equal(out_a, lora_only) and all(vidaccel.stats(pipe)[name].values())
    pipe.set_adapters(["style"], adapter_weights=[0.5])
    assert not np.array_equal(run_pipe(pipe, **_steps(kind)), out_a)  # a scale change after apply takes effect
    pipe.set_adapters(["style"], adapter_weights=[1.0])
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, **_steps(kind)), lora_only)
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(run_pipe(pipe, **_steps(kind)), base)

    vidaccel.apply(pipe, example())  # the technique, then LoRA: the same output
    tech_only = run_pipe(pipe, **_steps(kind))
    load(loras[kind])
    np.testing.assert_array_equal(run_pipe(pipe, **_steps(kind)), out_a)
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(run_pipe(pipe, **_steps(kind)), tech_only)
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, **_steps(kind)), base)

    # fused (peft changes the plain weights in place: equal to the unfused LoRA up to rounding)
    load(loras[kind])
    pipe.fuse_lora(components=[r for r, _ in pipeline_transformers(pipe)])
    vidaccel.apply(pipe, example())
    fused = run_pipe(pipe, **_steps(kind))
    assert np.isfinite(fused).all() and np.abs(fused - out_a).max() < 1e-3
    vidaccel.remove(pipe)
