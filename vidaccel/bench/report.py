"""The benchmark report: per-configuration rows, Markdown table, JSON and a speed-up-vs-PSNR plot."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Sequence

__all__ = ["BenchReport", "pareto_front", "mean_psnr", "json_safe"]


def json_safe(obj):
    """``obj`` with every non-finite float written as ``"nan"`` / ``"inf"`` / ``"-inf"`` (strict JSON has none),
    through dicts, lists and tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points ``(psnr, speedup)`` not beaten on both axes by another point, sorted by PSNR."""
    front = []
    for p in sorted(points, key=lambda q: (-q[0], -q[1])):
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return sorted(front)


_PSNR_CAP = 100.0


def mean_psnr(values: Sequence[float]) -> float:
    """Mean PSNR over runs; ``inf`` only if every run was identical, else identical runs count as 100 dB."""
    if all(math.isinf(v) for v in values):
        return float("inf")
    return statistics.mean(min(v, _PSNR_CAP) for v in values)


@dataclass
class BenchReport:
    """Results of :func:`run_benchmark`; ``rows[0]`` is the baseline."""

    rows: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    setup: dict = field(default_factory=dict)

    def markdown(self) -> str:
        head = ("| config | kind | denoise s | speed-up (denoise) | speed-up (e2e) | PSNR dB | SSIM | adherence | "
                "peak MiB |\n|---|---|---|---|---|---|---|---|---|")
        lines = [head]
        for r in self.rows:
            def f(key, fmt):
                v = r.get(key)
                return "—" if v is None else ("identical" if key == "psnr" and math.isinf(v) else format(v, fmt))

            lines.append(
                f"| {r['name']} | {r['kind']} | {f('denoise_s', '.3f')} | {f('speedup', '.2f')}× | "
                f"{f('speedup_e2e', '.2f')}× | {f('psnr', '.2f')} | {f('ssim', '.4f')} | {f('adherence', '.3f')} | "
                f"{f('peak_mib', '.0f')} |"
            )
        return "\n".join(lines)

    def save(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)

        with open(os.path.join(out_dir, "bench.json"), "w") as f:
            json.dump(json_safe(asdict(self)), f, indent=2, default=str)
        with open(os.path.join(out_dir, "bench.md"), "w") as f:
            f.write(self.markdown() + "\n")
        self.plot(os.path.join(out_dir, "bench.png"))

    def plot(self, path: str) -> None:
        """Speed-up against PSNR, one marker per configuration, vidaccel and peers in different colours."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        finite = [r["psnr"] for r in self.rows[1:] if r.get("psnr") is not None and math.isfinite(r["psnr"])]
        cap = (max(finite) + 5) if finite else 60.0
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for kind, colour in (("vidaccel", "tab:blue"), ("peer", "tab:orange")):
            pts = [(min(r["psnr"], cap), r["speedup"], r["name"]) for r in self.rows[1:] if r["kind"] == kind]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=colour, label=kind, s=18)
                for x, y, label in pts:
                    ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
                front = pareto_front([(x, y) for x, y, _ in pts])
                ax.plot([p[0] for p in front], [p[1] for p in front], c=colour, lw=1.2, drawstyle="steps-post")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xlabel(f"PSNR vs baseline (dB; identical drawn at {cap:.0f})")
        ax.set_ylabel("denoising speed-up (×)")
        ax.set_title(self.setup.get("title", "speed-up vs fidelity"))
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
