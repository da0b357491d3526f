"""The search: successive halving over brackets of candidates, within a time limit, then held-out validation.

**Rungs.** A candidate is measured on growing sets of cells: rung 0 is one search prompt (optionally at fewer
steps), rung 1 two prompts, the top rung every search prompt with a second timing repetition. Cells measured at
a lower rung count at the higher one (a candidate promoted from one prompt to two runs only the second).

**Promotion.** After a rung, a bracket keeps a third of its members (``eta=3``): those on the best
*budget-aware Pareto layers* of (speed-up, budget margin), where margins above the rung's slack count as equal,
so among configurations that clear the budget comfortably only speed matters, while faster ones that miss it
by less than the slack stay in the race (a prompt or two is a noisy estimate). Members that miss the budget by
more than the slack are dropped even if there is room.

**Brackets.** The first bracket holds every built-in preset and the broad options of each technique. Each
later one is built where the front is: neighbours on the grid of the fastest configurations that clear or
nearly clear the budget (per Wan 2.2 expert, too: one expert's setting moved), and their combinations with the
best option of each technique they lack (a technique whose best option is no faster than the baseline is not
combined). A bracket is sized so its successive halving fits the time left; the search ends when no new
candidate is left or the time is up.

**Choice.** The fastest configurations that meet the budget on the top rung's cells (and are faster than the
plain pipeline there) are run on the held-out prompts, fastest first; the first that meets the budget there is
chosen. Held-out speed and quality are reported beside the search figures.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .budget import Budget
from .dist import Comm
from .measure import Cell, Measurements, Runner
from .space import Candidate, SearchSpace
from .state import TuneState

logger = logging.getLogger(__name__)

__all__ = ["Rung", "default_rungs", "Search", "layered_front"]


@dataclass(frozen=True)
class Rung:
    """``prompts`` search prompts (every seed) at ``steps`` steps, ``repeats`` timing repetitions; a candidate
    missing the budget by at most ``slack`` margin units may still be promoted from this rung."""

    prompts: int
    steps: int
    repeats: int
    slack: float

    def to_json(self) -> list:
        return [self.prompts, self.steps, self.repeats, self.slack]


def default_rungs(n_search: int, steps: int, low_steps: int | None = None) -> list[Rung]:
    """One prompt (at ``low_steps`` when given), two prompts, then every search prompt timed twice."""
    rungs = [Rung(1, low_steps or steps, 1, 6.0 if low_steps else 3.0)]
    if n_search >= 2:
        rungs.append(Rung(2, steps, 1, 1.5))
    rungs.append(Rung(n_search, steps, 2, 0.5))
    out: list[Rung] = []
    for r in rungs:  # with one prompt, rung 1 would equal rung 0
        if not out or (r.prompts, r.steps) != (out[-1].prompts, out[-1].steps) or r.repeats != out[-1].repeats:
            out.append(r)
    return out


def layered_front(points: dict[str, tuple[float, float]]) -> list[list[str]]:
    """Non-dominated layers of ``{id: (speed, quality)}`` (higher is better on both), first layer first,
    each sorted by speed, fastest first."""
    left = dict(points)
    layers = []
    while left:
        layer = [i for i, (s, q) in left.items()
                 if not any(s2 >= s and q2 >= q and (s2 > s or q2 > q) for j, (s2, q2) in left.items() if j != i)]
        layer.sort(key=lambda i: -left[i][0])
        layers.append(layer)
        for i in layer:
            del left[i]
    return layers


class Search:
    """One tuning session (see the module docstring); :meth:`run` returns the chosen id or ``None``."""

    def __init__(self, *, space: SearchSpace, budget: Budget, runner: Runner, rungs: Sequence[Rung],
                 seeds: Sequence[int], n_holdout: int, time_limit: float, state: TuneState,
                 save: Callable[[], None], comm: Comm, presets: Sequence[tuple[str, Candidate]] = (),
                 eta: int = 3, batch_size: int = 4, max_validations: int = 3, max_candidates: int | None = None,
                 max_brackets: int | None = None, progress: Any = None):
        self.space, self.budget, self.runner = space, budget, runner
        self.rungs, self.seeds, self.n_holdout = list(rungs), list(seeds), n_holdout
        self.time_limit, self.state, self._save, self.comm = time_limit, state, save, comm
        self.presets, self.eta, self.batch_size = list(presets), eta, batch_size
        self.max_validations, self.max_candidates, self.max_brackets = max_validations, max_candidates, max_brackets
        self.progress = progress
        self.measurements = Measurements(state.records)
        self._session_start = time.perf_counter()
        self._elapsed_before = state.elapsed_s
        self._by_key = {c["key"]: c for c in state.candidates}
        self._by_id = {c["id"]: c for c in state.candidates}
        self._cands: dict[str, Candidate] = {c["id"]: space.candidate_from_json(c["candidate"])
                                             for c in state.candidates}
        self.trying = ""
        self._carry: list[str] = []

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def save(self, local: bool = False) -> None:
        """Write the state (rank 0); ``local`` uses this rank's clock without a collective (on interrupt)."""
        self.state.elapsed_s = (self._elapsed_before + time.perf_counter() - self._session_start) if local \
            else self.elapsed()
        self._save()

    def elapsed(self) -> float:
        return self.comm.share(self._elapsed_before + time.perf_counter() - self._session_start)

    def left(self) -> float:
        return self.time_limit - self.elapsed()

    def candidate(self, cid: str) -> Candidate:
        return self._cands[cid]

    def ids(self) -> list[str]:
        return [c["id"] for c in self.state.candidates]

    def error(self, cid: str) -> str | None:
        return self._by_id[cid]["error"]

    def register(self, cand: Candidate) -> str | None:
        """Id of ``cand`` (new ones are checked once by applying them); ``None`` for the baseline itself."""
        if cand.is_baseline:
            return None
        key = cand.key
        if key in self._by_key:
            return self._by_key[key]["id"]
        entry = {"id": f"c{len(self.state.candidates)}", "key": key, "candidate": cand.to_json(),
                 "error": self.runner.check(cand)}
        if entry["error"]:
            logger.info("skipping %s: %s", cand.label, entry["error"])
        self.state.candidates.append(entry)
        self._by_key[key], self._by_id[entry["id"]], self._cands[entry["id"]] = entry, entry, cand
        return entry["id"]

    def cells(self, rung: int | Rung) -> list[Cell]:
        r = self.rungs[rung] if isinstance(rung, int) else rung
        return [Cell("search", p, s, r.steps, rep) for rep in range(r.repeats) for p in range(r.prompts)
                for s in self.seeds]

    def holdout_cells(self) -> list[Cell]:
        return [Cell("holdout", p, s, self.rungs[-1].steps, 0) for p in range(self.n_holdout) for s in self.seeds]

    def metrics(self, cid: str, cells: Sequence[Cell]) -> dict | None:
        return self.measurements.metrics(cid, cells)

    def _measured(self, cid: str, rung: int) -> bool:
        m = self.metrics(cid, self.cells(rung))
        return m is not None and m["complete"]

    def margin(self, m: dict | None) -> float:
        return -math.inf if m is None else self.budget.margin(m)

    # -- cost -----------------------------------------------------------------------------------------------
    def run_cost(self, steps: int) -> float:
        """Seconds of one baseline run at ``steps`` steps (from runs so far, scaled by steps when unseen)."""
        costs = self.state.costs
        if str(steps) in costs and costs[str(steps)][1]:
            return costs[str(steps)][0] / costs[str(steps)][1]
        seen = [(int(k), v[0] / v[1]) for k, v in costs.items() if k.isdigit() and v[1]]
        if not seen and "warmup" in costs:  # before any batch: the untimed first call (an overestimate)
            seen = [tuple(costs["warmup"])]
        if seen:
            k, per = seen[0]
            return per * steps / k
        return 1.0

    def candidate_share(self) -> float:
        """Mean cost of a candidate run in baseline runs (0.8 until measured)."""
        total, n = self.state.costs.get("candidate_share", [0.0, 0])
        return total / n if n else 0.8

    def batch_cost(self, n: int, cells: Sequence[Cell]) -> float:
        return len(cells) * (1 + self.candidate_share() * n) * self.run_cost(cells[0].steps) if cells else 0.0

    def reserve(self) -> float:
        """Time kept back for the held-out validation: two candidates, at most a quarter of the limit."""
        return min(2 * self.batch_cost(1, self.holdout_cells()), 0.25 * self.time_limit)

    def bracket_cost(self, n0: int) -> float:
        total, n, seen = 0.0, n0, set()
        for i, rung in enumerate(self.rungs):
            cells = set(self.cells(i))
            new = len(cells - seen)  # cells measured at a lower rung are not run again
            seen |= cells
            total += new * self.run_cost(rung.steps) * (math.ceil(n / self.batch_size) + self.candidate_share() * n)
            n = math.ceil(n / self.eta)
        return total

    # -- measuring ------------------------------------------------------------------------------------------
    def measure(self, ids: Sequence[str], cells: Sequence[Cell], *, force: bool = False) -> bool:
        """Run ``ids`` on the cells they miss, in batches; ``False`` when the time ran out first (``force``: run
        them all regardless)."""
        groups: dict[tuple, list[str]] = {}
        for cid in ids:
            if self.error(cid):
                continue
            missing: dict[tuple, list[int]] = {}
            for cell in self.measurements.missing(cid, cells):
                missing.setdefault((cell.split, cell.steps, cell.rep, cell.prompt), []).append(cell.seed)
            for where, seeds in missing.items():
                groups.setdefault((*where, tuple(sorted(seeds))), []).append(cid)
        for (split, steps, rep, prompt, seeds), members in sorted(groups.items(), key=lambda g: g[0][:4]):
            todo = [Cell(split, prompt, s, steps, rep) for s in seeds]
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                # the session's first batch always runs: a search that measured nothing cannot choose
                first = not self.measurements.records
                if not (force or first) and self.batch_cost(len(chunk), todo) > self.left() - (
                        0 if split == "holdout" else self.reserve()):
                    return False
                self._run_batch(chunk, todo)
        return True

    def _run_batch(self, chunk: list[str], cells: list[Cell]) -> None:
        self.trying = ", ".join(self.candidate(c).label for c in chunk)
        if self.progress is not None:
            self.progress.show(self)
        logger.info("measuring %s on %d %s cell(s) at %d steps", self.trying, len(cells), cells[0].split,
                    cells[0].steps)
        batch_id = self.state.batches
        start = time.perf_counter()
        try:
            records = self.runner.run(batch_id, [(c, self.candidate(c)) for c in chunk], cells)
        except Exception as e:  # a candidate that breaks during a run is recorded as failed, the search goes on
            if len(chunk) > 1:
                for cid in chunk:
                    self._run_batch([cid], cells)
                return
            if not any(r["cand"] == "baseline" for r in self.measurements.records):
                self.runner.run(batch_id, [], cells)  # raises if the plain pipeline itself fails
            self._by_id[chunk[0]]["error"] = f"failed during a run: {type(e).__name__}: {e}"
            logger.warning("%s failed during a run (%s: %s); skipping it", self.candidate(chunk[0]).label,
                           type(e).__name__, e)
            self.save()
            return
        seconds = time.perf_counter() - start
        records, seconds = self.comm.share([records, seconds])
        self.state.batches += 1
        self.state.records.extend(records)
        self.measurements.add(records)
        base = [r["total_s"] for r in records if r["cand"] == "baseline"]
        if base:
            unit = sum(base) / len(base)
            shares = [r["total_s"] / unit for r in records if r["cand"] != "baseline"]
            entry = self.state.costs.setdefault(str(cells[0].steps), [0.0, 0.0])
            entry[0] += seconds  # wall seconds of the batch, harness overhead included
            entry[1] += len(base) + sum(shares)  # in runs of the baseline
            share = self.state.costs.setdefault("candidate_share", [0.0, 0])
            share[0] += sum(shares)
            share[1] += len(shares)
        self.save()
        if self.progress is not None:
            self.progress.show(self)

    # -- selection ------------------------------------------------------------------------------------------
    def promote(self, members: Sequence[str], rung: int) -> list[str]:
        r = self.rungs[rung]
        cells = self.cells(rung)
        scored = {cid: self.metrics(cid, cells) for cid in members if not self.error(cid)}
        scored = {cid: m for cid, m in scored.items() if m is not None}
        if not scored:
            return []
        eligible = {cid: m for cid, m in scored.items() if self.margin(m) >= -r.slack}
        if not eligible:
            best = max(scored, key=lambda c: self.margin(scored[c]))
            eligible = {best: scored[best]}
        keep = max(2, math.ceil(len(members) / self.eta))
        points = {cid: (m["speedup"], min(self.margin(m), r.slack)) for cid, m in eligible.items()}
        # the fastest one that meets the budget here always goes on, so the top rung has a feasible member
        safe = [cid for cid, m in eligible.items() if self.budget.met(m) and m["speedup"] > 1.0]
        out: list[str] = [max(safe, key=lambda c: points[c][0])] if safe else []
        for layer in layered_front(points):
            layer = [cid for cid in layer if cid not in out]
            out.extend(layer[:keep - len(out)])
            if len(out) >= keep:
                break
        return out

    def pool(self) -> tuple[int, dict[str, dict]]:
        """The highest rung any candidate completed, and every candidate's metrics there."""
        for rung in reversed(range(len(self.rungs))):
            cells = self.cells(rung)
            found = {}
            for cid in self.ids():
                m = self.metrics(cid, cells)
                if m is not None and m["complete"]:
                    found[cid] = m
            if found:
                return rung, found
        return -1, {}

    def best(self) -> tuple[str, dict] | None:
        """The fastest candidate meeting the budget on the pool's rung."""
        _, found = self.pool()
        feasible = [(cid, m) for cid, m in found.items() if self.budget.met(m)]
        return max(feasible, key=lambda x: x[1]["speedup"]) if feasible else None

    # -- brackets ---------------------------------------------------------------------------------------------
    def _size(self, ids: list[str], first: bool) -> list[str]:
        """As many of ``ids`` as a bracket can take in the time left; the first bracket takes at least one batch
        (the presets come first), however short the time."""
        ids = ids[: self.max_candidates] if self.max_candidates else ids
        budget = self.left() - self.reserve()
        n = len(ids)
        while n > 0 and self.bracket_cost(n) > budget:
            n -= 1
        return ids[:max(n, min(len(ids), self.batch_size) if first else 0)]

    def first_bracket(self) -> list[str]:
        ids: list[str] = []
        for _, cand in self.presets:
            cid = self.register(cand)
            if cid and cid not in ids and not self.error(cid):
                ids.append(cid)
        roles = self.space.ctx.roles
        for option in self.space.broad():
            cid = self.register(Candidate.shared(roles, [option], origin="broad"))
            if cid and cid not in ids and not self.error(cid):
                ids.append(cid)
        return ids

    def _single_best(self) -> dict[str, tuple[Candidate, float]]:
        """Per technique, the candidate of that technique alone that is fastest while meeting the budget at the
        highest rung it reached (or with the best margin when none meets it)."""
        best: dict[str, tuple[tuple, Candidate, float]] = {}
        for cid in self.ids():
            cand = self.candidate(cid)
            if self.error(cid) or not cand.is_shared or len(cand.options[0][1]) != 1:
                continue
            for rung in reversed(range(len(self.rungs))):
                m = self.metrics(cid, self.cells(rung))
                if m is not None and m["complete"]:
                    break
            else:
                continue
            feasible = self.budget.met(m)
            score = (rung, feasible, m["speedup"] if feasible else self.margin(m))
            technique = cand.options[0][1][0].technique
            if technique not in best or score > best[technique][0]:
                best[technique] = (score, cand, m["speedup"])
        return {t: (c, s) for t, (_, c, s) in best.items()}

    def _movable(self, cid: str) -> bool:
        """Whether candidate ``cid`` has an option with grid neighbours (a preset's fixed options have none)."""
        return any(self.space.neighbours(o) for _, opts in self.candidate(cid).options for o in opts)

    def next_bracket(self) -> list[str]:
        rung, found = self.pool()
        if not found:
            return []
        top_slack = self.rungs[rung].slack if rung >= 0 else 0.0
        points = {cid: (m["speedup"], self.margin(m)) for cid, m in found.items()}
        front = layered_front(points)[0] if points else []
        feasible = sorted((c for c in found if self.budget.met(found[c])), key=lambda c: -found[c]["speedup"])
        near = [c for c in front if c not in feasible and points[c][1] >= -max(top_slack, 1.0)]
        # presets are fixed options without grid neighbours: the seeds to move from are the feasible others, else
        # the lower-rung candidates that met the budget there
        movable = [c for c in feasible if self._movable(c)]
        sources = movable or [c for c in self._feasible_below(rung) if self._movable(c)]
        seeds = sources[:3] + near[:2]
        singles = self._single_best()
        roles = self.space.ctx.roles
        new: list[Candidate] = []
        for cid in seeds:
            cand = self.candidate(cid)
            for role, opts in (cand.options[:1] if cand.is_shared else cand.options):
                for opt in opts:
                    for nb in self.space.neighbours(opt):
                        made = cand.with_option(nb, None if cand.is_shared else [role], origin=f"neighbour of {cid}")
                        if made is not None:
                            new.append(made)
                        if len(roles) > 1:  # move one expert only
                            for r in roles:
                                made = cand.with_option(nb, [r], origin=f"{r} neighbour of {cid}")
                                if made is not None:
                                    new.append(made)
            for technique, (single, speed) in singles.items():
                if technique in cand.techniques() or speed <= 1.02:
                    continue
                opt = single.options[0][1][0]
                made = cand.with_option(opt, None, origin=f"{cid} + {technique}")
                if made is not None:
                    new.append(made)
        ids: list[str] = []
        for cand in new:
            if cand.key in self._by_key:
                continue
            cid = self.register(cand)
            if cid and not self.error(cid):
                ids.append(cid)
        if not movable:
            # nothing movable at the top rung meets the budget yet: carry on (once each) the lower-rung candidates
            # that met it there
            carried = {c for b in self.state.brackets for c in b.get("carried", [])}
            self._carry = [cid for cid in self._feasible_below(rung) if cid not in ids and cid not in carried]
            ids += self._carry
        for option in self.space.broad():  # broad options a time- or size-limited first bracket left out
            cid = self.register(Candidate.shared(roles, [option], origin="broad"))
            if cid and cid not in ids and not self.error(cid) and not self._measured(cid, 0):
                ids.append(cid)
        return ids

    def _feasible_below(self, top: int, faster_than: float | None = None) -> list[str]:
        """Candidates that met the budget at the highest rung they completed, below rung ``top``, fastest first
        (only those with a speed-up above ``faster_than`` there, when given)."""
        out = []
        for cid in self.ids():
            if self.error(cid):
                continue
            for rung in reversed(range(top)):
                m = self.metrics(cid, self.cells(rung))
                if m is not None and m["complete"]:
                    if self.budget.met(m) and (faster_than is None or m["speedup"] > faster_than):
                        out.append((m["speedup"], cid))
                    break
        return [cid for _, cid in sorted(out, reverse=True)]

    # -- the session ------------------------------------------------------------------------------------------
    def run(self) -> str | None:
        if not self.state.finished:
            self.search()
            self.state.finished = True
            self.save()
        return self.validate()

    def search(self) -> None:
        while True:
            if not self.state.brackets or self.state.brackets[-1]["done"]:
                index = len(self.state.brackets)
                if self.max_brackets is not None and index >= self.max_brackets:
                    logger.info("search ends: %d brackets done", index)
                    return
                self._carry = []
                ids = self.first_bracket() if index == 0 else self.next_bracket()
                ids = self._size(ids, first=index == 0)
                self.save()
                if not ids:
                    logger.info("search ends: %s", "no time left for another bracket" if self.left() > 0
                                else "time is up")
                    return
                logger.info("bracket %d: %d candidates", index, len(ids))
                self.state.brackets.append({"members": ids, "rung": 0, "done": False,
                                            "carried": [c for c in self._carry if c in ids]})
                self.save()
            bracket = self.state.brackets[-1]
            while bracket["rung"] < len(self.rungs):
                r = bracket["rung"]
                if not self.measure(bracket["members"], self.cells(r)):
                    logger.info("time is up during bracket %d, rung %d", len(self.state.brackets) - 1, r)
                    return
                if r + 1 < len(self.rungs):
                    bracket["members"] = self.promote(bracket["members"], r)
                bracket["rung"] = r + 1
                self.save()
            bracket["done"] = True
            self.save()

    def validate(self) -> str | None:
        """Held-out validation of the fastest configurations meeting the budget; the chosen id or ``None``."""
        rung, found = self.pool()
        # a configuration no faster than the plain pipeline is never chosen: applying nothing beats it
        order = sorted((c for c in found if self.budget.met(found[c]) and found[c]["speedup"] > 1.0),
                       key=lambda c: -found[c]["speedup"])
        # then those that met the budget on fewer cells (the time ended before they were promoted, or promotion
        # preferred others): the held-out check still decides
        order += [c for c in self._feasible_below(rung, faster_than=1.0) if c not in order]
        done = {v["id"]: v for v in self.state.validation}
        for cid in order[: self.max_validations]:
            if cid not in done:
                # the first validation runs even past the time limit: a choice needs one
                if not self.measure([cid], self.holdout_cells(), force=not self.state.validation):
                    logger.info("no time left to validate %s on the held-out prompts", self.candidate(cid).label)
                    break
                m = self.metrics(cid, self.holdout_cells())
                done[cid] = {"id": cid, "passed": self.budget.met(m), "margin": self.margin(m)}
                self.state.validation.append(done[cid])
                self.save()
                logger.info("held-out: %s %s the budget", self.candidate(cid).label,
                            "meets" if done[cid]["passed"] else "misses")
            if done[cid]["passed"]:
                return cid
        return None
