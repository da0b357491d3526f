"""The drop-in pipeline classes' shared base: diffusers' ``from_pretrained`` plus ``accel=`` and ``quantized=``.

Per-call bookkeeping (technique reset, ``pipe.last_run``) comes from
:class:`vidaccel.core.pipeline_class.AcceleratedPipelineMixin`.
"""

from __future__ import annotations

import os
from typing import Any

from .. import api
from ..core.pipeline_class import AcceleratedPipelineMixin, register_accelerated_class
from ..accel import resolve_accel

__all__ = ["DropInPipelineMixin", "AcceleratedPipelineMixin", "register_drop_in"]


class DropInPipelineMixin(AcceleratedPipelineMixin):
    """Mixed in front of a diffusers pipeline class to make a drop-in vidaccel pipeline class."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, accel: Any = None, quantized=None,
                        parallel: Any = None, **kwargs):
        """``diffusers`` ``from_pretrained``, then :func:`vidaccel.apply` of ``accel``.

        Args:
            accel: ``None``, a preset name (``"fast"``), a technique config or a list of those.
            quantized: a folder or hub id holding :func:`vidaccel.save_quantized` files or a diffusers + torchao
                checkpoint (``transformer/config.json`` + safetensors); its transformers are built straight from the
                quantized tensors on vidaccel's kernels (no bf16 transformer weights are ever materialised).
            parallel: a :class:`vidaccel.parallel.ParallelConfig` (or a dict of its fields, or the Ulysses
                degree): context parallelism over the processes ``torchrun`` started (joins their group; move
                the pipeline to ``"cuda"``, this process's GPU, afterwards).
        """
        from ..parallel.config import as_parallel_config

        configs = resolve_accel(accel)  # validate before the (slow) load
        parallel = as_parallel_config(parallel)
        if quantized is not None:
            from ..accel.quantization.torchao_format import load_quantized_checkpoint, quantized_roles

            hub = {k: kwargs.get(k) for k in ("cache_dir", "local_files_only") if kwargs.get(k) is not None}
            index, configs_of = _base_configs(cls, pretrained_model_name_or_path)
            expected = None if index is None else [r for r in ("transformer", "transformer_2")
                                                   if isinstance(index.get(r), (list, tuple)) and index[r][0]]
            folder, roles = quantized_roles(quantized, expected, **hub)
            if not roles:
                raise ValueError(f"quantized={os.fspath(quantized)!r} holds no transformer.safetensors written by "
                                 "vidaccel.save_quantized and no diffusers + torchao transformer/config.json")
            for role in roles:
                kwargs.setdefault(role, load_quantized_checkpoint(folder, role, expected_config=configs_of(role)))
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if configs:
            api.apply(pipe, *configs)
        if parallel is not None:
            from ..parallel.launch import init_distributed
            from ..parallel.model import enable_parallelism

            init_distributed()
            enable_parallelism(pipe, parallel)
        return pipe


def _base_configs(cls, name):
    """The base pipeline's ``model_index.json`` and a reader of its ``<role>/config.json`` (both ``None`` when they
    cannot be read without downloading weights, e.g. offline; the checkpoint checks then rely on the files)."""
    try:
        index = cls.load_config(name)
    except Exception:  # offline hub id, or not a pipeline: diffusers reports that on loading itself
        return None, lambda role: None

    def config_of(role):
        try:
            import diffusers

            model_cls = getattr(diffusers, index[role][1])
            return dict(model_cls.load_config(name, subfolder=role))
        except Exception:  # no such component, or its config cannot be fetched: the header is trusted alone
            return None

    return dict(index), config_of


def register_drop_in(*classes: type) -> None:
    """Make ``vidaccel.apply`` switch plain instances of each class's diffusers base to the drop-in class."""
    for cls in classes:
        base = next(b for b in cls.__mro__[1:] if b.__module__.startswith("diffusers"))
        register_accelerated_class(base, cls)
