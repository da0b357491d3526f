"""Benchmark configurations by name, as ``vidaccel bench --config NAME`` gives them: presets and peers."""

from __future__ import annotations

from typing import Sequence

from .config import BenchConfig
from .peers import PEERS

__all__ = ["bench_configs_from_names", "config_help"]


def config_help() -> list[str]:
    from ..accel import available_presets

    return [f"presets: {', '.join(available_presets())}"] + [text for _, _, text in PEERS.values()]


def bench_configs_from_names(names: Sequence[str]) -> list[BenchConfig]:
    """``"fast"`` → vidaccel preset; ``"tuned.json"`` → a preset file; ``"fbc:0.1"`` → a peer. ``"none"`` (the
    baseline) is skipped."""
    from ..accel import available_presets

    out: list[BenchConfig] = []
    for name in names:
        head, _, arg = name.partition(":")
        if name == "none":
            continue
        if name.lower().endswith(".json"):  # a preset file written by `vidaccel tune`
            from ..accel import resolve_accel

            out.append(BenchConfig.from_configs(name, *resolve_accel(name)))
        elif name in available_presets():
            out.append(BenchConfig.from_configs(name, name))
        elif head in PEERS:
            factory, typ, _ = PEERS[head]
            try:
                out.append(factory(typ(arg)) if arg else factory())
            except ValueError as e:
                raise ValueError(f"--config={name!r}: {e}") from None
        else:
            raise ValueError(f"--config={name!r} is not known; allowed: {'; '.join(config_help())}")
    labels = [c.name for c in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--config names must be distinct, got {labels}")
    return out
