"""``vidaccel tune``'s parts without a pipeline: budgets, preset files, the search on a synthetic landscape
(successive halving, validation on held-out prompts, no re-timing, time limit, resume)."""

from __future__ import annotations

import json
import math

import pytest

from vidaccel.accel import CacheConfig, QuantConfig, RoleConfigs, SlidingWindowConfig, read_preset, resolve_accel, \
    write_preset
from vidaccel.tune import search as search_module
from vidaccel.tune.budget import Budget
from vidaccel.tune.dist import Comm
from vidaccel.tune.measure import Cell
from vidaccel.tune.search import Search, default_rungs, layered_front
from vidaccel.tune.space import Candidate, SearchSpace, SpaceContext
from vidaccel.tune.state import TuneState


# -- budgets ------------------------------------------------------------------------------------------------
def test_budget_parses_text_and_dicts():
    assert Budget.parse("psnr=30") == Budget(psnr=30.0)
    assert Budget.parse("psnr=30, ssim=0.95") == Budget(psnr=30.0, ssim=0.95)
    assert Budget.parse({"adherence-drop": 0.02}) == Budget(adherence_drop=0.02)
    b = Budget.parse("psnr=30,adherence-drop=0.02")
    assert b.met({"psnr": 30.0, "adherence_drop": 0.02}) and not b.met({"psnr": 29.9, "adherence_drop": 0.0})
    assert not b.met({"psnr": 35.0, "adherence_drop": 0.021}) and not b.met({"psnr": 35.0, "adherence_drop": None})
    assert b.margin({"psnr": 31.0, "adherence_drop": 0.0}) == pytest.approx(1.0)  # 1 dB is the worst term
    assert Budget.parse("ssim=0.95").margin({"ssim": 0.97}) == pytest.approx(2.0)  # in steps of 0.01


@pytest.mark.parametrize("text,needle", [
    ("psnr", "write NAME=VALUE"),
    ("psnr=abc", "budget psnr='abc' is not a number"),
    ("speed=2", "budget 'speed' is not allowed; allowed: psnr, ssim, adherence-drop"),
    ("ssim=1.5", "budget ssim=1.5 is not allowed: it must be in (0, 1]"),
    ("psnr=-3", "budget psnr=-3.0 is not allowed: it must be in (0, 100] dB"),
    ("psnr=inf", "budget psnr=inf is not allowed: it must be a finite number"),
    ("adherence-drop=1.5", "budget adherence-drop=1.5 is not allowed: it must be in [0, 1)"),
    ("psnr=30,psnr=31", "budget 'psnr' is given twice"),
    ("", "write NAME=VALUE"),
])
def test_bad_budgets_are_refused(text, needle):
    with pytest.raises(ValueError) as e:
        Budget.parse(text)
    assert needle in str(e.value)


def test_an_empty_budget_is_refused():
    with pytest.raises(ValueError, match="budget is empty"):
        Budget()


# -- preset files -------------------------------------------------------------------------------------------
def test_preset_file_round_trip_flat_and_per_role(tmp_path):
    flat = [CacheConfig(threshold=math.inf, policy="call", interval=5, warmup_steps=3, final_steps=0),
            QuantConfig(format="nvfp4", skip_format="fp8", quantize_fragile=("text",)),
            SlidingWindowConfig(window=(1, 2, 2), tile=(1, 1, 1), dense_layers=[0])]
    path = write_preset(tmp_path / "flat.json", flat, budget={"psnr": 30.0}, note="anything")
    assert resolve_accel(path) == flat and resolve_accel(str(path)) == flat
    doc = json.loads((tmp_path / "flat.json").read_text())
    assert doc["format"] == "vidaccel-preset" and doc["configs"][0]["args"]["threshold"] == "inf"
    assert read_preset(path)["note"] == "anything"
    per_role = RoleConfigs({"transformer": flat[:1], "transformer_2": []})
    path = write_preset(tmp_path / "roles.json", per_role)
    assert resolve_accel(path) == [per_role]
    assert resolve_accel({"transformer": "fast", "transformer_2": []}) == [
        RoleConfigs({"transformer": resolve_accel("fast"), "transformer_2": []})]


