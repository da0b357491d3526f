"""The pieces context parallelism is built from, in one process: the position-aware sliding-tile op and linear
attention's log-denominator against their specs, the ring merge over key chunks, the backends' sequence layouts
(CogVideoX's per-rank [text; video] order), processor forwarding and diffusers hook order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidaccel.core.attention_backend import EMPTY_LSE, SequenceLayout
from vidaccel.kernels.attention import sliding_tile_attention, sliding_tile_attention_at
from vidaccel.kernels.attention.naive import (attention_lse_masked_naive, sliding_tile_attention_naive,
                                              sliding_tile_mask, sliding_tile_mask_at)
from vidaccel.kernels.linear_attention import linear_attention_features

from .test_linear_attention_kernels import TOL_MMA16


def rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), "NaN / Inf"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def ring_merge(parts):
    """diffusers' ring merge (TemplatedRingAttention): parts of (out [B, L, H, D], lse [B, L, H])."""
    out = lse = None
    for o, l in parts:
        o, l = o.float(), l.float().unsqueeze(-1)
        if out is not None:
            o = out - torch.sigmoid(l - lse) * (out - o)
            l = lse - F.logsigmoid(lse - l)
        out, lse = o, l
    return out, lse.squeeze(-1)


GEOMETRIES = [((3, 3, 5), (1, 2, 3), (1, 2, 2), 18),   # 45 video + 18 text = 63 tokens, ragged tiles
              ((4, 4, 4), (2, 2, 2), (2, 2, 2), 0)]


@pytest.mark.parametrize("backend,grid,window,tile,text", [("torch", *GEOMETRIES[0]), ("torch", *GEOMETRIES[1]),
                                                           ("flex", *GEOMETRIES[1])])  # flex is eager (slow) on CPU
def test_sliding_tile_at_positions_matches_the_spec(backend, grid, window, tile, text):
    torch.manual_seed(1)
    L = text + math.prod(grid)
    q, k, v = (torch.randn(2, L, 3, 60) for _ in range(3))
    full = torch.arange(L)
    out, lse = sliding_tile_attention_at(q, k, v, q_positions=full, k_positions=full, grid=grid, window=window,
                                         tile=tile, num_text_tokens=text, backend=backend)
    spec = sliding_tile_attention_naive(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=text)
    assert rel_err(out, spec) < 1e-5
    qi, ki = torch.randperm(L)[:20], torch.randperm(L)[:25]  # any rows and columns
    out, lse = sliding_tile_attention_at(q[:, qi], k[:, ki], v[:, ki], q_positions=qi, k_positions=ki, grid=grid,
                                         window=window, tile=tile, num_text_tokens=text, backend=backend)
    mask = sliding_tile_mask(grid, window, tile, text)[qi][:, ki]
    assert torch.equal(mask, sliding_tile_mask_at(qi, ki, grid, window, tile, text))
    spec_out, spec_lse = attention_lse_masked_naive(q[:, qi], k[:, ki], v[:, ki], mask)
    seen = ~torch.isinf(spec_lse)
    assert torch.equal(torch.isinf(lse), ~seen)  # rows that see no key: -inf, output 0
    assert rel_err(lse[seen], spec_lse[seen]) < 1e-5
    assert rel_err(out, spec_out) < 1e-5
    assert (out.transpose(1, 2)[~seen] == 0).all()


