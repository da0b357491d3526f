"""RollingKVCache against a naive concat-then-truncate reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vidaccel.pipelines.long_video import RollingKVCache


def naive(frames_k, sink, window, ema=None):
    """Reference: all frames in a list; keep the sink and the last `window` others (EMA folds the dropped)."""
    sink_k = [f.clone() for f in frames_k[:sink]]
    rest = frames_k[sink:]
    if ema is not None:
        for j, dropped in enumerate(rest[: max(0, len(rest) - window)]):
            s = j % sink
            sink_k[s] = ema * sink_k[s] + (1 - ema) * dropped
    kept = rest[-window:] if window else []
    return torch.cat(sink_k + kept, dim=1) if sink_k or kept else None


@settings(max_examples=40, deadline=None)
@given(sink=st.integers(0, 3), window=st.integers(1, 5), chunks=st.lists(st.integers(1, 3), min_size=1, max_size=8),
       seed=st.integers(0, 2**16))
def test_eviction_matches_concat_then_truncate(sink, window, chunks, seed):
    chunks = [min(c, window) for c in chunks]
    g = torch.Generator().manual_seed(seed)
    tpf, layers = 3, 2
    cache = RollingKVCache(layers, 1, 2, 4, tpf, sink_frames=sink, window_frames=window)
    written = []
    start = 0
    for n in chunks:
        k = torch.randn(1, n * tpf, 2, 4, generator=g)
        for layer in range(layers):
            cache.update(layer, k * (layer + 1), -k, frame_start=start)
        written += [k[:, i * tpf:(i + 1) * tpf] for i in range(n)]
        start += n
        ref = naive(written, sink, window)
        for layer in range(layers):
            got_k, got_v = cache.get(layer)
            torch.testing.assert_close(got_k, ref * (layer + 1), rtol=0, atol=0)
            torch.testing.assert_close(got_v, -ref, rtol=0, atol=0)
    assert cache.frames_written == start
    assert cache.valid_frames == min(start, sink) + min(max(start - sink, 0), window)
    absolute = cache.positions("absolute")
    expected = list(range(min(start, sink))) + list(range(max(sink, start - window), start))
    assert absolute == expected
    assert cache.positions("relative") == list(range(len(expected)))


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_ema_sink_folds_evicted_frames(decay):
    tpf, sink, window = 2, 2, 3
    cache = RollingKVCache(1, 1, 1, 2, tpf, sink_frames=sink, window_frames=window, ema_decay=decay)
    g = torch.Generator().manual_seed(1)
    written = []
    for start in range(0, 12, 2):
        k = torch.randn(1, 2 * tpf, 1, 2, generator=g)
        cache.update(0, k, k, frame_start=start)
        written += [k[:, :tpf], k[:, tpf:]]
    torch.testing.assert_close(cache.get(0)[0], naive(written, sink, window, ema=decay), rtol=1e-6, atol=1e-6)


def test_preallocated_and_no_reallocation():
    cache = RollingKVCache(2, 1, 2, 4, 3, sink_frames=1, window_frames=2)
    ptr = cache.k.data_ptr()
    for start in range(0, 20):
        cache.update(0, torch.ones(1, 3, 2, 4), torch.ones(1, 3, 2, 4), frame_start=start, commit=False)
        cache.update(1, torch.ones(1, 3, 2, 4), torch.ones(1, 3, 2, 4), frame_start=start)
    assert cache.k.data_ptr() == ptr and cache.k.shape == (2, 1, 9, 2, 4)
    assert cache.nbytes() == 2 * 2 * 9 * 2 * 4 * 4
    cache.reset()
    assert cache.valid_frames == 0 and cache.get(0)[0].shape[1] == 0


@pytest.mark.parametrize("kwargs,needle", [
    (dict(window_frames=0), "window_frames=0"),
    (dict(window_frames=2, sink_frames=-1), "sink_frames=-1"),
    (dict(window_frames=2, ema_decay=0.5), "needs sink_frames"),
    (dict(window_frames=2, sink_frames=1, ema_decay=1.5), "ema_decay=1.5"),
])
def test_invalid_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RollingKVCache(1, 1, 1, 2, 2, **kwargs)


def test_update_validates_shapes():
    cache = RollingKVCache(1, 1, 2, 4, 3, window_frames=2)
    with pytest.raises(ValueError, match="k/v must be"):
        cache.update(0, torch.zeros(1, 4, 2, 4), torch.zeros(1, 4, 2, 4), frame_start=0)
    with pytest.raises(ValueError, match="layer=3 is out of range"):
        cache.update(3, torch.zeros(1, 3, 2, 4), torch.zeros(1, 3, 2, 4), frame_start=0)
    with pytest.raises(ValueError, match="cannot write 3 frames"):
        cache.update(0, torch.zeros(1, 9, 2, 4), torch.zeros(1, 9, 2, 4), frame_start=0)