def _write(tmp_path, text, name="bad.json"):
    path = tmp_path / name
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return str(path)


GOOD = {"type": "CacheConfig", "args": {"policy": "call", "interval": 4}}


@pytest.mark.parametrize("doc,needle", [
    ("{not json", "is not valid JSON"),
    ([1, 2], "the top level must be a JSON object"),
    ({"configs": []}, "field 'format' is None; a vidaccel preset has 'format': 'vidaccel-preset'"),
    ({"format": "vidaccel-preset", "version": 9, "configs": []}, "field 'version'=9 is not supported"),
    ({"format": "vidaccel-preset", "version": 1}, "field 'configs' is missing"),
    ({"format": "vidaccel-preset", "version": 1, "configs": "fast"}, "configs='fast' is not allowed"),
    ({"format": "vidaccel-preset", "version": 1, "configs": [{"type": "TurboConfig"}]},
     "configs[0].type='TurboConfig' is not a known technique config; known: CacheConfig"),
    ({"format": "vidaccel-preset", "version": 1, "configs": [GOOD, {"type": "CacheConfig", "args": {"speed": 2}}]},
     "configs[1].args: 'speed' is not a field of CacheConfig"),
    ({"format": "vidaccel-preset", "version": 1, "configs": [{"type": "CacheConfig", "args": {"threshold": -1}}]},
     "configs[0] (CacheConfig): CacheConfig.threshold=-1 is not allowed"),
    ({"format": "vidaccel-preset", "version": 1, "configs": [{"type": "CacheConfig", "args": [1]}]},
     "configs[0].args=[1] is not allowed"),
    ({"format": "vidaccel-preset", "version": 1, "configs": [{"type": "CacheConfig", "code": "x"}]},
     "configs[0]: field(s) ['code'] are not allowed"),
    ({"format": "vidaccel-preset", "version": 1, "configs": {"transformer_3": [GOOD]}},
     "configs.transformer_3 is not allowed: per-role configs are keyed by transformer, transformer_2"),
    ({"format": "vidaccel-preset", "version": 1, "configs": {"transformer": GOOD}},
     "configs.transformer={"),
])
def test_malformed_preset_files_name_the_file_and_field(tmp_path, doc, needle):
    path = _write(tmp_path, doc)
    with pytest.raises(ValueError) as e:
        resolve_accel(path)
    assert path in str(e.value) and needle in str(e.value)


def test_preset_files_are_never_unpickled(tmp_path):
    import pickle

    path = tmp_path / "evil.json"
    path.write_bytes(pickle.dumps({"format": "vidaccel-preset"}))
    with pytest.raises(ValueError, match="is not (valid JSON|a UTF-8 text file)"):
        resolve_accel(str(path))
    with pytest.raises(ValueError, match="preset file .*missing.json' does not exist"):
        resolve_accel(str(tmp_path / "missing.json"))


# -- the search on a synthetic landscape -----------------------------------------------------------------------
CTX = SpaceContext(roles=("transformer",), steps=8, num_layers={"transformer": 4}, grid=None, blocks_attr="blocks",
                   fragile=(), sequential_cfg=True)
BUDGET = Budget(psnr=40.0)


def truth(cand: Candidate, split: str, prompt: int) -> tuple[float, float]:
    """(speed-up, PSNR) of a candidate: whole-call caching gets faster and worse with the interval; two settings
    are worse on the held-out prompts than on the search prompts."""
    opt = cand.options[0][1][0]
    p = dict(opt.params)
    if opt.kind != "call":
        return 1.1, 70.0
    speed = 1 + 0.4 * (p["interval"] - 1) - 0.1 * (p["warmup"] - 2) - 0.15 * p["final"]
    psnr = 60 - 4 * p["interval"] + 2 * (p["warmup"] - 2) + 3 * p["final"] + 0.1 * prompt
    if split == "holdout" and p["interval"] == 6 and p["warmup"] == 4:
        psnr -= 3.0
    return speed, psnr


