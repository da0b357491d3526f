"""Rolling key/value cache for autoregressive (chunk-by-chunk) video generation.

Layout: one preallocated buffer per tensor for all self-attention layers,
``k, v: [num_layers, batch, capacity_frames * tokens_per_frame, heads, head_dim]``, where
``capacity_frames = sink_frames + window_frames`` latent frames. Latent frame ``a`` (absolute index since the
start of the video) lives in

* slot ``a`` while ``a < sink_frames`` (sink frames are never evicted), else
* ring slot ``sink_frames + (a - sink_frames) % window_frames``: writing frame ``a`` evicts frame
  ``a - window_frames`` by overwriting it in place (no shift-and-clone of the window).

All bookkeeping (which absolute frame each slot holds) is plain Python integers, so reading and writing never
synchronises with the device (no ``.item()``).

EMA sink (Reward Forcing, arXiv:2512.04678): with ``ema_decay`` set, an evicted frame is folded into sink
frame ``(a - sink_frames) % sink_frames`` as ``sink = decay * sink + (1 - decay) * evicted`` instead of being
dropped, so the sink summarises the whole past at a fixed size.

Positions (for RoPE) are kept apart from slots: :meth:`positions` returns, for every valid slot in temporal
order, either its absolute latent-frame index (``"absolute"``) or its index within sink + window
(``"relative"``: sink frames 0..s-1, then window frames in order), which keeps every position below
``capacity_frames`` however long the video gets.

Example::

    cache = RollingKVCache(num_layers=30, batch=1, heads=12, head_dim=128, tokens_per_frame=1560,
                           sink_frames=1, window_frames=6, dtype=torch.bfloat16, device="cuda")
    cache.update(layer, k_chunk, v_chunk, frame_start=9)      # k_chunk: [B, frames * tokens_per_frame, H, D]
    k, v = cache.get(layer)                                    # [B, valid_tokens, H, D] in temporal order
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.validation import bad_value, check_int, check_number
from ...memory import available_bytes

__all__ = ["RollingKVCache"]


class RollingKVCache(nn.Module):
    """Preallocated per-layer K/V ring buffers with never-evicted sink frames (see the module docstring).

    Args:
        num_layers: self-attention layers cached.
        batch: batch size (CFG branches that run as separate calls need separate caches).
        heads, head_dim: attention geometry.
        tokens_per_frame: tokens of one latent frame after patching (``(h / p_h) * (w / p_w)``).
        sink_frames: first latent frames kept for the whole video (0 for none).
        window_frames: most recent latent frames kept besides the sink (≥ 1).
        ema_decay: fold evicted frames into the sink with this decay (``None``: drop them). Needs a sink.
        dtype, device: buffer dtype and device.
    """

    def __init__(self, num_layers: int, batch: int, heads: int, head_dim: int, tokens_per_frame: int, *,
                 sink_frames: int = 0, window_frames: int, ema_decay: float | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        o = "RollingKVCache"
        for name, value, lo in (("num_layers", num_layers, 1), ("batch", batch, 1), ("heads", heads, 1),
                                ("head_dim", head_dim, 1), ("tokens_per_frame", tokens_per_frame, 1),
                                ("sink_frames", sink_frames, 0), ("window_frames", window_frames, 1)):
            check_int(o, name, value, lo=lo, hi=2**31 - 1)
        ema_decay = check_number(o, "ema_decay", ema_decay, lo=0, hi=1, hi_open=True, optional=True)
        if ema_decay is not None and sink_frames == 0:
            raise ValueError("RollingKVCache.ema_decay needs sink_frames >= 1 to fold evicted frames into")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise bad_value(o, "dtype", dtype, "it must be a floating torch.dtype")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise bad_value(o, "device", device, "it must be a torch device such as 'cpu' or 'cuda'") from None
        if dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and (
                not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count())):
            raise bad_value(o, "device", device, "it must be 'cpu' or a CUDA device this machine has")
        device = dev
        elements = num_layers * batch * (sink_frames + window_frames) * tokens_per_frame * heads * head_dim
        need = 2 * elements * torch.empty((), dtype=dtype).element_size()
        free = available_bytes(device)
        if free is not None and need > free:
            raise ValueError(f"RollingKVCache(num_layers={num_layers}, batch={batch}, heads={heads}, head_dim={head_dim}, "
                             f"tokens_per_frame={tokens_per_frame}, sink_frames={sink_frames}, window_frames="
                             f"{window_frames}) is not allowed: its key/value buffers need {need / 2**30:.1f} GiB, "
                             f"more than the {free / 2**30:.1f} GiB available on {device}; use a smaller window, "
                             "sink or video size")
        self.num_layers, self.batch, self.heads, self.head_dim = num_layers, batch, heads, head_dim
        self.tokens_per_frame = tokens_per_frame
        self.sink_frames, self.window_frames = sink_frames, window_frames
        self.capacity_frames = sink_frames + window_frames
        self.ema_decay = ema_decay
        shape = (num_layers, batch, self.capacity_frames * tokens_per_frame, heads, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.reset()

    # -- bookkeeping (host-side integers only) ------------------------------------------------------------
    def reset(self) -> None:
        """Forget every frame (buffers are kept, not reallocated)."""
        self.slot_frame: list[int] = [-1] * self.capacity_frames  # absolute frame held by each slot, -1 = empty
        self.frames_written = 0  # frames committed by the last layer's update (the video length cached)

    def slot_of(self, frame: int) -> int:
        """The slot absolute latent frame ``frame`` is written to."""
        if frame < self.sink_frames:
            return frame
        return self.sink_frames + (frame - self.sink_frames) % self.window_frames

    def order(self) -> list[int]:
        """Valid slots in temporal order (sink first, then the window oldest → newest)."""
        valid = [s for s in range(self.capacity_frames) if self.slot_frame[s] >= 0]
        return sorted(valid, key=lambda s: (s >= self.sink_frames, self.slot_frame[s]))

    def positions(self, mode: str = "relative") -> list[int]:
        """Frame position of each valid slot in :meth:`order`: absolute index, or index within sink + window."""
        order = self.order()
        if mode == "absolute":
            return [self.slot_frame[s] for s in order]
        if mode == "relative":
            return list(range(len(order)))
        raise ValueError(f"positions mode={mode!r} is not allowed; use 'relative' or 'absolute'")

    @property
    def valid_frames(self) -> int:
        return sum(1 for f in self.slot_frame if f >= 0)

    def _tokens(self, slot: int) -> slice:
        t = self.tokens_per_frame
        return slice(slot * t, (slot + 1) * t)

    # -- data ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, frame_start: int, *, commit: bool | None = None):
        """Write ``k, v: [B, frames * tokens_per_frame, H, D]`` of absolute frames ``frame_start ...`` into ``layer``.

        The slot map is advanced when the last layer is written (``commit=None``), or as ``commit`` says, so all
        layers of one forward pass see the same slots.
        """
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer={layer} is out of range: the cache has {self.num_layers} layers")
        t = self.tokens_per_frame
        if k.shape != v.shape or k.dim() != 4 or k.shape[1] % t or k.shape[0] != self.batch \
                or k.shape[2:] != (self.heads, self.head_dim):
            raise ValueError(f"k/v must be [B={self.batch}, frames*{t}, H={self.heads}, D={self.head_dim}], "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        frames = k.shape[1] // t
        if frames > self.window_frames and frame_start + frames > self.sink_frames:
            raise ValueError(f"cannot write {frames} frames at once into a window of {self.window_frames}")
        kl, vl = self.k[layer], self.v[layer]
        for i in range(frames):
            a = frame_start + i
            slot = self.slot_of(a)
            old = self.slot_frame[slot]
            if self.ema_decay is not None and old >= 0 and old != a and slot >= self.sink_frames:
                sink = self._tokens((old - self.sink_frames) % self.sink_frames)
                d = self.ema_decay
                kl[:, sink].mul_(d).add_(kl[:, self._tokens(slot)], alpha=1 - d)
                vl[:, sink].mul_(d).add_(vl[:, self._tokens(slot)], alpha=1 - d)
            kl[:, self._tokens(slot)] = k[:, i * t:(i + 1) * t].to(kl.dtype)
            vl[:, self._tokens(slot)] = v[:, i * t:(i + 1) * t].to(vl.dtype)
        if commit if commit is not None else layer == self.num_layers - 1:
            for i in range(frames):
                self.slot_frame[self.slot_of(frame_start + i)] = frame_start + i
            self.frames_written = max(self.frames_written, frame_start + frames)

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``layer``'s valid frames in temporal order: ``[B, valid_frames * tokens, H, D]``.

        When the valid slots are already contiguous and ordered (the cache is not yet full, or it has no
        window wrap) these are views; otherwise one gather.
        """
        order = self.order()
        if not order:
            empty = self.k[layer][:, :0]
            return empty, self.v[layer][:, :0]
        if order == list(range(order[0], order[0] + len(order))):
            sl = slice(order[0] * self.tokens_per_frame, (order[-1] + 1) * self.tokens_per_frame)
            return self.k[layer][:, sl], self.v[layer][:, sl]
        t = self.tokens_per_frame
        index = torch.cat([torch.arange(s * t, (s + 1) * t) for s in order]).to(self.k.device)
        return self.k[layer].index_select(1, index), self.v[layer].index_select(1, index)

    def extra_repr(self) -> str:
        return (f"layers={self.num_layers}, batch={self.batch}, heads={self.heads}, head_dim={self.head_dim}, "
                f"tokens_per_frame={self.tokens_per_frame}, sink={self.sink_frames}, window={self.window_frames}, "
                f"ema_decay={self.ema_decay}")

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
