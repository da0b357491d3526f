"""``vidaccel.tune``: the fastest combination of techniques that keeps a stated quality budget on your prompts."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from .budget import Budget, adherence_available, check_budget_checkable
from .dist import Comm
from .measure import Runner
from .report import build_rows, front_rows, markdown_table, plot_front
from .search import Search, default_rungs
from .space import TECHNIQUES, Candidate, SearchSpace, SpaceContext
from .state import TuneState

logger = logging.getLogger(__name__)

__all__ = ["tune", "TuneResult"]


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        configs: the chosen configs (a list, or :class:`~vidaccel.accel.RoleConfigs` when the Wan 2.2 experts
            differ); ``[]`` when nothing met the budget on the held-out prompts.
        label: a short description of ``configs``.
        search: the chosen configuration's figures on the search prompts (``speedup``, ``speedup_e2e``,
            ``psnr``, ``ssim``, ``adherence``, ``adherence_drop``), or ``None``.
        holdout: the same on the held-out prompts, or ``None``.
        rows: every tried configuration (see :func:`vidaccel.tune.report.build_rows`).
        budget: the budget.
        files: paths written (``preset``, ``table``, ``plot``, ``state``).
    """

    configs: Any
    label: str
    search: dict | None
    holdout: dict | None
    rows: list[dict]
    budget: Budget
    setup: dict
    files: dict = field(default_factory=dict)
    markdown: str = ""

    @property
    def front(self) -> list[dict]:
        return front_rows(self.rows)


class _Progress:
    """A tqdm bar over the time limit: what is being tried, the best so far, the time left."""

    def __init__(self, time_limit: float, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=round(time_limit), unit="s", desc="tune", disable=not enabled,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}s{postfix}")

    def show(self, search: Search) -> None:
        elapsed = search.elapsed()
        best = search.best()
        best_text = "none yet" if best is None else \
            f"{search.candidate(best[0]).label} {best[1]['speedup']:.2f}x {best[1]['psnr']:.1f}dB"
        left = max(0.0, search.time_limit - elapsed)
        self.bar.n = min(round(elapsed), self.bar.total)
        self.bar.set_postfix_str(f"trying {search.trying[:60]} | best {best_text[:70]} | left "
                                 f"{int(left // 60)}:{int(left % 60):02d}", refresh=True)

    def close(self):
        self.bar.close()


