"""Guarantees of apply / remove over the contract matrix (every registered technique x every pipeline kind):

* a failing ``apply`` -- at any technique of a list, on any expert -- leaves the target exactly as it was
  (modules, tensors, processors, hooks, the technique table and the pipeline class);
* ``remove`` restores into the model's current dtype and device: apply -> ``.to(float16)`` -> remove -> call gives
  the video of a pipeline that was only ever converted;
* ``copy.deepcopy`` of an accelerated pipeline is independent: its own techniques, same output, removable alone;
* pipeline calls that share an accelerated transformer from several threads run one at a time and all give the
  single-threaded video; a plain pipeline calling into it mid-call is refused with a clear error.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.core.technique import attached, technique_for_type
from vidaccel.families import pipeline_transformers

from .conftest import PIPELINE_KINDS, make_pipeline
from .test_contract import KINDS, TECHNIQUES, _run, _setup

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def embedded():
    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fresh(kind, embedded):
    """A pipeline of ``kind`` this test may change freely, and its call arguments."""
    if kind == "embedded":
        pipe = copy.deepcopy(embedded)  # plain: nothing applied
        return pipe, _setup(kind, embedded)[1]
    return _setup(kind, None)


def _forward_of(module):
    fwd = module.__dict__.get("forward")
    return getattr(fwd, "__func__", None) if fwd is not None and hasattr(fwd, "__func__") else fwd


def snapshot(pipe) -> dict:
    """Everything apply may change, by identity where identity is what must come back."""
    out = {"class": type(pipe), "pipe_attrs": sorted(k for k in pipe.__dict__ if k != "_progress_bar_config")}
    for role, model in pipeline_transformers(pipe):
        registry = model.__dict__.get("_diffusers_hook")
        out[role] = {
            "modules": [(n, type(m).__name__, id(m)) for n, m in model.named_modules()],
            "tensors": {k: (v.dtype, v.device, v.data_ptr(), tuple(v.shape))
                        for k, v in model.state_dict(keep_vars=True).items()},
            "processors": {n: id(m.processor) for n, m in model.named_modules() if hasattr(m, "processor")},
            "hooks": {n: (list(m._forward_hooks), list(m._forward_pre_hooks)) for n, m in model.named_modules()
                      if m._forward_hooks or m._forward_pre_hooks},
            "forwards": {n: _forward_of(m) for n, m in model.named_modules() if "forward" in m.__dict__
                         and getattr(m.__dict__["forward"], "__func__", None) is not type(m).forward},
            "diffusers_hooks": {n: sorted(m._diffusers_hook.hooks) for n, m in model.named_modules()
                                if m.__dict__.get("_diffusers_hook") is not None and m._diffusers_hook.hooks},
            "table": list(attached(model)),
            # diffusers leaves the plain bound forward on the instance after removing its hooks: "forwards" above
            # compares the effective forward of every module instead
            "attrs": sorted(k for k in model.__dict__ if k not in ("_diffusers_hook", "forward")),
            "registry": registry is None or not registry.hooks,
        }
    return out


class _Injected(RuntimeError):
    pass


@pytest.mark.parametrize("config_type", TECHNIQUES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("kind", KINDS)
def test_failing_apply_leaves_the_target_exactly_as_it_was(kind, config_type, embedded, monkeypatch):
    pipe, _ = _fresh(kind, embedded)
    before = snapshot(pipe)
    examples = [technique_for_type(t).example_config() for t in TECHNIQUES]
    failing = technique_for_type(config_type)
    roles = [r for r, _ in pipeline_transformers(pipe)]
    real_attach = failing.attach
    for position in range(len(examples)):
        order = [c for c in examples if not isinstance(c, config_type)]
        order.insert(position, failing.example_config())
        for role in roles:  # Wan 2.2: also after the first expert took it
            def attach(self, role=role):
                if self.role == role:
                    raise _Injected(f"{type(self).__name__} fails on {role}")
                return real_attach(self)

            monkeypatch.setattr(failing, "attach", attach)
            with pytest.raises(_Injected):
                vidaccel.apply(pipe, *order)
            assert snapshot(pipe) == before, (position, role)
            assert vidaccel.applied(pipe) == []
    monkeypatch.setattr(failing, "attach", real_attach)


def test_failing_apply_of_real_configs_changes_nothing():
    pipe = make_pipeline("wan22")
    before = snapshot(pipe)
    for configs in ([vidaccel.CacheConfig(), vidaccel.LinearAttentionConfig(layers=[99])],
                    [vidaccel.QuantConfig(), vidaccel.SlidingWindowConfig(window=(3, 16, 16), dense_layers=[99])],
                    [vidaccel.CacheConfig(), vidaccel.QuantConfig(), vidaccel.CacheConfig(compute_front=99)]):
        with pytest.raises(ValueError):
            vidaccel.apply(pipe, *configs)
        assert snapshot(pipe) == before and vidaccel.applied(pipe) == []


@pytest.mark.parametrize("config_type", TECHNIQUES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("kind", KINDS)
def test_remove_restores_into_the_current_dtype(kind, config_type, embedded):
    """apply -> pipe.to(torch.float16) -> remove -> call: the video of a pipeline that was only converted."""
    technique = technique_for_type(config_type)
    reference, kwargs = _fresh(kind, embedded)
    reference.to(torch.float16)
    expected = _run(reference, kind, kwargs)
    pipe, kwargs = _fresh(kind, embedded)
    vidaccel.apply(pipe, technique.example_config())
    pipe.to(torch.float16)
    vidaccel.remove(pipe)
    for _, model in pipeline_transformers(pipe):
        assert {p.dtype for p in model.parameters()} == {torch.float16}, "a restored layer kept its old dtype"
    np.testing.assert_array_equal(_run(pipe, kind, kwargs), expected)


@pytest.mark.parametrize("config_type", TECHNIQUES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("kind", KINDS)
def test_deep_copies_are_independent(kind, config_type, embedded):
    technique = technique_for_type(config_type)
    pipe, kwargs = _fresh(kind, embedded)
    base = _run(pipe, kind, kwargs)
    vidaccel.apply(pipe, technique.example_config())
    accelerated = _run(pipe, kind, kwargs)
    twin = copy.deepcopy(pipe)
    for (_, a), (_, b) in zip(pipeline_transformers(pipe), pipeline_transformers(twin)):
        assert a is not b and attached(b)[technique.name] is not attached(a)[technique.name]
        assert attached(b)[technique.name].model is b
    np.testing.assert_array_equal(_run(twin, kind, kwargs), accelerated, err_msg="the copy computes differently")
    vidaccel.remove(twin)
    np.testing.assert_array_equal(_run(twin, kind, kwargs), base, err_msg="remove on the copy did not restore it")
    assert vidaccel.applied(pipe) == [technique.name]
    np.testing.assert_array_equal(_run(pipe, kind, kwargs), accelerated, err_msg="the copy changed the original")


@pytest.mark.parametrize("config_type", TECHNIQUES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("kind", PIPELINE_KINDS)
def test_threads_sharing_an_accelerated_transformer_get_the_single_threaded_video(kind, config_type):
    from vidaccel.core.pipeline_class import accelerate_pipeline_class

    technique = technique_for_type(config_type)
    pipe, kwargs = _setup(kind, None)
    vidaccel.apply(pipe, technique.example_config())
    expected = _run(pipe, kind, kwargs)
    # a second pipeline on the same transformer(s), with its own scheduler (diffusers schedulers keep per-call state)
    extra = {k: pipe.config[k] for k in ("boundary_ratio",) if k in pipe.config}  # Wan 2.2's expert split
    other = pipe._vidaccel_original_class(**dict(pipe.components, **extra, scheduler=copy.deepcopy(pipe.scheduler)))
    other.set_progress_bar_config(disable=True)
    accelerate_pipeline_class(other)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def work(p):
        try:
            barrier.wait()
            for _ in range(2):
                results.append(_run(p, kind, kwargs))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in (pipe, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    for out in results:
        np.testing.assert_array_equal(out, expected)


def test_a_plain_pipeline_calling_into_a_running_call_is_refused():
    """Thread A runs a vidaccel call; thread B's plain diffusers pipeline on the same transformer calls it mid-call:
    B gets a clear RuntimeError, A's video is the single-threaded one."""
    pipe, kwargs = _setup("wan21", None)
    vidaccel.apply(pipe, vidaccel.CacheConfig(threshold=float("inf"), policy="call", interval=2, warmup_steps=2,
                                              final_steps=0))
    expected = _run(pipe, "wan21", kwargs)
    plain = pipe._vidaccel_original_class(**dict(pipe.components, scheduler=copy.deepcopy(pipe.scheduler)))
    plain.set_progress_bar_config(disable=True)
    inside, release = threading.Event(), threading.Event()
    calls = [0]

    def pause(module, args):
        calls[0] += 1
        if calls[0] == 3 and threading.current_thread() is threading.main_thread():
            inside.set()
            release.wait(60)

    handle = pipe.transformer.register_forward_pre_hook(pause)
    errors = []

    def intruder():
        inside.wait(60)
        try:
            _run(plain, "wan21", kwargs)
        except RuntimeError as e:
            errors.append(str(e))
        finally:
            release.set()

    t = threading.Thread(target=intruder)
    t.start()
    try:
        out = _run(pipe, "wan21", kwargs)
    finally:
        t.join()
        handle.remove()
    assert len(errors) == 1 and "in the middle of a vidaccel pipeline call on another thread" in errors[0]
    np.testing.assert_array_equal(out, expected)


