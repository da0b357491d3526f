"""Published figures come from one place: benchmarks/results/figures.json (RESULTS.md and the README agree)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _figures_module():
    spec = importlib.util.spec_from_file_location("figures", ROOT / "benchmarks" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_and_readme_agree_with_figures_json():
    assert _figures_module().check() == []


def test_every_section_names_command_machine_and_date():
    data = json.loads((ROOT / "benchmarks" / "results" / "figures.json").read_text())
    for key, section in data["sections"].items():
        assert section["command"].startswith("python "), key
        assert section["machine"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", section["date"]), key
        assert all(len(row) == len(section["columns"]) for row in section["rows"]), key


def test_readme_states_measured_figures_only_through_markers():
    """A speed-up or PSNR written in the README outside a figure marker could drift from RESULTS.md."""
    readme = (ROOT / "README.md").read_text()
    outside = re.sub(r"<!--fig:[^>]*-->.*?<!--/fig-->", "", readme, flags=re.S)
    # thresholds (">= 30 dB") are settings, not measurements
    loose = re.findall(r"(?<![≥≤<>=] )(?<![\d.])(?:\d+(?:\.\d+)?\s*dB|\d+\.\d+×|÷\d)", outside)
    assert loose == []


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    figures = _figures_module()
    data = figures.load()
    name = next(iter(data["figures"]))
    data["figures"][name] = "0.00× at 0.0 dB"
    readme = (ROOT / "README.md").read_text()
    assert figures.render_readme(readme, data) != readme
