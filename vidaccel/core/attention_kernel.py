"""The self-attention kernel slot of a transformer: how a technique that changes *which* query–key pairs are
computed (sliding-tile windows) and one that changes *how* softmax attention is computed (quantized attention)
cooperate without knowing each other.

The *numerics* technique puts a kernel in the transformer's slot (:func:`set_attention_kernel`) and wraps the
model's own processors innermost (:class:`~vidaccel.core.processors.ProcessorSwap` with ``innermost=True``),
so it sees exactly the calls that reach the model's softmax attention. A *pattern* technique that computes
attention itself asks :func:`attention_kernel` for the kernel, passes it the pattern (token grid, window and
tile, or none for dense), and falls back to its own exact kernel when the slot is empty or the kernel declines
the call (returns ``None``: a layer or step the numerics technique leaves exact).

A kernel is called as ``kernel(q, k, v, *, layer, num_text_tokens=0, grid=None, window=None, tile=None)`` on
``[B, L, H, D]`` tensors (RoPE already applied) and returns ``[B, L, H, D]`` or ``None``.

Under context parallelism a processor holds only its rank's tokens, so it cannot call the kernel: it dispatches
through a diffusers attention backend instead (:func:`vidaccel.core.attention_backend.dispatch`). The numerics
technique may therefore also put a *parallel* entry in the slot, called as
``parallel(*, layer, num_text_tokens=0, grid=None, window=None, tile=None)`` with the geometry of the whole
sequence (all ranks together); it returns ``(backend_name, params)`` to dispatch to, or ``None`` for a call it
leaves exact (see :func:`parallel_attention_kernel`).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["set_attention_kernel", "clear_attention_kernel", "attention_kernel", "parallel_attention_kernel"]

_SLOT_ATTR = "_vidaccel_attention_kernel"  # on each transformer: (owner name, kernel, parallel entry or None)


def set_attention_kernel(model, owner: str, kernel: Callable, parallel: Callable | None = None) -> None:
    """Put ``kernel`` (and its context-parallel entry ``parallel``, see module docs) in ``model``'s slot;
    ``ValueError`` when another technique holds it."""
    held = model.__dict__.get(_SLOT_ATTR)
    if held is not None and held[0] != owner:
        raise ValueError(f"the self-attention kernel of {type(model).__name__} is already set by {held[0]!r}; "
                         f"{owner!r} cannot set another one (remove {held[0]!r} first)")
    # object.__setattr__ keeps the entry out of nn.Module's registries (no state_dict / parameter impact).
    object.__setattr__(model, _SLOT_ATTR, (owner, kernel, parallel))


def clear_attention_kernel(model, owner: str) -> None:
    """Empty ``model``'s slot if ``owner`` holds it."""
    held = model.__dict__.get(_SLOT_ATTR)
    if held is not None and held[0] == owner:
        del model.__dict__[_SLOT_ATTR]


def attention_kernel(model) -> Callable | None:
    """The kernel in ``model``'s slot, or ``None``."""
    held = model.__dict__.get(_SLOT_ATTR)
    return None if held is None else held[1]


def parallel_attention_kernel(model) -> Callable | None:
    """The context-parallel entry of ``model``'s slot, or ``None`` (empty slot, or a kernel without one)."""
    held = model.__dict__.get(_SLOT_ATTR)
    return None if held is None else held[2]