def test_remove_after_loading_a_quantized_checkpoint_refuses_cleanly(tmp_path):
    from vidaccel.accel.quantization import load_quantized, save_quantized

    source = make_pipeline("wan22")
    vidaccel.apply(source, vidaccel.QuantConfig(format="fp8"))
    save_quantized(source, tmp_path)
    pipe = make_pipeline("wan22")
    load_quantized(pipe, tmp_path)
    vidaccel.apply(pipe, vidaccel.CacheConfig(threshold=float("inf"), policy="call", interval=2, warmup_steps=2,
                                              final_steps=0))
    kwargs = {}
    before = _run(pipe, "wan22", kwargs)
    state = snapshot(pipe)
    with pytest.raises(ValueError, match="'quant' is one of them and was loaded from a quantized checkpoint.*nothing "
                                         "was removed.*vidaccel.remove\\(target, CacheConfig\\)"):
        vidaccel.remove(pipe)
    assert snapshot(pipe) == state and vidaccel.applied(pipe) == ["quant", "cache"]
    np.testing.assert_array_equal(_run(pipe, "wan22", kwargs), before)
    vidaccel.remove(pipe, vidaccel.CacheConfig)
    assert vidaccel.applied(pipe) == ["quant"]
    with pytest.raises(TypeError, match="copy.deepcopy of this WanTransformer3DModel is not supported"):
        copy.deepcopy(pipe)
