"""What ``vidaccel tune`` searches: per technique, kinds of settings on grids of values.

A technique's settings come in *kinds* (caching: a fixed whole-call schedule, an adaptive one, block caching,
step caching, CFG caching), each a small grid: named axes with ordered values. An :class:`Option` is one point
of one kind; its neighbours are the points one step away on one axis. A :class:`Candidate` holds at most one
option per technique for every transformer role (Wan 2.2's experts may hold different ones).

The grids are sized from the pipeline call (steps, token grid, layer count, CFG style), never from the model
family's name:

* caching — ``"call"``: every ``interval``-th call after ``warmup`` calls, ``final`` last steps computed;
  ``"call-growing"``: the same with gaps that start at ``interval`` and grow by ``growth`` after each computed
  call (``CacheConfig.interval_growth``; the growths scale with the step count); ``"call-adaptive"``: gaps
  chosen from the measured output error (``threshold``), up to ``interval``;
  ``"block"`` / ``"step"``: first-block and step-level indicators with a threshold (Taylor forecast on or off);
  ``"block-cfg"`` (sequential CFG with guidance only): the unconditional branch refreshed every ``cfg`` calls;
* sliding window — window ``(t, h, w)`` as fractions of the token grid, dense first steps, dense layers;
* quantization — FP8 (W8A8 or weight-only) or NVFP4 (fragile layers in FP8 or not, text embedding quantized
  or not), each with the first and last block kept in high precision or not;
* linear attention — with an adapter only: how many of its layers to swap (least sensitive first).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..accel import CacheConfig, LinearAttentionConfig, QuantConfig, SlidingWindowConfig
from ..core.preset_file import RoleConfigs, config_to_json, configs_from_json, configs_to_json

__all__ = ["TECHNIQUES", "Option", "Candidate", "SpaceContext", "SearchSpace"]

#: Technique names, in the order a candidate applies them (caching last: it wraps whole calls).
TECHNIQUES = ("linear_attention", "sliding_window", "quant", "cache")
#: Techniques that both replace the self-attention computation, so never go together.
_EXCLUSIVE = {"linear_attention", "sliding_window"}


@dataclass(frozen=True)
class Option:
    """One setting of one technique: ``kind`` and ``params`` locate it on the space's grid (``kind="fixed"``
    for a config that is not on a grid, e.g. a preset's)."""

    technique: str
    kind: str
    params: tuple[tuple[str, Any], ...]
    config: Any = field(compare=False, hash=False)
    label: str = field(compare=False, hash=False)

    def to_json(self) -> dict:
        out = {"technique": self.technique, "kind": self.kind, "params": dict(self.params)}
        if self.kind == "fixed":
            out["config"] = config_to_json(self.config)
            out["label"] = self.label
        return out


@dataclass(frozen=True)
class Candidate:
    """Options per transformer role, ``((role, (option, ...)), ...)`` in the pipeline's role order."""

    options: tuple[tuple[str, tuple[Option, ...]], ...]
    origin: str = field(default="", compare=False, hash=False)

    @classmethod
    def shared(cls, roles: Sequence[str], options: Sequence[Option], origin: str = "") -> "Candidate":
        opts = tuple(sorted(options, key=lambda o: TECHNIQUES.index(o.technique)))
        return cls(tuple((r, opts) for r in roles), origin)

    @property
    def is_shared(self) -> bool:
        return len({opts for _, opts in self.options}) <= 1

    @property
    def is_baseline(self) -> bool:
        return all(not opts for _, opts in self.options)

    def role_options(self, role: str) -> tuple[Option, ...]:
        return dict(self.options)[role]

    def configs(self) -> list | RoleConfigs:
        """The configs to apply: a list when every role has the same options, else :class:`RoleConfigs`."""
        if self.is_shared:
            return [o.config for o in self.options[0][1]] if self.options else []
        return RoleConfigs({role: [o.config for o in opts] for role, opts in self.options})

    @property
    def key(self) -> str:
        return json.dumps(configs_to_json(self.configs()), sort_keys=True, separators=(",", ":"))

    @property
    def label(self) -> str:
        def text(opts):
            return " + ".join(o.label for o in opts) or "none"

        if self.is_shared:
            return text(self.options[0][1]) if self.options else "none"
        return "; ".join(f"{role}: {text(opts)}" for role, opts in self.options)

    def techniques(self) -> set[str]:
        return {o.technique for _, opts in self.options for o in opts}

    def with_option(self, option: Option, roles: Sequence[str] | None = None, origin: str = "") -> "Candidate | None":
        """This candidate with ``option`` replacing its option of the same technique (on ``roles``; default all);
        ``None`` when the result mixes exclusive techniques."""
        out = []
        for role, opts in self.options:
            if roles is None or role in roles:
                kept = [o for o in opts if o.technique != option.technique]
                if option.technique in _EXCLUSIVE and any(o.technique in _EXCLUSIVE for o in kept):
                    return None
                opts = tuple(sorted(kept + [option], key=lambda o: TECHNIQUES.index(o.technique)))
            out.append((role, opts))
        return Candidate(tuple(out), origin)

    def to_json(self) -> dict:
        return {"origin": self.origin, "roles": {role: [o.to_json() for o in opts] for role, opts in self.options}}


