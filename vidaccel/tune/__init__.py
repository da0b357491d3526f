"""``vidaccel.tune``: the fastest combination of techniques within a quality budget, on your own prompts.

Thresholds, schedules and combinations that must be tuned per model and per prompt set are what users of
every caching library ask about. :func:`tune` searches them: caching policy and parameters, sliding-window
size / dense steps / dense layers, quantization format and skip list, and the linear-attention layer count when
an adapter exists, alone and combined, and per Wan 2.2 expert. It measures speed as interleaved ratios against
the unaccelerated pipeline in the same process (:mod:`vidaccel.bench`'s harness) and quality against the
unaccelerated frames, spends its time where the Pareto front is (successive halving: one prompt, then two,
then all search prompts timed twice; new brackets around the front), and checks the winner on held-out
prompts the search never saw. It ends with a preset file that ``accel="tuned.json"``,
``vidaccel generate --preset tuned.json`` and ``vidaccel.apply(pipe, "tuned.json")`` load, a Markdown table
of every tried configuration and a Pareto plot.

Example::

    import vidaccel
    pipe = vidaccel.load_pipeline("embedded")
    prompts = ["a red circle moving right on a black background", "a blue square moving up on a gray background",
               "a yellow triangle moving left on a navy background"]
    result = vidaccel.tune(pipe, prompts, budget="psnr=30", time_limit=20 * 60, output="tuned.json")
    print(result.label, result.holdout)
    vidaccel.apply(pipe, "tuned.json")

The command line: ``vidaccel tune embedded --prompt ... --budget psnr=30 --minutes 20 -o tuned.json``.

Modules: ``budget.py`` (:class:`Budget`), ``space.py`` (the search space), ``measure.py`` (runs through the
bench harness), ``search.py`` (successive halving, brackets, validation), ``state.py`` (the resumable JSON
state), ``dist.py`` (several processes), ``report.py`` (table and plot), ``tuner.py`` (:func:`tune`).

This package is itself callable: ``vidaccel.tune(pipe, ...)`` is :func:`vidaccel.tune.tune`.
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["tune", "TuneResult", "Budget", "SearchSpace", "Candidate", "Option"]

_LAZY = {"tune": ".tuner", "TuneResult": ".tuner", "Budget": ".budget", "SearchSpace": ".space",
         "Candidate": ".space", "Option": ".space"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """``vidaccel.tune`` is both this package and the function: calling it calls :func:`tune`."""

    def __call__(self, *args, **kwargs):
        from .tuner import tune

        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
