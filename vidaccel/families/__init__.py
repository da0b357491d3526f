"""Model families: one module each, the only code in vidaccel that knows a family's internals.

| family    | diffusers class                  | blocks                 | text in self-attn  | CFG                             |
|-----------|----------------------------------|------------------------|--------------------|---------------------------------|
| wan       | ``WanTransformer3DModel``        | ``blocks``             | no (``attn2``)     | two calls, contexts cond/uncond |
| cogvideox | ``CogVideoXTransformer3DModel``  | ``transformer_blocks`` | yes, text first    | one batched call, cond_uncond   |

Wan 2.2 A14B pipelines carry a second expert in ``transformer_2``; both experts share the family.
To add a family: write ``families/<name>.py`` with a :class:`~vidaccel.families.base.ModelFamily` instance
implementing its attention, geometry and caching hooks, list it in :data:`FAMILIES`, and add its tiny
pipeline to the test matrix (``tests/conftest.py``).
"""

from __future__ import annotations

from .base import FRAGILE_KINDS, FragileLayer, ModelFamily, Rotary, SelfAttentionInputs
from .cogvideox import COGVIDEOX
from .wan import WAN

__all__ = ["ModelFamily", "Rotary", "SelfAttentionInputs", "FragileLayer", "FRAGILE_KINDS", "FAMILIES",
           "family_for", "pipeline_transformers", "supported_model_classes", "EXPERT_ATTRS", "unwrap_compiled"]

#: Transformer class name → its family.
FAMILIES: dict[str, ModelFamily] = {f.model_class: f for f in (WAN, COGVIDEOX)}

#: Pipeline attributes that may hold a transformer, in the order the pipeline uses them
#: (Wan 2.2: ``transformer`` is the high-noise expert, ``transformer_2`` the low-noise one).
EXPERT_ATTRS: tuple[str, ...] = ("transformer", "transformer_2")


def supported_model_classes() -> list[str]:
    return sorted(FAMILIES)


def unwrap_compiled(model):
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) compiles, or ``model`` itself.

    Techniques attach to the inner module; the wrapper keeps calling it, so
    ``pipe.transformer = torch.compile(pipe.transformer)`` works before or after :func:`vidaccel.apply`
    (dynamo recompiles once when a technique changes the module).
    """
    inner = getattr(model, "_orig_mod", None) if type(model).__name__ == "OptimizedModule" else None
    return model if inner is None else inner


def family_for(model) -> ModelFamily:
    """The family of a transformer; raises ``ValueError`` naming the class and the supported ones."""
    model = unwrap_compiled(model)
    for cls in type(model).__mro__:
        family = FAMILIES.get(cls.__name__)
        if family is not None:
            return family
    raise ValueError(
        f"model class {type(model).__name__!r} is not supported by vidaccel; "
        f"supported transformer classes: {', '.join(supported_model_classes())}"
    )


def pipeline_transformers(target) -> list[tuple[str, "object"]]:
    """``(role, transformer)`` pairs of a pipeline (both Wan 2.2 experts) or ``[("transformer", model)]``;
    a ``torch.compile`` wrapper gives the module it compiles (:func:`unwrap_compiled`).

    Raises ``ValueError`` when ``target`` is neither a supported transformer nor a pipeline holding one.
    """
    from torch import nn

    if isinstance(target, nn.Module):
        target = unwrap_compiled(target)
        family_for(target)
        return [("transformer", target)]
    found = [(attr, unwrap_compiled(getattr(target, attr))) for attr in EXPERT_ATTRS
             if isinstance(getattr(target, attr, None), nn.Module)]
    if not found:
        raise ValueError(
            f"target of type {type(target).__name__!r} is neither a supported transformer "
            f"({', '.join(supported_model_classes())}) nor a pipeline with a `transformer` attribute"
        )
    for _, model in found:
        family_for(model)
    return found
