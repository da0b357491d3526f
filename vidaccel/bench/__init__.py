"""Speed-and-fidelity benchmark harness: a baseline and several configurations, one process, interleaved.

Each round runs the baseline and then every configuration (in an order rotated from round to round) on
the same prompt and seed, so slow drift of the machine cancels in the per-pair ratios. For every
configuration it reports

* denoising and end-to-end seconds, and their speed-ups as the **median of per-pair ratios**
  (baseline time / configuration time of the same round, prompt and seed);
* PSNR and SSIM of its frames against the baseline frames of the same prompt and seed;
* the embedded model's prompt-adherence score (when the prompts are in the shapes grammar);
* peak memory (RSS on CPU, ``max_memory_allocated`` on CUDA) and the techniques' stats.

Peers are configurations too: diffusers' ``FirstBlockCacheConfig``, ``MagCacheConfig`` (calibrated on
this very pipeline before timing), ``TaylorSeerCacheConfig`` and cache-dit (when installed).

Configurations are named on the command line (``vidaccel bench --config fast --config fbc:0.1``) or
built in Python with :class:`BenchConfig`.

Modules: ``config.py`` (:class:`BenchConfig`), ``names.py`` (configurations by name), ``peers.py`` (the peer configurations),
``harness.py`` (the interleaved run), ``report.py`` (table, JSON, plot).
"""

from ..memory import peak_memory
from .config import BenchConfig
from .names import bench_configs_from_names, config_help
from .harness import run_benchmark
from .report import BenchReport, pareto_front

__all__ = ["BenchConfig", "BenchReport", "run_benchmark", "bench_configs_from_names", "config_help", "peak_memory",
           "pareto_front"]