class FakeRunner:
    """Answers like :class:`vidaccel.tune.measure.Runner`, from :func:`truth`; counts what it ran."""

    def __init__(self, clock=None, interrupt_at=None):
        self.calls = []
        self.clock = clock
        self.interrupt_at = interrupt_at

    def check(self, cand):
        return None

    def run(self, batch_id, candidates, cells):
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append(([c for c, _ in candidates], list(cells)))
        out = []
        for cell in cells:
            base = {"cand": "baseline", "split": cell.split, "p": cell.prompt, "seed": cell.seed, "steps": cell.steps,
                    "rep": cell.rep, "batch": batch_id, "denoise_s": 1.0, "total_s": 1.5, "psnr": math.inf,
                    "ssim": 1.0, "adherence": None}
            out.append(base)
            for cid, cand in candidates:
                speed, psnr = truth(cand, cell.split, cell.prompt)
                out.append({**base, "cand": cid, "denoise_s": 1.0 / speed, "total_s": 0.5 + 1.0 / speed,
                            "psnr": psnr, "ssim": 0.99})
        if self.clock is not None:
            self.clock[0] += sum(r["total_s"] for r in out)
        return out


def make_search(state, runner, *, time_limit=1e6, path=None, **kw):
    space = SearchSpace(CTX, ["cache"])
    return Search(space=space, budget=BUDGET, runner=runner, rungs=default_rungs(4, 8), seeds=[0], n_holdout=2,
                  time_limit=time_limit, state=state, save=(lambda: state.save(path)) if path else (lambda: None),
                  comm=Comm(), **kw)


def best_by_brute_force(space):
    """The fastest grid point that meets the budget on the search prompts and on the held-out prompts."""
    best = None
    for spec in space.kinds.values():
        for point in space._points(spec):
            opt = space._try(spec, point)
            if opt is None:
                continue
            cand = Candidate.shared(("transformer",), [opt])
            speed, _ = truth(cand, "search", 0)
            search_psnr = sum(truth(cand, "search", p)[1] for p in range(4)) / 4
            held_psnr = sum(truth(cand, "holdout", p)[1] for p in range(2)) / 2
            if search_psnr >= 40 and held_psnr >= 40 and (best is None or speed > best[0]):
                best = (speed, cand.label)
    return best


def test_search_finds_the_fastest_setting_that_meets_the_budget_on_held_out_prompts():
    state = TuneState(setup={})
    runner = FakeRunner()
    s = make_search(state, runner)
    chosen = s.run()
    assert chosen is not None
    speed, label = best_by_brute_force(s.space)
    assert s.candidate(chosen).label == label == "cache call/6 w3 f1"
    # the faster call/6 w4 f0 meets the budget on the search prompts but not on the held-out ones: it was
    # validated, refused, and the next one taken
    refused = [v for v in state.validation if not v["passed"]]
    assert [s.candidate(v["id"]).label for v in refused] == ["cache call/6 w4 f0"]
    assert s.metrics(chosen, s.holdout_cells())["psnr"] >= 40
    # successive halving: most candidates stop at rung 0
    rungs = [max((r for r in range(3) if (m := s.metrics(c, s.cells(r))) and m["complete"]), default=-1)
             for c in s.ids()]
    assert rungs.count(0) > rungs.count(2) > 0


def test_search_never_times_a_candidate_twice_on_a_cell():
    state = TuneState(setup={})
    runner = FakeRunner()
    make_search(state, runner).run()
    seen = set()
    for ids, cells in runner.calls:
        for cid in ids:
            for cell in cells:
                assert (cid, cell) not in seen
                seen.add((cid, cell))
    assert all(len(cells) == 1 for _, cells in runner.calls)  # one seed: a batch is one prompt


