"""``CausalConfig``: the settings of a block-causal Wan model, stored as ``causal_config.json`` beside it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

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
        if self.chunk_frames < 1:
            raise ValueError(f"CausalConfig.chunk_frames={self.chunk_frames}; allowed: >= 1")
        if self.window_frames < 2 * self.chunk_frames or self.window_frames % self.chunk_frames:
            raise ValueError(
                f"CausalConfig.window_frames={self.window_frames}; allowed: a multiple of chunk_frames="
                f"{self.chunk_frames} that is >= {2 * self.chunk_frames}"
            )
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"CausalConfig.context_noise={self.context_noise}; allowed: [0, 1)")

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CAUSAL_CONFIG_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "CausalConfig":
        path = Path(folder) / CAUSAL_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {folder} is not a block-causal (shapes-ar) model folder")
        return cls(**json.loads(path.read_text()))
