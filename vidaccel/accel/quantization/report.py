"""``quant_report``: a Markdown table of the last call's mix, bytes and per-layer SQNR."""

from __future__ import annotations

from ...core.technique import stats

__all__ = ["quant_report"]


def quant_report(target) -> str:
    """Markdown report of the last call: per transformer the mix, bytes vs bf16, and per-layer SQNR (dB)."""
    out = []
    for role, s in stats(target).get("quant", {}).items():
        fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        out.append(f"### {role}: {s['format']} ({s['state']}{', loaded' if s['loaded'] else ''})")
        out.append(f"layers: {s['counts']}; weight bytes {s.get('bytes', '—')} vs bf16 {s.get('bf16_bytes', '—')} "
                   f"(÷{fmt(s.get('ratio_vs_bf16'))}); SQNR mean {fmt(s['sqnr_db_mean'])} dB, min "
                   f"{fmt(s['sqnr_db_min'])} dB, by format {s['sqnr_db_mean_by_format']}")
        vol = s.get("volatility") or {}
        out.append("\n| layer | format | SQNR dB | volatility |\n|---|---|---|---|")
        for name, layer in s["layers"].items():
            out.append(f"| {name} | {layer['format']} | {fmt(layer['sqnr_db'])} | {fmt(vol.get(name))} |")
        for name, reason in s["skipped"].items():
            if name not in s["layers"]:
                out.append(f"| {name} | kept ({reason}) | — | — |")
        out.append("")
    return "\n".join(out)

