"""Feature caching: skip transformer blocks on denoising steps where their contribution barely changes.

``CacheConfig(policy=...)`` picks how a call decides to skip (all policies share the guards, forecasting,
per-branch state and stats):

``"block"`` (first-block / dual-block caching, as FBCache and cache-dit's DBCache)
    The first ``compute_front`` blocks always run. Their residual (output − input) is compared with the
    one of the last fully computed call; while the relative L1 change stays under ``threshold`` the
    middle blocks are skipped and their cached residual is reused (or forecast). The last
    ``compute_back`` blocks always run.

``"step"`` (calibration-free step-level indicator; TeaCache's signal with EasyCache-style rescaling)
    Watches the timestep-modulated input of the first block. Instead of per-model polynomial
    coefficients (TeaCache, MagCache), the mapping from input change to output change is learned online
    from the run's own computed calls: ``k = Δoutput / ΣΔinput`` between consecutive computed calls. Calls
    are skipped while the accumulated estimate ``Σ k·Δinput`` stays under ``threshold``. Works unchanged on
    a new model or on Wan 2.2's second expert.

``"profiled"`` (ProfilingDiT, "Model Reveals What to Cache", arXiv:2504.03140)
    During the warm-up calls every block runs and the relative change of each block's own residual between
    consecutive calls is measured. The ``cache_ratio`` most stable blocks become cacheable; on a skip
    decision (same indicator as ``"block"``) only they reuse their residuals while the volatile blocks are
    computed.

``"call"`` (whole-call caching: the transformer output itself is cached, as in FORA / Δ-DiT one level up)
    A skipped call runs nothing at all: not the blocks, not the embeddings, not the output head, not the
    hooks. It returns the last computed output (``forecast_order=0``, the default) or its Taylor forecast in
    the step index. The gap to the next computed call is chosen online, with no per-model coefficients: each
    computed call measures the error the skip it ends would have made (relative L1 between the reused /
    forecast output and the real one, over a gap of ``k`` calls), turns it into a per-call rate
    ``r = error / k^(order+1)``, and skips the next ``g − 1`` calls for the largest ``g ≤ interval`` with
    ``r · g^(order+1) ≤ threshold``. ``threshold=inf`` gives a fixed schedule (every ``interval``-th call).
    On the embedded model plain reuse is the robust choice: the output jitters from step to step, so a
    slope extrapolates the jitter, and on two of six prompts any slope (even damped ×0.3) flipped the
    result (PSNR 12-25 dB) where reuse stayed at 34-41 dB.

``cfg_interval`` (sequential CFG, i.e. Wan's separate ``"cond"`` / ``"uncond"`` calls; FasterCache's
CFG-Cache, arXiv:2410.19355) computes the unconditional branch's skippable blocks only on every
``cfg_interval``-th call; in between their residual is the conditional branch's residual of the same step
(computed or forecast a moment earlier) plus the unconditional−conditional difference measured at the last
full unconditional call. The difference moves far more slowly over the steps than either residual does.

``forecast_order`` 1 or 2 replaces plain reuse of a skipped residual by a Taylor forecast in the step index
from the last computed calls (TaylorSeer, arXiv:2503.06923): first or second divided differences of the
skipped span's *output* (forecasting the output, not the residual, measured 6-7 dB better on the embedded
model: the residual inherits the step-to-step jitter of its input).

Guards: the first ``warmup_steps`` calls of every branch and the last ``final_steps`` denoising steps are
always computed, and no more than ``max_consecutive_skips`` calls in a row are skipped.

State is kept per cache context (Wan's ``"cond"`` / ``"uncond"`` calls, CogVideoX's batched
``"cond_uncond"``; a pipeline that opens no context gets one default state instead of diffusers' "No cache
context is set" error), per transformer (each Wan 2.2 expert has its own technique instance), and is reset
at the start of every pipeline call. A bare transformer called in a loop detects a new run when the
timestep goes up.

Host syncs (one ``.item()`` per decision) live in ``@torch.compiler.disable`` helpers, so blocks compiled
with ``model.compile_repeated_blocks()`` break their graph at most once per call.

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    vidaccel.apply(pipe, vidaccel.CacheConfig(threshold=0.08, policy="block", forecast_order=1))
    frames = pipe("a red circle moving right on a black background").frames[0]
    print(vidaccel.stats(pipe)["cache"]["transformer"]["skip_ratio"])
"""

from .config import POLICIES, CacheConfig

__all__ = ["CacheConfig", "POLICIES", "bypass_cache"]


def __getattr__(name):
    if name == "bypass_cache":  # the hooks import diffusers: load them only when asked for
        from .technique import bypass_cache

        return bypass_cache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