@pytest.mark.parametrize("grid,window,tile,text", GEOMETRIES)
def test_ring_merge_of_sliding_tile_chunks_is_the_whole_attention(grid, window, tile, text):
    torch.manual_seed(2)
    L = text + math.prod(grid)
    q, k, v = (torch.randn(1, L, 2, 60) for _ in range(3))
    whole = sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=text,
                                   backend="torch")
    # contiguous key chunks as ring attention meets them: the local one (holding the queries' own keys) first,
    # then the latest frames, which the first frame's queries do not see
    frame = math.prod(grid[1:])
    queries = torch.cat([torch.randperm(text)[:5], text + torch.randperm(frame)[:10]])
    chunks = torch.arange(L).chunk(3)
    parts = []
    for chunk in (chunks[0], chunks[2], chunks[1]):
        out, lse = sliding_tile_attention_at(q[:, queries], k[:, chunk], v[:, chunk], q_positions=queries,
                                             k_positions=chunk, grid=grid, window=window, tile=tile,
                                             num_text_tokens=text, backend="torch")
        parts.append((out, lse.masked_fill(torch.isinf(lse), EMPTY_LSE).transpose(1, 2)))
    assert (parts[1][1] == EMPTY_LSE).any()  # rows that see nothing of a chunk: merged exactly, no NaN
    merged, _ = ring_merge(parts)
    assert rel_err(merged, whole[:, queries]) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_linear_attention_log_denominator_merges_exactly(backend):
    torch.manual_seed(3)
    B, L, H, Fd, D = 1, 63, 2, 60, 60
    qn, kn = torch.randn(B, L, H, Fd), torch.randn(B, L, H, Fd)
    qd, kd = F.elu(torch.randn(B, L, H, Fd)) + 1, F.elu(torch.randn(B, L, H, Fd)) + 1
    v = torch.randn(B, L, H, D)
    eps = 1e-3
    whole, lse = linear_attention_features(qn, kn, v, q_den=qd, k_den=kd, eps=eps, backend=backend,
                                           return_lse=True)
    # the Triton kernel runs 16-bit MMA operands with fp32 accumulation: the kernel tests' bound for that
    tol = 1e-5 if backend == "torch" else TOL_MMA16
    ref = linear_attention_features(qn, kn, v, q_den=qd, k_den=kd, eps=eps, backend="torch")
    assert rel_err(whole, ref) < tol
    den = torch.einsum("blhf,bhf->blh", qd, kd.sum(1))
    assert rel_err(lse, torch.log(den + eps)) < 1e-6
    chunks = torch.arange(L).chunk(3)  # keys split three ways, each chunk carrying eps / 3
    parts = []
    for c in chunks:
        kc = slice(int(c[0]), int(c[-1]) + 1)
        pad = lambda x: x[:, kc]  # noqa: E731
        # linear_attention_features pairs q and k by length: give every chunk all queries, keys of the chunk
        num = torch.einsum("blhf,bhfd->blhd", qn, torch.einsum("blhf,blhd->bhfd", pad(kn), pad(v)))
        d = torch.einsum("blhf,bhf->blh", qd, pad(kd).sum(1)) + eps / 3
        parts.append((num / d[..., None], torch.log(d)))
    merged, _ = ring_merge(parts)
    assert rel_err(merged, ref) < 1e-5
    with pytest.raises(ValueError, match="return_lse=True is only available with causal=False"):
        linear_attention_features(qn, kn, v, causal=True, chunk=9, return_lse=True)


def test_sta_backend_maps_cogvideox_shards_to_text_then_video():
    """Ulysses: the op sees [t0 v0 t1 v1]; ring: one shard's queries against one shard's keys."""
    from vidaccel.accel.sliding_window.backend import StaParams, _sta_op, canonical_positions

    torch.manual_seed(4)
    grid, window, tile, text = (2, 4, 4), (1, 2, 2), (1, 2, 2), 8
    n, L = 2, text + 32
    params = StaParams(grid, window, tile, text, "torch")
    q, k, v = (torch.randn(1, L, 2, 16) for _ in range(3))  # canonical [text; video]
    whole = sliding_tile_attention(q, k, v, grid=grid, window=window, tile=tile, num_text_tokens=text,
                                   backend="torch")
    pos = canonical_positions(range(n), n, text, 32)
    assert pos.tolist() == [0, 1, 2, 3, *range(8, 24), 4, 5, 6, 7, *range(24, 40)]
    shard_order = [x[:, pos] for x in (q, k, v)]
    out = _sta_op(*shard_order, params=params, scale=None, return_lse=False,
                  layout=SequenceLayout(n, range(n), range(n), 1))
    assert torch.equal(out, whole[:, pos])
    for r in range(n):  # ring: rank r's queries meet shard c's keys, merged as diffusers does
        qp = canonical_positions(range(r, r + 1), n, text, 32)
        parts = []
        for c in ((r + i) % n for i in range(n)):
            kp = canonical_positions(range(c, c + 1), n, text, 32)
            parts.append(_sta_op(q[:, qp], k[:, kp], v[:, kp], params=params, scale=None, return_lse=True,
                                 layout=SequenceLayout(n, range(r, r + 1), range(c, c + 1), n)))
        merged, _ = ring_merge(parts)
        assert rel_err(merged, whole[:, qp]) < 1e-5


