"""vidaccel attention ops as diffusers attention backends that support context parallelism.

diffusers dispatches attention by backend name (``dispatch_attention_fn(..., backend=...)``) and, under context
parallelism (``transformer.enable_parallelism``), runs a backend that declares support through its Ulysses or
ring templates. :func:`register_backend` makes any vidaccel op such a backend; techniques then point the
processors of the layers they change at it with :func:`select` (per processor: never diffusers'
process-wide ``set_attention_backend``, which also changes every model that has no backend of its own).

The op contract (``op(query, key, value, *, params, scale, return_lse, layout)``):

* ``query: [B, Lq, H, D]``, ``key, value: [B, Lk, H, D]`` in diffusers' layout; the op returns
  ``[B, Lq, H, D]`` in ``query``'s dtype, and with ``return_lse`` also the log-sum-exp ``[B, Lq, H]`` (fp32,
  natural log, over the keys it was given). The ring merge combines per-chunk results as
  ``o = o1 + sigmoid(l2 - l1) (o2 - o1)``, so any op whose result over a union of key sets is the
  ``exp(lse)``-weighted mean of its per-set results may return its own normaliser as ``lse`` (linear attention:
  ``log`` of its denominator). A query row that sees no key of a chunk must return ``out = 0`` and a finite
  ``lse`` far below the others (:data:`EMPTY_LSE`), never ``-inf`` (the merge would give NaN). The merge of such a
  row is exact when the chunk is not the first one the row meets (``sigmoid(EMPTY_LSE - lse)`` is 0 in fp32);
  on the first (the local chunk, which holds the row's own key for the ops here) it would cost ``lse`` about
  ``|EMPTY_LSE| * 2**-24`` of precision.
* ``params``: whatever the caller passed as ``params`` to :func:`dispatch` (grid, window, feature maps...).
* ``layout``: a :class:`SequenceLayout` saying which part of the full sequence the query and key tokens are:
  without context parallelism the whole sequence; under Ulysses the whole sequence with ``H / ulysses`` heads;
  under ring this rank's query shards and, in turn, each rank's key shards.

Forward only: a backward pass through these backends raises (vidaccel's context-parallel path is for inference).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger(__name__)

__all__ = ["SequenceLayout", "EMPTY_LSE", "register_backend", "backend_member", "registered_backends", "select",
           "selected", "innermost", "dispatch", "can_return_lse", "FLASH"]

#: The log-sum-exp a query row reports for a key chunk it does not see (finite: the ring merge needs it).
EMPTY_LSE = -1.0e4
#: Name of the dense flash-attention backend (vidaccel's kernel; returns the log-sum-exp ring needs).
FLASH = "vidaccel_flash"
#: diffusers backends whose ops raise on ``return_lse=True`` (so they cannot run ring attention).
_NO_LSE = ("native", "_native_efficient", "_native_math", "_native_npu", "_native_xla", "sage_varlen", "xformers",
           "sage_blackwell_hub")

_OPS: dict[str, Callable] = {}


@dataclass(frozen=True)
class SequenceLayout:
    """Where an op's query and key tokens sit in the full sequence.

    Under context parallelism the sequence is cut into ``shards`` equal, consecutive shards (shard ``i`` is
    rank ``i``'s part of the flattened ring × Ulysses mesh); an op's query tokens are the shards ``q_shards``
    concatenated in order, its key tokens the shards ``kv_shards``. ``ring`` is the number of key chunks whose
    results the ring merge combines (1: the op sees every key at once).
    """

    shards: int = 1
    q_shards: range = range(1)
    kv_shards: range = range(1)
    ring: int = 1

    @property
    def whole(self) -> bool:
        """The op sees the whole sequence (no context parallelism, or Ulysses only)."""
        return len(self.q_shards) == self.shards and len(self.kv_shards) == self.shards


WHOLE = SequenceLayout()


def _diffusers_dispatch():
    from diffusers.models import attention_dispatch

    return attention_dispatch


def _enum_member(value: str):
    """The ``AttentionBackendName`` member for ``value``, added when missing.

    diffusers names backends by a closed ``str`` Enum (``dispatch_attention_fn``, ``enable_parallelism`` and
    ``set_attention_backend`` all call ``AttentionBackendName(value)``), so a new backend needs a new member.
    """
    enum_cls = _diffusers_dispatch().AttentionBackendName
    if value in enum_cls._value2member_map_:
        return enum_cls(value)
    member = str.__new__(enum_cls, value)
    member._name_ = value.upper()
    member._value_ = value
    member.__objclass__ = enum_cls
    if hasattr(member, "_sort_order_"):
        member._sort_order_ = len(enum_cls._member_names_)
    type.__setattr__(enum_cls, member._name_, member)
    enum_cls._member_map_[member._name_] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(member._name_)
    return member


def _layout(ctx, parallel_config, save_ctx: bool) -> SequenceLayout:
    """The layout a templated forward op sees (diffusers calls the ring op once per key chunk, ``_save_ctx`` only
    on the first, local one; chunk ``i`` holds the keys of ring rank ``(rank + i) % ring``)."""
    cp = parallel_config.context_parallel_config
    ring, ulysses = cp.ring_degree, cp.ulysses_degree
    shards = ring * ulysses
    if ring == 1:
        return SequenceLayout(shards, range(shards), range(shards), 1)
    step = 0 if save_ctx else ctx._vidaccel_ring_step + 1
    ctx._vidaccel_ring_step = step
    r = cp._ring_local_rank
    c = (r + step) % ring
    return SequenceLayout(shards, range(r * ulysses, (r + 1) * ulysses), range(c * ulysses, (c + 1) * ulysses), ring)


def _no_backward(*args, **kwargs):
    raise NotImplementedError("vidaccel attention backends are forward-only under context parallelism: run "
                              "inference under torch.no_grad(), or train without enable_parallelism")


def _forward_op(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                _save_ctx=True, _parallel_config=None, *, op, params):
    layout = _layout(ctx, _parallel_config, _save_ctx)
    return op(query, key, value, params=params, scale=scale, return_lse=return_lse, layout=layout)


def _check_call(name: str, query, attn_mask, dropout_p, is_causal, enable_gqa, scale) -> None:
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        raise ValueError(f"attention backend {name!r} computes unmasked, non-causal attention without dropout or "
                         f"GQA; got attn_mask={'set' if attn_mask is not None else None}, is_causal={is_causal}, "
                         f"dropout_p={dropout_p}, enable_gqa={enable_gqa}")
    if scale is not None and not math.isclose(scale, query.shape[-1] ** -0.5, rel_tol=1e-6):
        raise ValueError(f"attention backend {name!r} computes with scale 1/sqrt(head_dim) = "
                         f"{query.shape[-1] ** -0.5:.6g}; got scale={scale}")


def register_backend(name: str, op: Callable) -> Any:
    """Register ``op`` (see module docs) as the diffusers attention backend ``name``; returns its enum member.

    Registering the same name again replaces the op (idempotent for module reloads). Each process registers
    its backends itself (importing the module that calls this does it).

    Example::

        register_backend("my_op", lambda q, k, v, *, params, scale, return_lse, layout: ...)
        select(attn.processor, "my_op")
    """
    if not isinstance(name, str) or not name.startswith("vidaccel_"):
        raise ValueError(f"name={name!r} is not allowed: vidaccel backend names start with 'vidaccel_'")
    dispatch_mod = _diffusers_dispatch()
    member = _enum_member(name)
    templated = dispatch_mod._templated_context_parallel_attention

    def backend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                return_lse=False, vidaccel_params=None, _parallel_config=None):
        _check_call(name, query, attn_mask, dropout_p, is_causal, enable_gqa, scale)
        if _parallel_config is None:
            return op(query, key, value, params=vidaccel_params, scale=scale, return_lse=return_lse, layout=WHOLE)
        forward_op = functools.partial(_forward_op, op=op, params=vidaccel_params)
        return templated(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                         forward_op=forward_op, backward_op=_no_backward, _parallel_config=_parallel_config)

    backend.__name__ = f"_{name}_attention"
    dispatch_mod._AttentionBackendRegistry.register(member, supports_context_parallel=True)(backend)
    _OPS[name] = op
    return member


def registered_backends() -> list[str]:
    """Names registered through :func:`register_backend` in this process."""
    _ensure_flash()
    return sorted(_OPS)


def backend_member(name):
    """diffusers' enum member for a backend name (vidaccel's own are registered on first use)."""
    if name == FLASH:
        _ensure_flash()
    enum_cls = _diffusers_dispatch().AttentionBackendName
    value = getattr(name, "value", name)
    if value not in enum_cls._value2member_map_:
        known = ", ".join(sorted(enum_cls._value2member_map_))
        raise ValueError(f"attention backend {value!r} is not registered; registered: {known}")
    return enum_cls(value)


def can_return_lse(name) -> bool:
    """Whether backend ``name`` returns the log-sum-exp ring attention merges with (``None``: diffusers' default,
    ``native``, which does not)."""
    value = getattr(name, "value", name)
    return value is not None and value not in _NO_LSE


def innermost(processor):
    """The processor that actually dispatches attention: ``processor`` with the vidaccel wrappers that forward
    backend settings (``forwards_attention``) peeled off."""
    while getattr(processor, "forwards_attention", False):
        processor = processor.inner
    return processor


def select(processor, name) -> None:
    """Make ``processor`` (through any vidaccel wrappers) dispatch to backend ``name``; this processor only."""
    target = innermost(processor)
    if not hasattr(target, "_attention_backend"):
        raise ValueError(f"processor {type(target).__name__} does not dispatch through diffusers' attention "
                         "backends (it has no _attention_backend)")
    target._attention_backend = backend_member(name) if name is not None else None


def selected(processor):
    """The backend ``processor`` dispatches to (``None``: diffusers' process default)."""
    return getattr(innermost(processor), "_attention_backend", None)


def dispatch(query, key, value, *, backend: str, parallel_config=None, params: Any = None):
    """Run backend ``backend`` through diffusers' dispatcher (so context parallelism applies), passing ``params``
    to its op. ``query, key, value: [B, L, H, D]``."""
    member = backend_member(backend)
    return _diffusers_dispatch().dispatch_attention_fn(
        query, key, value, attention_kwargs={"vidaccel_params": params}, backend=member,
        parallel_config=parallel_config)


# -- the dense flash-attention backend ------------------------------------------------------------------------
def _flash_op(query, key, value, *, params, scale, return_lse, layout):
    """Dense softmax attention on vidaccel's flash kernel (``params``: a kernel backend name, default: vidaccel's
    Triton kernel on CUDA, torch's fused kernels elsewhere). Every key chunk holds visible keys."""
    from ..kernels._backend import triton_available
    from ..kernels.attention import flash_attention

    kernel = params
    if kernel is None:
        kernel = "triton" if query.device.type == "cuda" and triton_available(query.device) else "auto"
    result = flash_attention(query, key, value, backend=kernel, return_lse=return_lse)
    if not return_lse:
        return result
    out, lse = result
    return out, lse.transpose(1, 2)


@functools.lru_cache(maxsize=1)
def _ensure_flash():
    return register_backend(FLASH, _flash_op)
