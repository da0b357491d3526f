"""Rolling-KV-cache autoregressive long-video generation for block-causal Wan models.

A video is generated chunk by chunk (``chunk_frames`` latent frames each). Every chunk is denoised with
its self-attention reading the keys/values of the visible history from a :class:`~vidaccel.pipelines.long_video.RollingKVCache`
(sink frames + the most recent frames); once clean, the chunk is noised to the model's context level and
passed once more at that timestep to write its own keys/values into the cache (the "commit" pass). Memory
and time per chunk are therefore constant, whatever the length.

``use_kv_cache=False`` is the reference: at every denoising step the visible history latents are fed
through the whole transformer again with a block-causal mask (each frame is noised once, when committed,
so both paths see the same history). With a window covering the whole video and no sink or EMA the two
agree to floating-point precision.

Positions: ``positions="relative"`` (default) gives RoPE positions re-based within sink + window
(sink 0..s-1, then the window in order, the chunk after), the same positions the model saw in training
windows, so the length never runs off the RoPE table; keys are cached before RoPE and rotated on read.
``"absolute"`` uses each frame's index since the start (exact for short videos, drifts outside the trained
range on long ones).

Prompt switches (LongLive, arXiv:2509.22622; Anchor Forcing): at a switch the cached history (sink frames
kept as anchors) is re-encoded under the new prompt before the next chunk, so the new prompt takes hold
through the context instead of a hard cut.

Cached-context attention reuse (FlashBlock): with ``reuse_context_attention=True`` the attention of a
chunk's queries over the cached context is computed at the first denoising step of a chunk and reused at the
later ones (merged with the fresh in-chunk attention through their log-sum-exp), recomputing only the
in-chunk part.

Streaming: frames are decoded chunk by chunk by the causal Wan VAE (its temporal cache kept between chunks)
and appended to the mp4 as they come; on Ctrl-C or SIGTERM the file is closed with every finished chunk.

Modules: ``pipeline.py`` (the loop), ``attention.py`` (KV-cached self-attention), ``kv_cache.py``,
``block_causal.py`` (the mask of the recompute path), ``config.py`` (``causal_config.json``), ``schedule.py``
(prompt schedules). Model-family facts (q/k/v, RoPE tables, VAE factors, streaming decode) come from
:mod:`vidaccel.families`.

Example::

    from vidaccel.pipelines import LongVideoPipeline
    pipe = LongVideoPipeline.from_embedded()                       # the shipped shapes-ar model
    out = pipe([(0, "a red circle moving right on a black background"),
                (4, "a blue square moving up on a gray background")], seconds=8, output="long.mp4")
"""

from .block_causal import apply_block_causal, remove_block_causal
from .config import CausalConfig
from .kv_cache import RollingKVCache
from .pipeline import LongVideoOutput, LongVideoPipeline
from .schedule import parse_schedule

__all__ = ["LongVideoPipeline", "LongVideoOutput", "RollingKVCache", "CausalConfig", "parse_schedule",
           "apply_block_causal", "remove_block_causal"]
