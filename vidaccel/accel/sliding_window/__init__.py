"""Sliding-tile (local window) self-attention for Wan and CogVideoX, training-free.

Most of a video model's self-attention mass is local in (time, height, width). This technique replaces
the self-attention of every layer except ``dense_layers`` by sliding-tile attention
(:func:`vidaccel.kernels.attention.sliding_tile_attention`; STA, https://arxiv.org/abs/2502.04507): a
query attends to the keys in a window of tiles centred on its own tile, shifted inward at the borders so
every query keeps a full window. The first ``dense_steps`` denoising steps stay dense (as STA and Radial
Attention do): they fix the global layout. Cross-attention is untouched. CogVideoX's text tokens, which
lead the self-attention sequence, stay global (they attend to and are attended by everything).

q/k/v, the q/k norms and RoPE are computed by the attention module's own layers exactly as diffusers'
processor does; only the attention call changes. Layers and steps that stay dense run the original
processor, so they are bit-identical to the baseline.

High-resolution mode (FreeSwim, https://arxiv.org/abs/2511.14712): above the training size, set
``train_grid`` (windows default to it, so every query keeps its training-size receptive field) and
``cross_attn_every=k``: every ``k`` steps a dense branch (a full transformer call with dense
self-attention) runs first and its cross-attention outputs are cached; the windowed branch uses them in
place of its own until the next refresh. Wan only (CogVideoX has no cross-attention).

``vidaccel.stats(pipe)["sliding_window"]`` reports the attention density actually computed: the fraction
of (query, key) pairs over all self-attention calls of the last run (dense calls count as 1).

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    vidaccel.apply(pipe, vidaccel.SlidingWindowConfig(window=(3, 4, 4), tile=(1, 2, 2), dense_steps=2))
    frames = pipe("a red circle moving right on a black background").frames[0]
    print(vidaccel.stats(pipe)["sliding_window"]["transformer"]["density"])
"""

from .config import SlidingWindowConfig

__all__ = ["SlidingWindowConfig"]
