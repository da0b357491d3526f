"""``CausalConfig``: the settings of a block-causal Wan model, stored as ``causal_config.json`` beside it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ...core.validation import bad_value, check_int, check_number

__all__ = ["CausalConfig", "CAUSAL_CONFIG_NAME"]

CAUSAL_CONFIG_NAME = "causal_config.json"


@dataclass
class CausalConfig:
    """Settings of a block-causal Wan model (stored as ``causal_config.json`` next to the pipeline).

    Attributes:
        chunk_frames: latent frames per chunk (the first chunk's first latent frame encodes 1 pixel
            frame, every other latent frame 4 pixel frames).
        window_frames: most latent frames the model sees at once (history + the new chunk);
            a multiple of ``chunk_frames``.
        context_noise: flow-matching sigma of the noise added to history latents at generation
            (the model was trained with history sigmas in [0, 0.05]).
        max_sequence_length: text tokens (zero-padded) used at training.
    """

    chunk_frames: int = 2
    window_frames: int = 6
    context_noise: float = 0.02
    max_sequence_length: int = 32

    def __post_init__(self) -> None:
        o = "CausalConfig"
        self.chunk_frames = check_int(o, "chunk_frames", self.chunk_frames, lo=1, hi=2**31 - 1)
        self.window_frames = check_int(o, "window_frames", self.window_frames, lo=2, hi=2**31 - 1)
        if self.window_frames < 2 * self.chunk_frames or self.window_frames % self.chunk_frames:
            raise bad_value(o, "window_frames", self.window_frames,
                            f"it must be a multiple of chunk_frames={self.chunk_frames} that is >= {2 * self.chunk_frames}")
        self.context_noise = check_number(o, "context_noise", self.context_noise, lo=0, hi=1, hi_open=True)
        self.max_sequence_length = check_int(o, "max_sequence_length", self.max_sequence_length, lo=1, hi=2**20)

    @classmethod
    def for_model(cls, model, *, chunk_frames: int = 3, window_frames: int | None = None, context_noise: float = 0.0,
                  max_sequence_length: int = 512) -> "CausalConfig":
        """Settings for chunked generation with a Wan transformer (``WanTransformer3DModel``, or its config as a
        dict / a folder holding ``config.json``: built on the meta device, no weights read).

        Defaults follow the causal Wan checkpoints (Self-Forcing, CausVid): chunks of 3 latent frames, a window
        of 21 latent frames (81 pixel frames, the training length; less when the model's RoPE table is
        shorter), clean context (``context_noise=0``) and Wan's 512 text tokens.

        Raises:
            ValueError: an image-to-video transformer (``in_channels != out_channels``), a model without a
                frame-indexed RoPE table (not Wan), or a window beyond the model's RoPE positions.
        """
        model = _as_model(model)
        from ...families import family_for

        family = family_for(model)
        limit = family.rope_frame_limit(model)
        cfg = model.config
        if cfg.in_channels != cfg.out_channels:
            raise ValueError(f"{type(model).__name__} takes {cfg.in_channels} input channels for {cfg.out_channels} "
                             "output channels: an image-to-video checkpoint; causal configs are for text-to-video "
                             "Wan transformers (Wan2.1-T2V-1.3B / 14B, Wan2.2-TI2V-5B)")
        if window_frames is None:
            window_frames = min(21, limit) // chunk_frames * chunk_frames
        if window_frames > limit:
            raise ValueError(f"CausalConfig.window_frames={window_frames} exceeds the {limit} frame positions of the "
                             "model's RoPE table (rope_max_seq_len)")
        return cls(chunk_frames=chunk_frames, window_frames=window_frames, context_noise=context_noise,
                   max_sequence_length=max_sequence_length)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CAUSAL_CONFIG_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "CausalConfig":
        """Read ``folder/causal_config.json``; ``FileNotFoundError`` without one, ``ValueError`` naming the file when
        it is not a JSON object of :class:`CausalConfig` fields with allowed values."""
        path = Path(folder) / CAUSAL_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {folder} is not a block-causal (shapes-ar) model folder")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path} is not a readable JSON file ({str(e)[:200]})") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path} is not allowed: it must be a JSON object with the fields {sorted(known)}, "
                             f"got {extra}")
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _as_model(model):
    """A transformer, or one built on the meta device from a config dict / a folder holding config.json."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        model = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    if not isinstance(model, dict):
        return model
    import diffusers
    from accelerate import init_empty_weights

    name = model.get("_class_name", "WanTransformer3DModel")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"config names model class {name!r}, which diffusers does not have")
    with init_empty_weights(include_buffers=False):
        return cls.from_config({k: v for k, v in model.items() if not k.startswith("_")})
