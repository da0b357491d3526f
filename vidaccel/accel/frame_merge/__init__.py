"""Dynamic latent frame rate (VGDFR) for Wan and CogVideoX, training-free: fewer frames through the transformer
where the video barely moves.

VGDFR (https://arxiv.org/abs/2504.12259) observes that low-motion stretches of a video need fewer latent frames
than high-motion ones. This technique runs the first ``merge_at`` of the denoising steps at full rate, measures
on the last of them how far apart adjacent token frames are (the relative L1 distance between their predicted
clean latents), and groups consecutive frames closer than ``threshold`` (at most ``max_group`` per group). Until
``split_at`` of the steps, each transformer call sees one frame per group: its *anchor* (the middle frame),
a real noisy sample at the step's noise level, kept at its own temporal position (the family moves RoPE, or the
added position embeddings, to the anchors' places in the full grid). The model's output is split back to every
frame so that all frames of a group share the anchor's predicted clean latent while each keeps its own noise:
``out_i = out_anchor + gain · (x_t,i − x_t,anchor)``, with ``gain`` = ∂out/∂x_t at a fixed clean latent (``1/σ``
for flow matching). The pipeline's latents keep their full frame count throughout, so every scheduler, the VAE
and other techniques see an ordinary run; from ``split_at`` on, every frame is denoised on its own again and
refines the shared content.

Cost: a merged call runs ``groups / frames`` of the tokens (attention, quadratic in them, shrinks faster). Wan 2.1
/ 2.2 (both experts follow one plan) and CogVideoX (rotary 5B / 1.5, and 2B's sin-cos embeddings; not the 5B-I2V's
learned ones) are supported; a bare transformer is not (the scheduler gives each step's noise level).

Composition: with caching, the cache sees the merged calls (it forgets its stored tensors when the latent's
shape changes); sliding windows and quantized attention act on the merged token grid.

``vidaccel.stats(pipe)["frame_merge"]`` gives the groups, the merged steps, merged / full calls and the
measured adjacent-frame motion.

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    vidaccel.apply(pipe, vidaccel.FrameMergeConfig(threshold=0.35, max_group=2))    # or accel="frame-merge"
    frames = pipe("a red circle moving right on a black background", num_frames=65).frames[0]
    print(vidaccel.stats(pipe)["frame_merge"]["transformer"]["groups"])
"""

from .config import FrameMergeConfig

__all__ = ["FrameMergeConfig"]