def _call_default(pipe, name: str):
    try:
        p = inspect.signature(pipe.__call__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _jsonable(kwargs: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else f"<{type(v).__name__}>")
            for k, v in sorted(kwargs.items())}


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("vidaccel", "torch", "diffusers", "transformers", "triton", "torchao"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _device(pipe, world_size: int) -> dict:
    import torch

    from ..families import pipeline_transformers

    dev = next(pipeline_transformers(pipe)[0][1].parameters()).device
    out = {"type": dev.type, "torch_threads": torch.get_num_threads(), "world_size": world_size,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if dev.type == "cuda":
        out["name"] = torch.cuda.get_device_name(dev)
    return out


def _check_inputs(prompts, holdout, seeds, time_limit, techniques, adapter, low_steps, output, eta, batch_size,
                  max_candidates) -> tuple[list[str], list[str], list[int], tuple[str, ...]]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts={prompts!r} is not allowed: give a non-empty list of prompts")
    prompts = list(prompts)
    if holdout is not None:
        if isinstance(holdout, str) or not isinstance(holdout, Sequence) or not holdout:
            raise ValueError(f"holdout={holdout!r} is not allowed: give a non-empty list of prompts or None")
        search, held = prompts, list(holdout)
    else:
        if len(prompts) < 2:
            raise ValueError(f"prompts has {len(prompts)} prompt: tuning needs at least 2 (quality is checked on "
                             "held-out prompts the search does not see), or give holdout=[...]")
        n = max(1, len(prompts) // 3)
        search, held = prompts[:-n], prompts[-n:]
    everything = search + held
    if not all(isinstance(p, str) and p.strip() for p in everything):
        raise ValueError(f"prompts must be non-empty strings, got {everything!r}")
    if len(set(everything)) != len(everything):
        dup = sorted({p for p in everything if everything.count(p) > 1})
        raise ValueError(f"prompts must be distinct (search and held-out together); repeated: {dup}")
    if isinstance(seeds, int) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                       for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r} is not allowed: give a list of distinct integers >= 0")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0 \
            or not math.isfinite(time_limit):
        raise ValueError(f"time_limit={time_limit!r} is not allowed: it must be a number of seconds > 0")
    if techniques is None:
        techniques = tuple(t for t in TECHNIQUES if t != "linear_attention" or adapter is not None)
    else:
        if isinstance(techniques, str):
            techniques = [t.strip() for t in techniques.split(",") if t.strip()]
        bad = [t for t in techniques if t not in TECHNIQUES]
        if bad or not techniques:
            raise ValueError(f"techniques={list(techniques)!r} is not allowed; choose among {', '.join(TECHNIQUES)}")
        if "linear_attention" in techniques and adapter is None:
            raise ValueError("techniques includes 'linear_attention', which needs adapter= (a linear-attention "
                             "adapter written by vidaccel.linearize / `vidaccel linearize`): untrained linear "
                             "attention does not keep quality")
        techniques = tuple(t for t in TECHNIQUES if t in techniques)
    if low_steps is not None and (isinstance(low_steps, bool) or not isinstance(low_steps, int) or low_steps < 1):
        raise ValueError(f"low_steps={low_steps!r} is not allowed: it must be an integer >= 1 or None")
    if output is not None and not os.fspath(output).lower().endswith(".json"):
        raise ValueError(f"output={os.fspath(output)!r} is not allowed: the preset file name must end in .json")
    if not isinstance(eta, int) or eta < 2:
        raise ValueError(f"eta={eta!r} is not allowed: it must be an integer >= 2")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed: it must be an integer >= 1")
    if max_candidates is not None and (not isinstance(max_candidates, int) or max_candidates < 1):
        raise ValueError(f"max_candidates={max_candidates!r} is not allowed: it must be an integer >= 1 or None")
    return search, held, list(seeds), techniques


def _preset_candidates(space: SearchSpace, roles: Sequence[str], techniques: Sequence[str]) -> list:
    from ..accel import available_presets, preset_configs
    from ..core.technique import technique_for

    out = []
    for name in available_presets():
        configs = preset_configs(name)
        if not configs:
            continue
        names = [technique_for(c).name for c in configs]
        if not all(n in techniques for n in names):
            continue
        options = [space.from_config(c, n, f"preset {name}") for c, n in zip(configs, names)]
        out.append((name, Candidate.shared(roles, options, origin=f"preset {name}")))
    return out


def tune(pipe, prompts: Sequence[str], *, budget: Any, time_limit: float = 1200.0,
         techniques: Sequence[str] | str | None = None, holdout: Sequence[str] | None = None,
         seeds: Sequence[int] = (0,), call_kwargs: dict | None = None, output: str | os.PathLike | None = "tuned.json",
         state_path: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None,
         low_steps: int | None = None, presets: bool = True, max_candidates: int | None = None,
         max_brackets: int | None = None, eta: int = 3, batch_size: int = 4, max_validations: int = 3,
         progress: bool = True) -> TuneResult:
    """Search the fastest combination of techniques whose outputs stay within ``budget`` of the unaccelerated
    pipeline, on your prompts, within ``time_limit`` seconds.

    Speed is the median of interleaved per-pair denoising-time ratios against the unaccelerated pipeline in
    this process (``vidaccel bench``'s harness); quality is PSNR / SSIM / adherence against the unaccelerated
    frames of the same prompt and seed. The search spends its time by successive halving (one prompt first,
    then more, then all search prompts timed twice); the fastest configurations that meet the budget are then
    checked on held-out prompts the search never saw, and the first that meets it there is chosen. See
    :mod:`vidaccel.tune` for the search and the files.

    Args:
        pipe: a Wan / CogVideoX pipeline with nothing applied (it is the baseline).
        prompts: your prompts. Without ``holdout``, the last third (at least one) are held out.
        budget: ``"psnr=30"``, ``"ssim=0.95"``, ``"adherence-drop=0.02"`` (several joined by commas), a dict
            or a :class:`~vidaccel.tune.Budget`. Adherence needs the embedded shapes model and its grammar.
        time_limit: seconds for the whole session (search and validation; a resumed session counts the time
            already spent).
        techniques: among ``"cache"``, ``"sliding_window"``, ``"quant"``, ``"linear_attention"`` (default:
            all; linear attention only with ``adapter``).
        holdout: held-out prompts (default: taken from ``prompts``).
        seeds: seeds every prompt runs with.
        call_kwargs: pipeline call arguments (size, steps, guidance...); default: the model's defaults.
        output: the preset file to write (``.json``; the table ``.md``, the plot ``.png`` and the state
            ``.state.json`` go beside it), or ``None`` to write nothing.
        state_path: the state file (default: beside ``output``). If it exists with the same setup, the session
            resumes from it; with another setup, ``ValueError``.
        adapter: a linear-attention adapter; its layer count is searched.
        low_steps: steps of the first rung's runs (default: the full steps; fewer make the first cut cheaper
            but rank caching schedules less faithfully).
        presets: start from every built-in preset (so the result is never slower than the best preset that
            meets the budget on the search prompts, up to timing noise).
        max_candidates: cap on the candidates of one bracket.
        max_brackets: cap on the brackets (default: as many as the time allows).
        eta: successive-halving factor (a rung keeps ``1/eta`` of its candidates).
        batch_size: candidates per interleaved batch (each batch times the baseline once per prompt and seed).
        max_validations: most candidates checked on the held-out prompts.
        progress: show a progress bar.

    Returns:
        :class:`TuneResult`; ``vidaccel.apply(pipe, result.configs)`` or ``vidaccel.apply(pipe, "tuned.json")``
        applies the choice.

    Raises:
        ValueError: a bad argument, a budget this model cannot be held to, or a state file of another setup;
            all before any pipeline call.

    Example::

        pipe = vidaccel.load_pipeline("embedded")
        result = vidaccel.tune(pipe, prompts, budget="psnr=30", time_limit=20 * 60, output="tuned.json")
        pipe = vidaccel.load_pipeline("embedded", accel="tuned.json")
    """
    from .. import api
    from ..families import family_for, pipeline_transformers

    budget = Budget.parse(budget)
    search_prompts, held, seeds, techniques = _check_inputs(
        prompts, holdout, seeds, time_limit, techniques, adapter, low_steps, output, eta, batch_size, max_candidates)
    if not isinstance(max_validations, int) or max_validations < 1:
        raise ValueError(f"max_validations={max_validations!r} is not allowed: it must be an integer >= 1")
    if max_brackets is not None and (not isinstance(max_brackets, int) or max_brackets < 1):
        raise ValueError(f"max_brackets={max_brackets!r} is not allowed: it must be an integer >= 1 or None")
    models = pipeline_transformers(pipe)
    if api.applied(pipe):
        raise ValueError(f"the pipeline already has {api.applied(pipe)} applied: tune needs the plain pipeline as "
                         "its baseline; call vidaccel.remove(pipe) first")
    check_budget_checkable(budget, pipe, search_prompts + held)
    roles = tuple(role for role, _ in models)
    model = models[0][1]
    family = family_for(model)
    kwargs = dict(getattr(pipe, "vidaccel_model", {}).get("defaults", {}))
    kwargs.update(call_kwargs or {})
    kwargs.pop("output_type", None)
    for name in ("num_inference_steps", "num_frames", "height", "width", "guidance_scale"):
        if kwargs.get(name) is None and _call_default(pipe, name) is not None:
            kwargs[name] = _call_default(pipe, name)
    steps = kwargs.get("num_inference_steps")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps={steps!r} is not allowed: give call_kwargs={{'num_inference_steps': n}}")
    if low_steps is not None and low_steps >= steps:
        raise ValueError(f"low_steps={low_steps} is not allowed: it must be below the full {steps} steps")
    grid = None
    if all(isinstance(kwargs.get(k), int) for k in ("num_frames", "height", "width")):
        grid = family.token_grid(model, family.latent_shape(kwargs["num_frames"], kwargs["height"], kwargs["width"],
                                                            pipe))
    adapter_layers = 0
    if adapter is not None:
        from ..accel.linear_attention import read_adapter_metadata

        adapter = os.path.abspath(os.fspath(adapter))
        meta = read_adapter_metadata(adapter)
        missing = [r for r in roles if r not in meta["roles"]]
        if missing:
            raise ValueError(f"adapter={adapter!r} holds roles {sorted(meta['roles'])}, not {missing}")
        adapter_layers = min(len(meta["roles"][r]["layers"]) for r in roles)
    guidance = kwargs.get("guidance_scale") or 0
    ctx = SpaceContext(roles=roles, steps=steps,
                       num_layers={role: len(family.blocks(m)) for role, m in models}, grid=grid,
                       blocks_attr=family.blocks_attr, fragile=tuple((f.kind, f.pattern) for f in family.fragile_layers),
                       sequential_cfg=family.cfg_style == "sequential" and guidance > 1, adapter=adapter,
                       adapter_layers=adapter_layers)
    space = SearchSpace(ctx, techniques)
    rungs = default_rungs(len(search_prompts), steps, low_steps)
    adherence = adherence_available(pipe, search_prompts + held) is None
    setup = {
        "model": getattr(pipe, "vidaccel_model", {}).get("name", type(pipe).__name__), "roles": list(roles),
        "call_kwargs": _jsonable(kwargs), "prompts": {"search": search_prompts, "holdout": held}, "seeds": seeds,
        "budget": budget.to_json(), "techniques": list(techniques), "rungs": [r.to_json() for r in rungs],
        "adapter": adapter, "presets": presets, "eta": eta,
    }

    comm = Comm()
    files: dict[str, str] = {}
    if output is not None:
        stem = os.fspath(output)[:-5]
        files = {"preset": os.fspath(output), "table": stem + ".md", "plot": stem + ".png",
                 "state": os.fspath(state_path) if state_path is not None else stem + ".state.json"}
    elif state_path is not None:
        files = {"state": os.fspath(state_path)}
    state_file = files.get("state")
    payload: dict | None = None
    if state_file and comm.is_main and os.path.isfile(state_file):
        try:
            loaded = TuneState.load(state_file)
            loaded.check_setup(setup, state_file)
            payload = {"state": asdict(loaded)}
        except ValueError as e:
            payload = {"error": str(e)}
    payload = comm.share(payload)  # rank 0 reads; every rank resumes from (or fails on) the same state
    if payload is not None and "error" in payload:
        raise ValueError(payload["error"])
    shared = payload["state"] if payload is not None else None
    state = TuneState(**shared) if shared is not None else TuneState(setup=setup)
    if shared is not None:
        logger.info("resuming from %s: %d runs, %.0f s spent", state_file, len(state.records), state.elapsed_s)

    def save():
        if comm.is_main and state_file:
            state.save(state_file)

    def apply_candidate(p, cand):
        api.apply(p, cand.configs())

    runner = Runner(pipe, kwargs, {"search": search_prompts, "holdout": held}, apply_candidate, api.remove, adherence)
    preset_cands = _preset_candidates(space, roles, techniques) if presets else []
    bar = _Progress(time_limit, progress and comm.is_main)
    search = Search(space=space, budget=budget, runner=runner, rungs=rungs, seeds=seeds, n_holdout=len(held),
                    time_limit=float(time_limit), state=state, save=save, comm=comm, presets=preset_cands, eta=eta,
                    batch_size=batch_size, max_validations=max_validations, max_candidates=max_candidates,
                    max_brackets=max_brackets, progress=bar)
    try:
        if not state.costs:
            seconds = comm.share(runner.warm_up(rungs[0].steps))
            state.costs["warmup"] = [rungs[0].steps, seconds]  # [steps, seconds of one run]
        chosen = search.run()
    except KeyboardInterrupt:
        search.save(local=True)
        logger.warning("interrupted: the state is in %s; run again with the same arguments to resume",
                       state_file or "(no state file: output=None)")
        raise
    finally:
        bar.close()

    rows = build_rows(search, chosen)
    cand = search.candidate(chosen) if chosen else None
    configs = cand.configs() if cand else []
    pick = next((r for r in rows if r["chosen"]), None)
    if chosen is None:
        logger.warning("no configuration faster than the plain pipeline met the budget (%s) on the search and "
                       "held-out prompts within the time: the result applies nothing", budget.describe())
    table = markdown_table(rows, budget, setup["rungs"])
    elapsed = search.elapsed()  # a collective call with several processes: every rank makes it
    summary = _summary(setup, budget, search, pick, time_limit, elapsed)
    result = TuneResult(configs=configs, label=cand.label if cand else "none", search=pick and pick["search"],
                        holdout=pick and pick["holdout"], rows=rows, budget=budget, setup=setup, files=files,
                        markdown=summary + "\n\n" + table + "\n")
    if comm.is_main and output is not None:
        from ..core.preset_file import write_preset

        write_preset(files["preset"], configs, label=result.label, budget=budget.to_json(),
                     measured={"search": result.search, "holdout": result.holdout},
                     front=[{k: r[k] for k in ("label", "search", "holdout", "meets_budget", "meets_budget_holdout")}
                            | {"configs": json.loads(r["configs"])} for r in result.front],
                     model=setup["model"], call_kwargs=setup["call_kwargs"], prompts=setup["prompts"], seeds=seeds,
                     device=_device(pipe, comm.world_size), versions=_versions(),
                     search={"time_limit_s": float(time_limit), "elapsed_s": elapsed,
                             "candidates": len(state.candidates), "runs": len(state.records),
                             "techniques": list(techniques)},
                     created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        with open(files["table"], "w", encoding="utf-8") as f:
            f.write(result.markdown)
        plot_front(rows, budget, files["plot"], title=f"vidaccel tune on {setup['model']}: {budget.describe()}")
    return result


def _summary(setup: dict, budget: Budget, search: Search, pick: dict | None, time_limit: float,
             elapsed: float) -> str:
    lines = [f"# vidaccel tune: {setup['model']}, budget {budget.describe()}", "",
             f"- search prompts: {len(setup['prompts']['search'])}, held-out prompts: "
             f"{len(setup['prompts']['holdout'])}, seeds: {setup['seeds']}, call: {setup['call_kwargs']}",
             f"- time: {elapsed:.0f} s of {time_limit:.0f} s; {len(search.state.candidates)} configurations "
             f"tried, {len(search.state.records)} runs (baseline runs included)"]
    if pick is None:
        lines.append("- chosen: **none** (no configuration faster than the plain pipeline met the budget on the search "
                     "and held-out prompts)")
    else:
        s, h = pick["search"], pick["holdout"] or {}
        lines.append(f"- chosen: **{pick['label']}**: search prompts {s['speedup']:.2f}× at {s['psnr']:.2f} dB / SSIM "
                     f"{s['ssim']:.4f}; held-out prompts {h.get('speedup', float('nan')):.2f}× at "
                     f"{h.get('psnr', float('nan')):.2f} dB / SSIM {h.get('ssim', float('nan')):.4f}")
    lines.append("- ★ chosen, ◆ on the measured front (speed-up vs budget margin at the highest rung reached)")
    return "\n".join(lines)