@dataclass
class SpaceContext:
    """What the grids are sized from.

    Attributes:
        roles: transformer roles of the pipeline (``("transformer",)`` or both Wan 2.2 experts).
        steps: denoising steps of the full-fidelity runs.
        num_layers: blocks per role.
        grid: video-token grid ``(T, H, W)`` of one call, or ``None`` when unknown (no sliding window then).
        blocks_attr: the attribute holding the blocks (for quantization skip patterns).
        fragile: ``(kind, pattern)`` of the family's fragile layers.
        sequential_cfg: the pipeline runs CFG as separate calls and guidance is on.
        adapter: a linear-attention adapter path, or ``None``.
        adapter_layers: layers of the adapter (the fewest over its roles).
    """

    roles: tuple[str, ...]
    steps: int
    num_layers: dict[str, int]
    grid: tuple[int, int, int] | None
    blocks_attr: str
    fragile: tuple[tuple[str, str], ...]
    sequential_cfg: bool
    adapter: str | None = None
    adapter_layers: int = 0


@dataclass
class _Kind:
    technique: str
    name: str
    axes: dict[str, tuple]
    make: Callable[[dict], Any]
    label: Callable[[dict], str]
    broad: list[dict]


def _g(x: float) -> str:
    return f"{x:g}"


class SearchSpace:
    """The grids of the selected ``techniques`` for the pipeline described by ``ctx``."""

    def __init__(self, ctx: SpaceContext, techniques: Sequence[str]):
        self.ctx = ctx
        self.techniques = tuple(t for t in TECHNIQUES if t in techniques)
        self.kinds: dict[tuple[str, str], _Kind] = {}
        builders = {"cache": self._cache, "sliding_window": self._sliding_window, "quant": self._quant,
                    "linear_attention": self._linear_attention}
        for technique in self.techniques:
            for kind in builders[technique]():
                self.kinds[(technique, kind.name)] = kind

    # -- the grids ----------------------------------------------------------------------------------------
    def _cache(self) -> list[_Kind]:
        calls = self.ctx.steps * (2 if self.ctx.sequential_cfg else 1)  # transformer calls of one run
        intervals = tuple(i for i in (2, 3, 4, 5, 6, 7, 8) if i <= max(2, calls // 2))
        # gap growth per computed call: 1, 2, 3 steps at 25 steps, in proportion to the run length (halves)
        growths = tuple(sorted({max(0.5, round(g * self.ctx.steps / 25 * 2) / 2) for g in (1, 2, 3)}))
        kinds = [
            _Kind("cache", "call", {"interval": intervals, "warmup": (2, 3, 4), "final": (0, 1)},
                  lambda p: CacheConfig(threshold=math.inf, policy="call", interval=p["interval"],
                                        warmup_steps=p["warmup"], final_steps=p["final"]),
                  lambda p: f"cache call/{p['interval']} w{p['warmup']} f{p['final']}",
                  [{"interval": i, "warmup": 3, "final": 0} for i in intervals]),
            _Kind("cache", "call-growing", {"interval": tuple(i for i in (2, 3, 4) if i in intervals),
                                            "warmup": (2, 3, 4), "growth": growths},
                  lambda p: CacheConfig(threshold=math.inf, policy="call", interval=p["interval"],
                                        warmup_steps=p["warmup"], final_steps=0, interval_growth=p["growth"]),
                  lambda p: f"cache call/{p['interval']} grow {_g(p['growth'])} w{p['warmup']}",
                  [{"interval": 2, "warmup": 3, "growth": growths[len(growths) // 2]},
                   {"interval": 3, "warmup": 3, "growth": growths[0]}]),
            _Kind("cache", "call-adaptive", {"threshold": (0.02, 0.03, 0.05, 0.08, 0.12, 0.2), "interval": (4, 6, 8)},
                  lambda p: CacheConfig(threshold=p["threshold"], policy="call", interval=p["interval"],
                                        warmup_steps=3, final_steps=0),
                  lambda p: f"cache call-adaptive {_g(p['threshold'])}/{p['interval']}",
                  [{"threshold": 0.05, "interval": 8}, {"threshold": 0.12, "interval": 8}]),
            _Kind("cache", "block", {"threshold": (0.05, 0.1, 0.15, 0.2, 0.3, 0.45), "forecast": (0, 1)},
                  lambda p: CacheConfig(threshold=p["threshold"], policy="block", forecast_order=p["forecast"],
                                        max_consecutive_skips=5 if p["forecast"] else 3),
                  lambda p: f"cache block {_g(p['threshold'])}" + (" taylor1" if p["forecast"] else ""),
                  [{"threshold": t, "forecast": 1} for t in (0.1, 0.2, 0.3)]),
            _Kind("cache", "step", {"threshold": (0.05, 0.1, 0.2, 0.3, 0.5)},
                  lambda p: CacheConfig(threshold=p["threshold"], policy="step", forecast_order=1,
                                        max_consecutive_skips=5),
                  lambda p: f"cache step {_g(p['threshold'])} taylor1",
                  [{"threshold": 0.1}, {"threshold": 0.3}]),
        ]
        if self.ctx.sequential_cfg:
            kinds.append(_Kind("cache", "block-cfg", {"threshold": (0.05, 0.1, 0.15, 0.3), "cfg": (2, 3, 4)},
                               lambda p: CacheConfig(threshold=p["threshold"], policy="block", cfg_interval=p["cfg"]),
                               lambda p: f"cache block {_g(p['threshold'])} cfg/{p['cfg']}",
                               [{"threshold": 0.1, "cfg": 3}]))
        return kinds

    def _sliding_window(self) -> list[_Kind]:
        if self.ctx.grid is None:
            return []
        t, h, w = self.ctx.grid
        steps, layers = self.ctx.steps, min(self.ctx.num_layers.values())

        def sizes(n, fractions):
            return tuple(sorted({max(1, math.ceil(n * f)) for f in fractions}))

        wt, wh, ww = sizes(t, (1 / 3, 1 / 2, 1)), sizes(h, (1 / 4, 1 / 2, 1)), sizes(w, (1 / 4, 1 / 2, 1))
        if (len(wt), len(wh), len(ww)) == (1, 1, 1):
            return []  # a one-token grid: every window is the whole grid
        small = t < 8 or h < 16 or w < 16
        tile = (1, max(1, h // 4), max(1, w // 4)) if small else None
        dense_steps = tuple(sorted({0, round(steps * 0.2), round(steps * 0.4)}))
        dense_layers = ((), (0,), (0, layers - 1)) if layers > 2 else ((), (0,))

        def make(p):
            window = (p["t"], p["h"], p["w"])
            if window == (t, h, w):
                raise ValueError("the window covers the whole grid (dense attention)")
            return SlidingWindowConfig(window=window, tile=tile, dense_steps=p["dense_steps"],
                                       dense_layers=p["dense_layers"])

        def label(p):
            text = f"window {p['t']}x{p['h']}x{p['w']} dense-steps {p['dense_steps']}"
            return text + (f" dense-layers {','.join(map(str, p['dense_layers']))}" if p["dense_layers"] else "")

        mid = dense_steps[1] if len(dense_steps) > 1 else 0
        broad = [{"t": wt[len(wt) // 2], "h": wh[-1], "w": ww[-1], "dense_steps": mid, "dense_layers": ()},
                 {"t": wt[-1], "h": wh[len(wh) // 2], "w": ww[len(ww) // 2], "dense_steps": mid, "dense_layers": ()}]
        return [_Kind("sliding_window", "window", {"t": wt, "h": wh, "w": ww, "dense_steps": dense_steps,
                                                   "dense_layers": dense_layers}, make, label, broad)]

    def _quant(self) -> list[_Kind]:
        layers = min(self.ctx.num_layers.values())
        ends = [rf"^{self.ctx.blocks_attr}\.0\.", rf"^{self.ctx.blocks_attr}\.{layers - 1}\."]

        def skip(p, text_quantized=False):
            if not p["ends"]:
                return None
            return [pat for kind, pat in self.ctx.fragile if not (text_quantized and kind == "text")] + ends

        # measure_sqnr="off": the per-layer SQNR check costs a GEMM per layer on every call, a diagnostic the
        # tuned configuration does not need (the tuner measures quality on the outputs)
        def fp8(p):
            return QuantConfig(format="fp8", activations=p["activations"], skip=skip(p), measure_sqnr="off")

        def nvfp4(p):
            s = skip(p, p["text"])
            return QuantConfig(format="nvfp4", skip=s, skip_format=p["skip_format"], measure_sqnr="off",
                               quantize_fragile=("text",) if p["text"] and s is None else ())

        return [
            _Kind("quant", "fp8", {"activations": ("dynamic", "none"), "ends": (False, True)}, fp8,
                  lambda p: "fp8 " + ("W8A8" if p["activations"] == "dynamic" else "W8A16")
                  + (" ends-hp" if p["ends"] else ""),
                  [{"activations": "dynamic", "ends": False}]),
            _Kind("quant", "nvfp4", {"skip_format": ("none", "fp8"), "text": (False, True), "ends": (False, True)},
                  nvfp4,
                  lambda p: "nvfp4" + (" fragile-fp8" if p["skip_format"] == "fp8" else "")
                  + (" text-4bit" if p["text"] else "") + (" ends-hp" if p["ends"] else ""),
                  [{"skip_format": "none", "text": False, "ends": False},
                   {"skip_format": "fp8", "text": True, "ends": False}]),
        ]

    def _linear_attention(self) -> list[_Kind]:
        n = self.ctx.adapter_layers
        if not self.ctx.adapter or n < 1:
            return []
        adapter = self.ctx.adapter
        return [_Kind("linear_attention", "adapter", {"num_layers": tuple(range(1, n + 1))},
                      lambda p: LinearAttentionConfig(adapter=adapter, num_layers=p["num_layers"]),
                      lambda p: f"linear-attention {p['num_layers']} layer" + ("s" if p["num_layers"] != 1 else ""),
                      [{"num_layers": n}] + ([{"num_layers": math.ceil(n / 2)}] if n > 1 else []))]

    # -- options --------------------------------------------------------------------------------------------
    def option(self, technique: str, kind: str, params: dict) -> Option:
        """The option at ``params`` of ``kind``; ``ValueError`` when it is not a valid point."""
        spec = self.kinds.get((technique, kind))
        if spec is None:
            raise ValueError(f"{technique} kind {kind!r} is not in this search space")
        p = {k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items()}
        if set(p) != set(spec.axes) or any(p[a] not in spec.axes[a] for a in spec.axes):
            raise ValueError(f"{technique} {kind} params {params!r} are not on the grid {spec.axes!r}")
        return Option(technique, kind, tuple((a, p[a]) for a in spec.axes), spec.make(p), spec.label(p))

    def fixed(self, config: Any, technique: str, label: str) -> Option:
        return Option(technique, "fixed", (("config", json.dumps(config_to_json(config), sort_keys=True)),),
                      config, label)

    def from_config(self, config: Any, technique: str, label: str) -> Option:
        """The grid option whose config equals ``config``, or a fixed option holding it."""
        for (tech, _), spec in self.kinds.items():
            if tech != technique:
                continue
            for point in self._points(spec):
                opt = self._try(spec, point)
                if opt is not None and opt.config == config:
                    return opt
        return self.fixed(config, technique, label)

    def _points(self, spec: _Kind):
        import itertools

        names = list(spec.axes)
        for values in itertools.product(*(spec.axes[n] for n in names)):
            yield dict(zip(names, values))

    def _try(self, spec: _Kind, point: dict) -> Option | None:
        try:
            return self.option(spec.technique, spec.name, point)
        except ValueError:
            return None

    def broad(self) -> list[Option]:
        """The first bracket's options, alternating between techniques."""
        per_technique: dict[str, list[Option]] = {}
        for spec in self.kinds.values():
            for point in spec.broad:
                opt = self._try(spec, point)
                if opt is not None:
                    per_technique.setdefault(spec.technique, []).append(opt)
        out: list[Option] = []
        while any(per_technique.values()):
            for technique in self.techniques:
                if per_technique.get(technique):
                    out.append(per_technique[technique].pop(0))
        return out

    def neighbours(self, option: Option) -> list[Option]:
        """Options one grid step away from ``option`` on one axis (none for a fixed option)."""
        spec = self.kinds.get((option.technique, option.kind))
        if spec is None:
            return []
        params = dict(option.params)
        out = []
        for axis, values in spec.axes.items():
            i = values.index(params[axis])
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    opt = self._try(spec, {**params, axis: values[j]})
                    if opt is not None:
                        out.append(opt)
        return out

    # -- candidates to / from JSON --------------------------------------------------------------------------
    def option_from_json(self, obj: dict) -> Option:
        if obj["kind"] == "fixed":
            configs = configs_from_json([obj["config"]], "option.config")
            return self.fixed(configs[0], obj["technique"], obj.get("label") or obj["technique"])
        return self.option(obj["technique"], obj["kind"], obj["params"])

    def candidate_from_json(self, obj: dict) -> Candidate:
        roles = tuple((role, tuple(self.option_from_json(o) for o in opts)) for role, opts in obj["roles"].items())
        return Candidate(roles, obj.get("origin", ""))
