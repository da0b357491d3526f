"""Checks of a generation request against the loaded model, run after loading and before any step.

* sizes on the model's grid (VAE factor × patch size: diffusers would silently round them down);
* sizes inside the model's position table (Wan's RoPE covers ``rope_max_seq_len`` tokens per axis; beyond it
  diffusers fails deep inside the first step);
* steps the scheduler can make;
* a memory estimate: the decoded video (float32 frames, copied twice on the way out) plus the transformer's
  activations for one call, against the memory available on the device. The estimate is a lower bound, so a
  refused size would certainly not have fit; sizes that pass can still run out on other allocations.
"""

from __future__ import annotations

from .common import CliError

__all__ = ["call_sizes", "check_sizes", "estimate_call_bytes", "check_memory", "check_steps", "prompt_notes"]

_FLAGS = {"height": "--height", "width": "--width", "num_frames": "--frames", "num_inference_steps": "--steps"}


def call_sizes(pipe, kwargs: dict) -> dict:
    """``num_frames``, ``height``, ``width`` this call will use: given, else the pipeline's own defaults (``None``
    where the pipeline decides at call time)."""
    from ..core.pipeline_class import call_defaults

    defaults = call_defaults(pipe)
    out = {}
    for key in ("num_frames", "height", "width"):
        value = kwargs.get(key)
        if value is None and isinstance(defaults.get(key), int):
            value = defaults[key]
        out[key] = value
    return out


def check_sizes(pipe, kwargs: dict) -> dict:
    """Refuse sizes off the model's grid or beyond its position table; returns :func:`call_sizes`."""
    from ..families import family_for, pipeline_transformers

    sizes = call_sizes(pipe, kwargs)
    model = pipeline_transformers(pipe)[0][1]
    family = family_for(model)
    temporal, spatial = family.vae_factors(pipe)
    patch = family.patch_size(model)
    multiple = spatial * patch[1]
    limits = family.token_grid_limit(model)
    for axis, name in ((1, "height"), (2, "width")):
        value = sizes[name]
        if value is None:
            continue
        if value % multiple:
            raise CliError(f"--{name}={value} is not allowed for this model: it must be a multiple of {multiple} "
                           f"(VAE x{spatial} times patch {patch[1]})")
        tokens = value // multiple
        if limits[axis] is not None and tokens > limits[axis]:
            raise CliError(f"--{name}={value} is not allowed for this model: it is {tokens} tokens, beyond its position "
                           f"table of {limits[axis]} (at most {limits[axis] * multiple})")
    frames = sizes["num_frames"]
    if frames is not None and limits[0] is not None:
        tokens = -(-family.latent_frames(frames, pipeline=pipe) // patch[0])
        if tokens > limits[0]:
            most = 1 + (limits[0] * patch[0] - 1) * temporal
            raise CliError(f"--frames={frames} is not allowed for this model: it is {tokens} latent frames, beyond its "
                           f"position table of {limits[0]} (at most {most} frames)")
    return sizes


def check_steps(pipe, steps: int | None) -> None:
    """The scheduler has ``num_train_timesteps`` to spread the steps over; more steps than that are refused."""
    total = getattr(getattr(pipe.scheduler, "config", None), "num_train_timesteps", None)
    if steps is not None and isinstance(total, int) and steps > total:
        raise CliError(f"--steps={steps} is not allowed for this model: its scheduler has {total} timesteps")


def estimate_call_bytes(pipe, sizes: dict, kwargs: dict) -> dict:
    """Lower-bound bytes of one call at ``sizes``: ``{"frames": ..., "activations": ..., "total": ...}``."""
    import torch

    from ..families import family_for, pipeline_transformers

    model = pipeline_transformers(pipe)[0][1]
    family = family_for(model)
    frames, height, width = sizes["num_frames"], sizes["height"], sizes["width"]
    if None in (frames, height, width):
        return {"frames": 0, "activations": 0, "total": 0}
    videos = int(kwargs.get("num_videos_per_prompt") or 1)
    pixels = videos * frames * height * width * 3
    frame_bytes = pixels * 4 * 2 + pixels  # decoded float32 tensor, its float32 numpy copy, the uint8 video
    latent = family.latent_shape(frames, height, width, pipeline=pipe)
    tokens = 1
    for n in family.token_grid(model, latent):
        tokens *= max(int(n), 1)
    cfg = (kwargs.get("guidance_scale") or 0) > 1 and family.cfg_style == "batched"
    batch = videos * (2 if cfg else 1)
    inner = int(getattr(model.config, "num_attention_heads", 1) or 1) * int(getattr(model.config, "attention_head_dim", 1) or 1)
    elsize = torch.empty((), dtype=model.dtype).element_size()
    # hidden states, norm, q, k, v, attention output, residual and a 4x-wide feed-forward intermediate per token
    activations = batch * tokens * inner * elsize * 10
    return {"frames": frame_bytes, "activations": activations, "total": frame_bytes + activations}


def check_memory(pipe, sizes: dict, kwargs: dict) -> None:
    from ..memory import available_bytes

    need = estimate_call_bytes(pipe, sizes, kwargs)
    free = available_bytes(pipe._execution_device)
    if free is None or need["total"] <= free:
        return
    gib = 2**30
    raise CliError(f"--height={sizes['height']} --width={sizes['width']} --frames={sizes['num_frames']} is not allowed "
                   f"here: the call needs at least {need['total'] / gib:.1f} GiB (decoded frames "
                   f"{need['frames'] / gib:.1f} GiB + transformer activations {need['activations'] / gib:.1f} GiB), "
                   f"more than the {free / gib:.1f} GiB available on {pipe._execution_device}; use a smaller size or "
                   "fewer frames")


def prompt_notes(pipe, prompts: list[str], max_sequence_length: int | None) -> list[str]:
    """Notes about prompts the model will not read whole: words the embedded model never saw (non-ASCII ones
    included), and prompts longer than the text length the model reads (the rest is cut off)."""
    notes = []
    info = getattr(pipe, "vidaccel_model", {}) or {}
    for prompt in prompts:
        if info.get("name") in ("shapes-t2v", "shapes-ar"):
            from ..models.shapes import unknown_words

            unknown = unknown_words(prompt)
            if unknown:
                shown = ", ".join(unknown[:20]) + (f" (+{len(unknown) - 20} more)" if len(unknown) > 20 else "")
                notes.append(f"note: the embedded model does not know these words: {shown}")
        tokenizer = getattr(pipe, "tokenizer", None)
        if tokenizer is not None and max_sequence_length:
            count = len(tokenizer(prompt, add_special_tokens=True, truncation=False).input_ids)
            if count > max_sequence_length:
                notes.append(f"warning: the prompt is {count} tokens ({len(prompt)} characters) but the model reads "
                             f"{max_sequence_length} (max_sequence_length); the rest is ignored")
    return notes
