"""QuantConfig: apply / remove / stats on every family, mixed calibration, safetensors save and load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vidaccel
from vidaccel.families import family_for
from vidaccel.core.technique import technique_for
from vidaccel.accel.quantization import (
    Fp8Linear,
    NVFP4Linear,
    QuantConfig,
    QuantTechnique,
    estimate_weight_bytes,
    load_quantized,
    load_quantized_transformer,
    quant_report,
    quantize_linears,
    save_quantized,
    weight_bytes,
)

from .conftest import PIPELINE_KINDS, make_pipeline, run_pipe

ROLES = {"wan21": ["transformer"], "wan22": ["transformer", "transformer_2"],
         "cogvideox-1.0": ["transformer"], "cogvideox-1.5": ["transformer"]}
STEPS = 2  # denoising steps per tiny pipeline call: enough to exercise everything, cheap on a shared CPU
SQNR_FLOOR = {"fp8": 27.0, "nvfp4": 17.0}  # mean per-layer SQNR on the tiny models' own activations


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny shapes, no contention


def _linear_names(model):
    return [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]


def test_importing_the_module_registers_the_technique_and_presets():
    assert technique_for(QuantConfig()) is QuantTechnique
    assert QuantTechnique.name == "quant"
    from vidaccel.accel import resolve_accel
    from vidaccel.families.wan import WAN as WAN_FAMILY

    assert resolve_accel("fp8") == [QuantConfig(format="fp8")]
    assert resolve_accel("nvfp4") == [QuantConfig(format="nvfp4", skip_format="fp8", quantize_fragile=("text",))]
    # the preset keeps every fragile layer but the text embedding out of NVFP4
    names = ["condition_embedder.text_embedder.linear_1", "condition_embedder.image_embedder.ff.net.0.proj",
             "condition_embedder.time_proj", "patch_embedding.proj", "proj_out", "blocks.0.attn1.to_q"]
    import re

    lean = [n for n in names if any(re.search(p, n) for p, _ in resolve_accel("nvfp4")[0].skip_patterns(WAN_FAMILY))]
    full = [n for n in names if any(re.search(p, n) for p, _ in QuantConfig().skip_patterns(WAN_FAMILY))]
    assert set(full) - set(lean) == {"condition_embedder.text_embedder.linear_1"}


@pytest.mark.parametrize("field,value,allowed", [
    ("format", "int4", "'fp8', 'nvfp4', 'mixed'"),
    ("activations", "static", "'dynamic', 'none'"),
    ("keep_original", "ram", "'cpu', 'device', 'disk', 'none'"),
    ("measure_sqnr", "always", "'first_call', 'off'"),
    ("backend", "cuda", "'auto', 'scaled_mm', 'triton', 'torch'"),
    ("skip_format", "bf16", "'none', 'fp8'"),
])
def test_config_validation_names_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as e:
        QuantConfig(**{field: value})
    assert f"QuantConfig.{field}={value!r}" in str(e.value) and allowed in str(e.value)


def test_config_rules():
    assert QuantConfig().activations == "dynamic"
    assert QuantConfig(format="nvfp4").activations == "none"
    with pytest.raises(ValueError, match="weight-only"):
        QuantConfig(format="nvfp4", activations="dynamic")
    with pytest.raises(ValueError, match="plan is only allowed"):
        QuantConfig(plan={"a": "fp8"})
    with pytest.raises(ValueError, match="plan\\['a'\\]='int8'"):
        QuantConfig(format="mixed", plan={"a": "int8"})
    with pytest.raises(ValueError, match="not a valid regex"):
        QuantConfig(skip=["("])
    with pytest.raises(ValueError, match="list of regex"):
        QuantConfig(skip="proj_out")
    with pytest.raises(ValueError, match="mixed_fp8_fraction"):
        QuantConfig(mixed_fp8_fraction=1.5)


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
def test_apply_quantizes_every_expert_and_remove_puts_the_originals_back(kind):
    """Layers, SQNR and the originals per family (no-op, repeat, bit-exact remove: tests/test_contract.py)."""
    pipe = make_pipeline(kind)
    base = run_pipe(pipe, num_inference_steps=STEPS)
    originals = {role: {n: getattr(pipe, role).get_submodule(n) for n in _linear_names(getattr(pipe, role))}
                 for role in ROLES[kind]}
    for fmt in ("fp8", "nvfp4"):
        vidaccel.apply(pipe, QuantConfig(format=fmt))
        out = run_pipe(pipe, num_inference_steps=STEPS)
        assert not np.array_equal(out, base)
        stats = vidaccel.stats(pipe)["quant"]
        assert sorted(stats) == sorted(ROLES[kind])
        for role in ROLES[kind]:
            s = stats[role]
            model = getattr(pipe, role)
            cls = Fp8Linear if fmt == "fp8" else NVFP4Linear
            assert s["counts"][fmt] == len([m for m in model.modules() if isinstance(m, cls)]) > 0
            assert s["counts"]["skipped"] == len(s["skipped"]) > 0
            # every layer measured on the first call; mean SQNR above the format's floor
            assert all(v["sqnr_db"] is not None for v in s["layers"].values())
            assert s["sqnr_db_mean"] >= SQNR_FLOOR[fmt], s["sqnr_db_mean"]
            # the skipped ones are the fragile ones, still plain nn.Linear
            for name in s["skipped"]:
                assert type(model.get_submodule(name)) is torch.nn.Linear
        vidaccel.remove(pipe)
        for role, mods in originals.items():
            for name, module in mods.items():
                assert getattr(pipe, role).get_submodule(name) is module  # the very same objects are back


def test_default_skip_list_hits_the_fragile_layers():
    wan = make_pipeline("wan21").transformer
    cfg = QuantConfig()
    from vidaccel.accel.quantization.layers import layer_formats

    _, skipped = layer_formats(wan, cfg, None)
    assert set(skipped) == {
        "condition_embedder.time_embedder.linear_1", "condition_embedder.time_embedder.linear_2",
        "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_1",
        "condition_embedder.text_embedder.linear_2", "proj_out",
    }
    assert all(reason for reason in skipped.values())
    cog = make_pipeline("cogvideox-1.5").transformer
    _, skipped = layer_formats(cog, cfg, None)
    assert {"patch_embed.proj", "patch_embed.text_proj", "time_embedding.linear_1", "time_embedding.linear_2",
            "norm_out.linear", "proj_out"} == set(skipped)
    assert {f.kind for f in family_for(wan).fragile_layers} == {"patch", "time", "text", "image", "output"}
    # a user list replaces the defaults
    _, skipped = layer_formats(wan, QuantConfig(skip=[r"ffn\."]), None)
    assert skipped and all(".ffn." in n for n in skipped)


def test_bf16_model_keeps_quantized_storage_and_byte_counts():
    pipe = make_pipeline("wan21")
    model = pipe.transformer.to(torch.bfloat16)
    for fmt, skip_format in (("fp8", "none"), ("nvfp4", "none"), ("nvfp4", "fp8")):
        cfg = QuantConfig(format=fmt, skip_format=skip_format)
        estimate = estimate_weight_bytes(model, cfg)
        vidaccel.apply(model, cfg)
        assert weight_bytes(model) == pytest.approx(estimate)  # the shape-only estimate is exact
        model.to(torch.float32).to(torch.bfloat16)  # dtype casts must not touch quantized tensors
        q = model.blocks[0].attn1.to_q
        if fmt == "fp8":
            assert q.weight_fp8.dtype == torch.float8_e4m3fn and q.weight_scale.dtype == torch.float32
        else:
            assert q.weight_packed.dtype == torch.uint8 and q.weight_global_scale.dtype == torch.float32
            assert q.weight_block_scale.dtype == torch.float8_e4m3fn
        assert q.bias.dtype == torch.bfloat16
        if skip_format == "fp8":
            assert isinstance(model.proj_out, Fp8Linear) and model.proj_out.activations == "none"
        vidaccel.remove(model)
    # bf16 run end to end
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    out = run_pipe(pipe, num_inference_steps=STEPS)  # the transformer is bf16 here
    assert np.isfinite(out).all()


def test_mixed_calibrates_on_the_first_call_then_quantizes():
    pipe = make_pipeline("wan22")
    base = run_pipe(pipe, num_inference_steps=3)
    vidaccel.apply(pipe, QuantConfig(format="mixed", mixed_fp8_fraction=0.25))
    assert vidaccel.stats(pipe)["quant"]["transformer"]["state"] == "calibrating"
    calib = run_pipe(pipe, num_inference_steps=3)
    np.testing.assert_array_equal(calib, base)  # the calibration call runs in full precision
    out = run_pipe(pipe, num_inference_steps=3)
    assert not np.array_equal(out, base)
    stats = vidaccel.stats(pipe)["quant"]
    plans = {}
    for role in ("transformer", "transformer_2"):
        s = stats[role]
        assert s["state"] == "quantized"
        n = len(s["plan"])
        assert s["counts"]["fp8"] == round(0.25 * n) and s["counts"]["nvfp4"] == n - round(0.25 * n)
        vol = s["volatility"]
        fp8 = [k for k, f in s["plan"].items() if f == "fp8"]
        nv = [k for k, f in s["plan"].items() if f == "nvfp4"]
        assert min(vol[k] for k in fp8) >= max(vol[k] for k in nv)  # the volatile layers got FP8
        assert 0 < s["fp8_weight_share"] < 1
        plans[role] = s["plan"]
    report = quant_report(pipe)
    assert "### transformer_2: mixed (quantized)" in report and "| blocks.0.attn1.to_q | " in report
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=3), base)
    # a stored plan skips calibration and reproduces the same model
    vidaccel.apply(pipe, QuantConfig(format="mixed", plan=plans))
    assert vidaccel.stats(pipe)["quant"]["transformer_2"]["plan"] == plans["transformer_2"]
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=3), out)


def test_sqnr_only_when_asked():
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, QuantConfig(measure_sqnr="off"))
    run_pipe(pipe, num_inference_steps=STEPS)
    s = vidaccel.stats(pipe)["quant"]["transformer"]
    assert s["sqnr_db_mean"] is None and all(v["sqnr_db"] is None for v in s["layers"].values())


@pytest.mark.parametrize("kind,fmt", [("wan22", "nvfp4"), ("wan21", "mixed"), ("cogvideox-1.5", "fp8")])
def test_save_then_load_is_bit_identical(tmp_path, monkeypatch, kind, fmt):
    pipe = make_pipeline(kind)
    vidaccel.apply(pipe, QuantConfig(format=fmt, skip_format="fp8" if fmt == "nvfp4" else "none"))
    if fmt == "mixed":
        run_pipe(pipe, num_inference_steps=STEPS)  # calibration call
    with pytest.raises(ValueError, match="not quantized"):
        save_quantized(make_pipeline(kind), tmp_path / "nothing")
    ref = run_pipe(pipe, num_inference_steps=STEPS)
    paths = save_quantized(pipe, tmp_path)
    assert sorted(os.path.basename(p) for p in paths) == sorted(f"{r}.safetensors" for r in ROLES[kind])
    # into a fresh pipeline (its own random weights are replaced); never through pickle
    fresh = make_pipeline(kind)

    def no_pickle(*args, **kwargs):
        raise AssertionError("load_quantized must not unpickle")

    with monkeypatch.context() as m:
        m.setattr(torch, "load", no_pickle)
        m.setattr("pickle.load", no_pickle)
        m.setattr("pickle.loads", no_pickle)
        load_quantized(fresh, tmp_path)
    np.testing.assert_array_equal(run_pipe(fresh, num_inference_steps=STEPS), ref)
    assert vidaccel.stats(fresh)["quant"]["transformer"]["loaded"] is True
    with pytest.raises(ValueError, match="loaded from a quantized checkpoint.*nothing was removed"):
        vidaccel.remove(fresh)
    assert vidaccel.applied(fresh) == ["quant"]
    # built from the header alone: no bf16 weights materialized for the quantized layers
    fresh2 = make_pipeline(kind)
    for role in ROLES[kind]:
        model = load_quantized_transformer(tmp_path, role)
        assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
        assert not any(type(m) is torch.nn.Linear and m.weight.numel() > 0 and name in json.loads(
            _header(tmp_path / f"{role}.safetensors")["layers"]) for name, m in model.named_modules())
        setattr(fresh2, role, model)
    np.testing.assert_array_equal(run_pipe(fresh2, num_inference_steps=STEPS), ref)


def _header(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_checkpoint_header_and_wrong_headers_raise(tmp_path):
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    (path,) = save_quantized(pipe, tmp_path / "good")
    meta = _header(path)
    assert meta["format"] == "vidaccel-quant" and meta["version"] == "1"
    assert meta["model_class"] == "WanTransformer3DModel"
    assert set(json.loads(meta["layers"]).values()) == {"fp8"}
    tensors = load_file(path)
    assert tensors["blocks.0.attn1.to_q.weight_fp8"].dtype == torch.float8_e4m3fn

    def write(folder, metadata):
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, "transformer.safetensors")
        save_file(tensors, target, metadata=metadata)
        return target

    cases = {
        "missing": None,
        "wrong-format": {**meta, "format": "torchao"},
        "wrong-version": {**meta, "version": "2"},
    }
    for name, metadata in cases.items():
        target = write(tmp_path / name, metadata)
        with pytest.raises(ValueError, match=f"{target}.*expected format='vidaccel-quant'"):
            load_quantized(make_pipeline("wan21"), tmp_path / name)
    with pytest.raises(ValueError, match="no such file"):
        load_quantized(make_pipeline("wan21"), tmp_path / "absent")
    with pytest.raises(ValueError, match="holds a WanTransformer3DModel"):
        load_quantized(make_pipeline("cogvideox-1.0"), tmp_path / "good")


def test_keep_original_device_and_technique_stacking(test_techniques):
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("wan21")
    base = run_pipe(pipe, num_inference_steps=STEPS)
    vidaccel.apply(pipe, QuantConfig(format="fp8", keep_original="device"), ScaleAttnConfig(1.0))
    quantized = run_pipe(pipe, num_inference_steps=STEPS)
    vidaccel.remove(pipe, QuantConfig)
    assert vidaccel.applied(pipe) == ["test-scale-attn"]
    # the factor-1.0 attention wrapper leaves outputs identical
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=STEPS), base)
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=STEPS), quantized)
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=STEPS), base)


def test_quantize_linears_on_any_module():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.GELU(), torch.nn.Linear(64, 24))
    x = torch.randn(5, 40)
    ref = mlp(x)
    swapped = quantize_linears(mlp, QuantConfig(format="nvfp4", skip=[]))
    assert set(swapped) == {"0", "2"} and isinstance(mlp[0], NVFP4Linear)
    assert swapped["0"].original.weight.shape == (64, 40)
    assert "original" not in dict(mlp.named_modules())  # originals are not child modules
    out = mlp(x)
    assert 10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()) > 15


def test_mixed_plan_survives_reattach(test_techniques):
    """Removing a technique applied before quant re-attaches quant: it must keep its calibrated plan."""
    ScaleAttnConfig, _ = test_techniques
    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, ScaleAttnConfig(1.0))
    vidaccel.apply(pipe, QuantConfig(format="mixed"))
    run_pipe(pipe, num_inference_steps=STEPS)  # calibration
    out = run_pipe(pipe, num_inference_steps=STEPS)
    plan = vidaccel.stats(pipe)["quant"]["transformer"]["plan"]
    vidaccel.remove(pipe, ScaleAttnConfig)
    assert vidaccel.applied(pipe) == ["quant"]
    s = vidaccel.stats(pipe)["quant"]["transformer"]
    assert s["state"] == "quantized" and s["plan"] == plan
    np.testing.assert_array_equal(run_pipe(pipe, num_inference_steps=STEPS), out)


def test_from_pretrained_quantized_folder(tmp_path):
    """The drop-in pipeline builds its transformer from a save_quantized folder (no bf16 weights)."""
    from vidaccel.pipelines import WanPipeline

    pipe = make_pipeline("wan21")
    pipe.save_pretrained(tmp_path / "model")
    vidaccel.apply(pipe, QuantConfig(format="fp8"))
    ref = run_pipe(pipe, num_inference_steps=STEPS)
    save_quantized(pipe, tmp_path / "q")
    loaded = WanPipeline.from_pretrained(tmp_path / "model", quantized=tmp_path / "q")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run_pipe(loaded, num_inference_steps=STEPS), ref)
    with pytest.raises(ValueError, match="holds no transformer.safetensors"):
        WanPipeline.from_pretrained(tmp_path / "model", quantized=tmp_path / "model")
