"""One source for every published figure: ``benchmarks/results/figures.json``.

Benchmark scripts record their current table there (:func:`record`, with the command, machine and date of the
run); ``benchmarks/RESULTS.md`` is generated from it, and the README quotes its named figures between markers
``<!--fig:NAME-->...<!--/fig-->``. ``tests/test_figures.py`` checks that both agree with the JSON, so a figure
cannot drift between them. History lives in git.

    python benchmarks/figures.py --write     # regenerate RESULTS.md and the README's marked figures
    python benchmarks/figures.py --check     # exit 1 if either disagrees with figures.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "benchmarks" / "results" / "figures.json"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
README = ROOT / "README.md"
MARKER = re.compile(r"<!--fig:([A-Za-z0-9_.\-]+)-->(.*?)<!--/fig-->", re.S)

__all__ = ["load", "record", "render_results", "render_readme", "machine_description"]


def load() -> dict:
    return json.loads(FIGURES.read_text())


def _save(data: dict) -> None:
    FIGURES.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def machine_description() -> str:
    """What this run ran on, for the ``machine`` field of a recorded section."""
    import torch

    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} GPU"
    else:
        device = f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU"
    return f"{device}, torch {torch.__version__}"


def record(section: str, *, title: str, command: str, columns: list[str], rows: list[list], notes: list[str] = (),
           figures: dict[str, str] | None = None, model: str | None = None, machine: str | None = None,
           date: str | None = None) -> None:
    """Replace ``section``'s current table (and its named figures) in figures.json after a benchmark run."""
    data = load()
    data["sections"][section] = {
        "title": title, "command": command, "machine": machine or machine_description(),
        "date": date or _dt.date.today().isoformat(), "model": model, "columns": list(columns),
        "rows": [list(r) for r in rows], "notes": list(notes),
    }
    for name, text in (figures or {}).items():
        data["figures"][f"{section}.{name}"] = text
    _save(data)


def _table(columns: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def render_results(data: dict | None = None) -> str:
    data = data or load()
    lines = ["# vidaccel benchmark results", "", data["preamble"].strip(), ""]
    lines += ["## Contents", ""]
    for key, sec in data["sections"].items():
        lines.append(f"- [{sec['title']}](#{_anchor(sec['title'])})")
    for key, sec in data["sections"].items():
        lines += ["", f"## {sec['title']}", ""]
        meta = [f"Command: `{sec['command']}`", f"machine: {sec['machine']}", f"date: {sec['date']}"]
        if sec.get("model"):
            meta.append(f"model: {sec['model']}")
        lines += ["; ".join(meta) + ".", ""]
        if sec["rows"]:
            lines += _table(sec["columns"], sec["rows"])
        if sec["notes"]:
            lines.append("")
            lines += [f"- {n}" for n in sec["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _anchor(title: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
    return slug


def render_readme(text: str, data: dict | None = None) -> str:
    """``text`` with every ``<!--fig:NAME-->`` marker holding figures.json's current text for NAME."""
    figures = (data or load())["figures"]

    def sub(match):
        name = match.group(1)
        if name not in figures:
            raise KeyError(f"README names figure {name!r}, which benchmarks/results/figures.json does not hold")
        return f"<!--fig:{name}-->{figures[name]}<!--/fig-->"

    return MARKER.sub(sub, text)


def check() -> list[str]:
    """Disagreements between figures.json and RESULTS.md / README.md (empty when they agree)."""
    problems = []
    data = load()
    if RESULTS.read_text() != render_results(data):
        problems.append("benchmarks/RESULTS.md differs from benchmarks/results/figures.json")
    readme = README.read_text()
    try:
        if readme != render_readme(readme, data):
            problems.append("README.md quotes a figure that differs from benchmarks/results/figures.json")
    except KeyError as e:
        problems.append(str(e))
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="regenerate RESULTS.md and the README's figures")
    group.add_argument("--check", action="store_true", help="exit 1 when they disagree with figures.json")
    args = ap.parse_args(argv)
    if args.write:
        RESULTS.write_text(render_results())
        README.write_text(render_readme(README.read_text()))
        print(f"wrote {RESULTS.relative_to(ROOT)} and the figures of {README.relative_to(ROOT)}")
        return 0
    problems = check()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
