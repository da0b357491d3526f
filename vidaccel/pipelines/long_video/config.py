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