def test_backends_without_context_parallelism_run_their_op():
    from vidaccel.accel.linear_attention.backend import LINEAR_BACKEND, LinearParams
    from vidaccel.core.attention_backend import FLASH, dispatch

    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 40, 2, 16) for _ in range(3))
    assert rel_err(dispatch(q, k, v, backend=FLASH), F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)) < 1e-6
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    out = dispatch(fq, fk, v, backend=LINEAR_BACKEND, params=LinearParams(16, 16, False, 1e-6, "torch"))
    assert rel_err(out, linear_attention_features(fq, fk, v, backend="torch")) < 1e-6
    with pytest.raises(ValueError, match="computes with scale 1/sqrt"):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        from vidaccel.core.attention_backend import backend_member

        dispatch_attention_fn(q, k, v, scale=0.5, backend=backend_member(FLASH))


def test_cogvideox_dispatch_processor_is_the_models_own_attention():
    from vidaccel import testing
    from vidaccel.core.processors import DispatchProcessor, wrap_processor
    from vidaccel.families import family_for

    for version in ("1.0", "1.5"):
        pipe = testing.tiny_cogvideox_pipeline(version)
        pipe.set_progress_bar_config(disable=True)
        kw = testing.tiny_call_kwargs(pipe, output_type="latent", num_inference_steps=2)
        ref = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).frames
        model = pipe.transformer
        family = family_for(model)
        for i, attn in family.self_attentions(model):
            attn.set_processor(wrap_processor(DispatchProcessor, attn.processor, i, family=family))
        out = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).frames
        assert torch.equal(out, ref)


def test_wrappers_forward_parallel_settings_and_detach_keeps_a_relinked_processor():
    from vidaccel import testing
    from vidaccel.core.processors import ProcessorSwap, ProcessorWrapper, wrap_processor
    from vidaccel.families import family_for

    pipe = testing.tiny_wan_pipeline()
    model = pipe.transformer
    family = family_for(model)
    original = model.blocks[0].attn1.processor
    swap = ProcessorSwap(family, model, lambda p, i: wrap_processor(ProcessorWrapper, p, i))
    swap.attach()
    wrapper = model.blocks[0].attn1.processor
    wrapper._parallel_config = "cp"
    assert original._parallel_config == "cp" and wrapper._parallel_config == "cp"
    wrapper._attention_backend = "x"
    assert original._attention_backend == "x"
    original._parallel_config = original._attention_backend = None
    relinked = wrap_processor(ProcessorWrapper, original, 0)
    wrapper.inner = relinked  # what enable_parallelism does under a technique on CogVideoX
    swap.detach()
    assert model.blocks[0].attn1.processor is relinked
    assert model.blocks[1].attn1.processor is not None and not isinstance(model.blocks[1].attn1.processor,
                                                                          ProcessorWrapper)


def test_split_hooks_go_outermost_and_hooks_follow_a_swapped_module():
    from diffusers.hooks import HookRegistry, ModelHook

    from vidaccel.core.context_parallel import keep_split_hooks_outermost, move_hooks

    calls = []

    class Tag(ModelHook):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def pre_forward(self, module, *args, **kwargs):
            calls.append(self.name)
            return args, kwargs

    class Wrap(ModelHook):  # a hook with new_forward, like vidaccel's cache block hook
        def new_forward(self, module, *args, **kwargs):
            calls.append("wrap")
            return self.fn_ref.original_forward(*args, **kwargs) * 2

    lin = torch.nn.Linear(2, 2)
    registry = HookRegistry.check_if_exists_or_initialize(lin)
    registry.register_hook(Tag("cp"), "cp_input---x")
    registry.register_hook(Wrap(), "wrap")
    registry.register_hook(Tag("after"), "after")
    x = torch.ones(1, 2)
    expected = lin.weight.new_tensor(0) + (x @ lin.weight.T + lin.bias) * 2
    keep_split_hooks_outermost(lin)
    assert registry._hook_order == ["wrap", "after", "cp_input---x"]
    calls.clear()
    assert torch.equal(lin(x), expected)
    assert calls == ["cp", "after", "wrap"]  # the split runs first, every hook still runs once
    other = torch.nn.Linear(2, 2)
    other.load_state_dict(lin.state_dict())
    move_hooks(lin, other)
    calls.clear()
    assert torch.equal(other(x), expected) and calls == ["cp", "after", "wrap"]
    assert lin._diffusers_hook._hook_order == [] and torch.equal(lin(x), x @ lin.weight.T + lin.bias)
