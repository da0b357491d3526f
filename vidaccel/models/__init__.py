"""Embedded models of vidaccel: the shapes world and two tiny Wan models trained on it.

- ``shapes-t2v``: a full ``WanPipeline`` folder (text-to-video, 128x128, 17 frames).
- ``shapes-ar``: the same architecture trained block-causal over chunks of latent frames (diffusion
  forcing); its causal settings are in ``causal_config.json``; it runs in
  :class:`vidaccel.pipelines.LongVideoPipeline`.

Weights are stored in float16 safetensors inside the package and loaded offline; load them in
float32 (:data:`EMBEDDED_DTYPE`) on CPU. See ``MODEL_CARD.md`` beside this file.

Example::

    >>> import torch
    >>> from diffusers import WanPipeline
    >>> from vidaccel.models import EMBEDDED_DEFAULTS, embedded_path
    >>> pipe = WanPipeline.from_pretrained(embedded_path("shapes-t2v"), dtype=torch.float32)
    >>> video = pipe("a red circle moving right on a black background", output_type="np",
    ...              **EMBEDDED_DEFAULTS["shapes-t2v"]).frames[0]   # [17, 128, 128, 3] in [0, 1]
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_NAMES = ("shapes-t2v", "shapes-ar")

#: dtype to load the embedded models in (weights are stored as float16 to halve their size).
EMBEDDED_DTYPE_NAME = "float32"

#: Default ``WanPipeline.__call__`` settings per embedded model. ``max_sequence_length`` is the text
#: length the models were trained with (prompts are zero-padded to it): pass it to the pipeline.
_COMMON_DEFAULTS = dict(height=128, width=128, guidance_scale=4.0, negative_prompt="", max_sequence_length=32)
EMBEDDED_DEFAULTS: dict[str, dict] = {
    "shapes-t2v": dict(_COMMON_DEFAULTS, num_frames=17, num_inference_steps=25),
    # for LongVideoPipeline.from_embedded (the video length is the caller's choice)
    "shapes-ar": dict(_COMMON_DEFAULTS, num_inference_steps=20),
}


def embedded_path(name: str) -> Path:
    """Folder of a shipped model (``"shapes-t2v"`` or ``"shapes-ar"``), loadable with
    ``WanPipeline.from_pretrained``.

    Raises:
        ValueError: for an unknown name.
        FileNotFoundError: if the weights are not installed (train them with ``vidaccel train-embedded``).
    """
    if name not in EMBEDDED_NAMES:
        raise ValueError(f"embedded model name={name!r}; allowed: {list(EMBEDDED_NAMES)}")
    folder = EMBEDDED_DIR / name
    if not (folder / "model_index.json").is_file() or not (folder / "transformer").is_dir():
        raise FileNotFoundError(
            f"embedded model {name!r} not found at {folder}: the package was installed without its weights; "
            "reinstall vidaccel, or reproduce them from a source checkout with "
            "`vidaccel train-embedded --out vidaccel/models/embedded`"
        )
    return folder


__all__ = ["EMBEDDED_DEFAULTS", "EMBEDDED_DIR", "EMBEDDED_DTYPE_NAME", "EMBEDDED_NAMES", "embedded_path"]