def test_search_stops_at_the_time_limit_and_still_chooses(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(search_module.time, "perf_counter", lambda: clock[0])
    state = TuneState(setup={}, costs={"8": [1.5, 1.0]})
    unlimited = FakeRunner()
    make_search(TuneState(setup={}, costs={"8": [1.5, 1.0]}), unlimited).run()
    runner = FakeRunner(clock=clock)
    s = make_search(state, runner, time_limit=150.0)
    chosen = s.run()
    assert len(runner.calls) < len(unlimited.calls)
    longest = 1.5 * 5 * 2  # a batch: a baseline and 4 candidates, at most 1.5 s a run, one cell; twice over
    assert clock[0] <= 150.0 + longest
    assert chosen is not None and s.budget.met(s.metrics(chosen, s.holdout_cells()))


def test_a_time_limit_too_short_for_a_bracket_still_measures_one_batch_and_validates(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(search_module.time, "perf_counter", lambda: clock[0])
    runner = FakeRunner(clock=clock)
    s = make_search(TuneState(setup={}, costs={"8": [1.5, 1.0]}), runner, time_limit=5.0)
    chosen = s.run()
    # one batch of the first four broad options on one prompt, then the best of them on the 2 held-out prompts
    assert [len(ids) for ids, _ in runner.calls] == [4, 1, 1]
    assert s.candidate(chosen).label == "cache call/5 w3 f0"


def test_search_resumes_after_an_interruption_without_repeating_a_run(tmp_path):
    path = str(tmp_path / "state.json")
    reference = FakeRunner()
    ref_state = TuneState(setup={"x": 1})
    ref_chosen = make_search(ref_state, reference).run()

    first = FakeRunner(interrupt_at=7)
    state = TuneState(setup={"x": 1})
    with pytest.raises(KeyboardInterrupt):
        make_search(state, first, path=path).run()
    saved = TuneState.load(path)
    assert len(saved.records) > 0 and not saved.finished
    second = FakeRunner()
    resumed = make_search(saved, second, path=path)
    chosen = resumed.run()
    # the second session ran exactly what the first had not, and the whole equals an uninterrupted session
    assert len(first.calls) + len(second.calls) == len(reference.calls)
    assert first.calls + second.calls == reference.calls
    assert resumed.candidate(chosen).label == make_search(ref_state, FakeRunner()).candidate(ref_chosen).label
    assert TuneState.load(path).records == ref_state.records
    with pytest.raises(ValueError, match="was made with another setup .*x: state has 1, now 2"):
        TuneState.load(path).check_setup({"x": 2}, path)


def test_layered_front_orders_by_domination():
    layers = layered_front({"a": (3.0, 1.0), "b": (2.0, 2.0), "c": (1.0, 1.0), "d": (2.0, 1.0), "e": (3.0, 0.5)})
    assert layers == [["a", "b"], ["e", "d"], ["c"]]


def test_space_neighbours_stay_on_the_grid_and_round_trip_through_json():
    space = SearchSpace(CTX, ["cache"])
    opt = space.option("cache", "call", {"interval": 2, "warmup": 3, "final": 0})
    labels = sorted(o.label for o in space.neighbours(opt))
    assert labels == ["cache call/2 w2 f0", "cache call/2 w3 f1", "cache call/2 w4 f0", "cache call/3 w3 f0"]
    cand = Candidate.shared(("transformer", "transformer_2"), [opt]).with_option(
        space.option("cache", "call", {"interval": 3, "warmup": 3, "final": 0}), ["transformer_2"])
    assert not cand.is_shared and isinstance(cand.configs(), RoleConfigs)
    assert cand.label == "transformer: cache call/2 w3 f0; transformer_2: cache call/3 w3 f0"
    back = space.candidate_from_json(json.loads(json.dumps(cand.to_json())))
    assert back.key == cand.key and back.label == cand.label
    fixed = space.from_config(CacheConfig(threshold=0.07, policy="block"), "cache", "preset x")
    assert fixed.kind == "fixed" and space.option_from_json(fixed.to_json()).config == fixed.config
    assert space.from_config(opt.config, "cache", "preset y") == opt  # a preset on the grid gets neighbours
    with pytest.raises(ValueError, match="not on the grid"):
        space.option("cache", "call", {"interval": 99, "warmup": 3, "final": 0})
    assert Cell("search", 0, 0, 8) < Cell("search", 1, 0, 8)


def test_growing_call_schedules_scale_their_growth_with_the_step_count():
    import dataclasses

    for steps, growths in ((8, (0.5, 1.0)), (25, (1.0, 2.0, 3.0)), (50, (2.0, 4.0, 6.0))):
        space = SearchSpace(dataclasses.replace(CTX, steps=steps), ["cache"])
        assert space.kinds[("cache", "call-growing")].axes["growth"] == growths
    space = SearchSpace(dataclasses.replace(CTX, steps=25), ["cache"])
    opt = space.option("cache", "call-growing", {"interval": 2, "warmup": 2, "growth": 2.0})
    assert opt.label == "cache call/2 grow 2 w2"
    assert (opt.config.policy, opt.config.interval, opt.config.warmup_steps, opt.config.interval_growth) == \
        ("call", 2, 2, 2.0)
    assert sorted(o.label for o in space.neighbours(opt)) == [
        "cache call/2 grow 1 w2", "cache call/2 grow 2 w3", "cache call/2 grow 3 w2", "cache call/3 grow 2 w2"]
    assert space.option_from_json(json.loads(json.dumps(opt.to_json()))) == opt
    assert {"cache call/2 grow 2 w3", "cache call/3 grow 1 w3"} <= {o.label for o in space.broad()}


def test_default_rungs_grow_prompts_then_repeats():
    from vidaccel.tune.search import Rung

    assert default_rungs(4, 25) == [Rung(1, 25, 1, 3.0), Rung(2, 25, 1, 1.5), Rung(4, 25, 2, 0.5)]
    assert default_rungs(4, 25, low_steps=10)[0] == Rung(1, 10, 1, 6.0)
    assert default_rungs(1, 8) == [Rung(1, 8, 1, 3.0), Rung(1, 8, 2, 0.5)]  # one prompt: no two-prompt rung


def test_nothing_slower_than_the_plain_pipeline_is_chosen(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules[__name__], "truth", lambda cand, split, prompt: (0.9, 60.0))
    s = make_search(TuneState(setup={}), FakeRunner(), max_brackets=1)
    assert s.run() is None and s.state.validation == []


def test_a_candidate_that_breaks_during_a_run_is_skipped_and_the_search_goes_on():
    class Breaking(FakeRunner):
        def run(self, batch_id, candidates, cells):
            if any(dict(c.options[0][1][0].params).get("interval") == 5 for _, c in candidates):
                raise RuntimeError("kernel failed")
            return super().run(batch_id, candidates, cells)

    s = make_search(TuneState(setup={}), Breaking())
    chosen = s.run()
    broken = [c["id"] for c in s.state.candidates if c["error"]]
    assert broken and all("RuntimeError: kernel failed" in s.error(c) for c in broken)
    assert all(dict(s.candidate(c).options[0][1][0].params)["interval"] == 5 for c in broken)
    assert chosen is not None and dict(s.candidate(chosen).options[0][1][0].params)["interval"] != 5


def test_a_pipeline_that_fails_on_its_own_stops_the_search():
    class Failing(FakeRunner):
        def run(self, batch_id, candidates, cells):
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        make_search(TuneState(setup={}), Failing()).run()


def test_validation_falls_back_to_candidates_that_met_the_budget_below_the_top_rung(monkeypatch):
    """The time can end after promoting only candidates that miss the budget or are slower than the plain
    pipeline at the top rung (noisy first-rung timings); those that met it on fewer cells are then validated."""
    state = TuneState(setup={})
    s = make_search(state, FakeRunner())
    s.search()
    top, found = s.pool()
    assert top > 0 and found
    monkeypatch.setattr(s, "pool", lambda: (top, {c: {**m, "speedup": 0.5} for c, m in found.items()}))
    chosen = s.validate()
    assert chosen is not None
    assert s.budget.met(s.metrics(chosen, s.holdout_cells()))


def test_broad_options_a_pessimistic_first_bracket_left_out_are_measured_later(monkeypatch):
    """A cost estimate 10x too high trims the first bracket; the broad options it left out come back in the
    next brackets instead of staying registered and never measured."""
    clock = [0.0]
    monkeypatch.setattr(search_module.time, "perf_counter", lambda: clock[0])
    runner = FakeRunner(clock=clock)
    s = make_search(TuneState(setup={}, costs={"8": [15.0, 1.0]}), runner, time_limit=300.0)
    s.run()
    assert len(runner.calls[0][0]) < len(s.space.broad())  # the first bracket was trimmed
    unmeasured = [s.candidate(c).label for c in s.ids() if not s._measured(c, 0)]
    assert unmeasured == []
    assert clock[0] < 300.0 + 15
