"""What a tuning session hands back: every tried configuration as a row, the measured front, a Markdown table
and a Pareto plot (speed-up against the budget's quality metric, the chosen configuration marked)."""

from __future__ import annotations

import math
from typing import Sequence

from .budget import Budget
from .search import Search, layered_front

__all__ = ["build_rows", "markdown_table", "plot_front", "front_rows"]

_METRICS = ("speedup", "speedup_e2e", "psnr", "ssim", "adherence", "adherence_drop")


def _pick(m: dict | None) -> dict | None:
    return None if m is None else {k: m.get(k) for k in _METRICS}


def build_rows(search: Search, chosen: str | None) -> list[dict]:
    """One row per tried candidate: metrics at the highest rung it completed, held-out metrics where
    validated, and whether it is on the front, meets the budget, and was chosen."""
    _, pool = search.pool()
    points = {cid: (m["speedup"], search.margin(m)) for cid, m in pool.items()}
    front = set(layered_front(points)[0]) if points else set()
    rows = []
    for entry in search.state.candidates:
        cid = entry["id"]
        cand = search.candidate(cid)
        row = {"id": cid, "label": cand.label, "origin": cand.origin, "configs": entry["key"],
               "error": entry["error"], "rung": None, "search": None, "holdout": None, "meets_budget": None,
               "meets_budget_holdout": None, "front": cid in front, "chosen": cid == chosen}
        if not entry["error"]:
            for rung in reversed(range(len(search.rungs))):
                m = search.metrics(cid, search.cells(rung))
                if m is not None and m["complete"]:
                    row["rung"], row["search"] = rung, _pick(m)
                    row["meets_budget"] = search.budget.met(m)
                    break
            h = search.metrics(cid, search.holdout_cells())
            if h is not None and h["complete"]:
                row["holdout"] = _pick(h)
                row["meets_budget_holdout"] = search.budget.met(h)
        rows.append(row)
    top = len(search.rungs) - 1

    def order(r):
        s = r["search"] or {}
        return (r["error"] is not None, -(r["rung"] if r["rung"] is not None else -1), -(s.get("speedup") or 0.0))

    rows.sort(key=order)
    for r in rows:
        r["top_rung"] = r["rung"] == top
    return rows


def front_rows(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r["front"]]


def _fmt(value, spec: str, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "identical"
    return format(value, spec) + suffix


def markdown_table(rows: Sequence[dict], budget: Budget, rungs: Sequence) -> str:
    """Every tried configuration: search figures (at the highest rung it reached), held-out figures where
    validated; ★ chosen, ◆ on the measured front."""
    head = ("| | configuration | origin | rung (prompts×steps×reps) | speed-up (denoise) | speed-up (e2e) | PSNR dB | "
            "SSIM | adherence drop | meets budget | held-out speed-up | held-out PSNR dB | held-out SSIM | "
            "held-out adherence drop | held-out meets |\n" + "|---" * 15 + "|")
    lines = [head]
    for r in rows:
        mark = "★" if r["chosen"] else ("◆" if r["front"] else "")
        if r["error"]:
            lines.append(f"| | {r['label']} | {r['origin']} | not applicable: {r['error'][:120]} |" + " |" * 11)
            continue
        s, h = r["search"] or {}, r["holdout"] or {}
        rung = "—" if r["rung"] is None else "{}: {}×{}×{}".format(r["rung"], *rungs[r["rung"]][:3])
        yes = {True: "yes", False: "no", None: "—"}
        lines.append(
            f"| {mark} | {r['label']} | {r['origin']} | {rung} | {_fmt(s.get('speedup'), '.2f', '×')} | "
            f"{_fmt(s.get('speedup_e2e'), '.2f', '×')} | {_fmt(s.get('psnr'), '.2f')} | {_fmt(s.get('ssim'), '.4f')} | "
            f"{_fmt(s.get('adherence_drop'), '+.3f')} | {yes[r['meets_budget']]} | {_fmt(h.get('speedup'), '.2f', '×')}"
            f" | {_fmt(h.get('psnr'), '.2f')} | {_fmt(h.get('ssim'), '.4f')} | "
            f"{_fmt(h.get('adherence_drop'), '+.3f')} | {yes[r['meets_budget_holdout']]} |")
    return "\n".join(lines)


def plot_front(rows: Sequence[dict], budget: Budget, path: str, title: str = "") -> None:
    """Speed-up against the budget's first quality metric for every measured configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, field, limit = budget.terms()[0]
    cap = 60.0 if field == "psnr" else None

    def x_of(m):
        v = m.get(field)
        if v is None:
            return None
        return min(v, cap) if cap is not None else v

    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    rungs = sorted({r["rung"] for r in rows if r["rung"] is not None})
    for rung in rungs:
        pts = [(x_of(r["search"]), r["search"]["speedup"]) for r in rows if r["rung"] == rung and r["search"]]
        pts = [p for p in pts if p[0] is not None]
        if pts:
            alpha = 0.35 + 0.65 * (rung + 1) / (max(rungs) + 1)
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, alpha=alpha, label=f"rung {rung}")
    front = sorted(((x_of(r["search"]), r["search"]["speedup"]) for r in rows if r["front"] and r["search"]),
                   key=lambda p: p[0] if p[0] is not None else 0)
    front = [p for p in front if p[0] is not None]
    if front:
        # between two front points the best speed within the budget is the slower point's: the step falls on the
        # left of each point for quality >= x, on the right for a drop <= x
        ax.plot([p[0] for p in front], [p[1] for p in front], c="black", lw=1.0,
                drawstyle="steps-post" if field == "adherence_drop" else "steps-pre", label="measured front")
    for r in rows:
        if r["origin"].startswith("preset") and r["search"] and x_of(r["search"]) is not None:
            ax.annotate(r["origin"].split(" ", 1)[1], (x_of(r["search"]), r["search"]["speedup"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        if r["chosen"] and r["search"]:
            ax.scatter([x_of(r["search"])], [r["search"]["speedup"]], marker="*", s=160, c="tab:red",
                       label="chosen (search prompts)", zorder=5)
            if r["holdout"] and x_of(r["holdout"]) is not None:
                ax.scatter([x_of(r["holdout"])], [r["holdout"]["speedup"]], marker="*", s=160, facecolors="none",
                           edgecolors="tab:red", label="chosen (held-out prompts)", zorder=5)
    ax.axvline(limit, color="tab:red", lw=0.8, ls="--", label=f"budget {key}={limit:g}")
    ax.axhline(1.0, color="gray", lw=0.8)
    unit = {"psnr": "PSNR vs unaccelerated (dB" + (f"; identical drawn at {cap:g})" if cap else ")"),
            "ssim": "SSIM vs unaccelerated", "adherence_drop": "adherence drop (lower is better)"}[field]
    ax.set_xlabel(unit)
    ax.set_ylabel("denoising speed-up (×)")
    ax.set_title(title or f"vidaccel tune: {budget.describe()}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

