"""``vidaccel tune`` on the tiny pipelines: the budget holds on held-out prompts, the preset file loads through
every door, an interrupted session resumes, per-expert configs, CogVideoX, the command line, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import vidaccel
from vidaccel.accel import CacheConfig, RoleConfigs, resolve_accel, write_preset
from vidaccel.metrics import psnr
from vidaccel.tune import measure as measure_module
from vidaccel.tune.state import TuneState

from .conftest import make_pipeline

PROMPTS = ["a red circle moving right", "a blue square moving left", "a green ball moving up",
           "a white box still", "a cat on the sea"]


def kwargs_for(pipe, steps=8):
    from vidaccel.testing import tiny_call_kwargs

    kw = tiny_call_kwargs(pipe, num_inference_steps=steps)
    kw.pop("output_type")
    return kw


def frames(pipe, prompt, kw, seed=0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return pipe(prompt=prompt, generator=generator, output_type="np", **kw).frames[0]


def held_out_psnr(pipe, configs, prompts, kw) -> float:
    """Mean PSNR of ``configs`` against the plain pipeline on ``prompts``, computed apart from the tuner."""
    base = [frames(pipe, p, kw) for p in prompts]
    vidaccel.apply(pipe, configs)
    try:
        fast = [frames(pipe, p, kw) for p in prompts]
    finally:
        vidaccel.remove(pipe)
    return float(np.mean([min(psnr(f, b), 100.0) for f, b in zip(fast, base)]))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, one_thread):
    pipe = make_pipeline("wan21")
    out = tmp_path_factory.mktemp("tune") / "tuned.json"
    kw = kwargs_for(pipe)
    result = vidaccel.tune(pipe, PROMPTS, budget="psnr=40", time_limit=900, techniques=["cache"], call_kwargs=kw,
                           output=out, max_candidates=6, max_brackets=2, progress=False)
    return pipe, result, out, kw


def test_tuned_configuration_meets_the_budget_on_held_out_prompts(tuned):
    pipe, result, out, kw = tuned
    assert result.configs and result.holdout is not None
    assert result.setup["prompts"]["holdout"] == PROMPTS[-1:]
    measured = held_out_psnr(pipe, result.configs, PROMPTS[-1:], kw)
    assert measured >= 40.0
    assert measured == pytest.approx(result.holdout["psnr"], abs=1e-9)
    assert result.search["psnr"] >= 40.0 and result.search["speedup"] > 0
    # every tried configuration is in the table, the chosen one marked; a plot and the state beside the preset
    table = (out.parent / "tuned.md").read_text()
    assert table.count("\n| ") >= len(result.rows) and table.count("| ★ |") == 1
    assert (out.parent / "tuned.png").read_bytes()[:4] == b"\x89PNG"
    state = TuneState.load(str(out.parent / "tuned.state.json"))
    assert state.finished and len(state.candidates) == len(result.rows)
    doc = json.loads(out.read_text())
    assert doc["budget"] == {"psnr": 40.0} and doc["device"]["type"] == "cpu" and "torch" in doc["versions"]
    assert doc["front"] and doc["measured"]["holdout"]["psnr"] == pytest.approx(result.holdout["psnr"])


def test_tuned_json_loads_through_apply_from_pretrained_and_the_cli(tuned, tmp_path, capsys):
    from vidaccel.bench import bench_configs_from_names
    from vidaccel.cli import main
    from vidaccel.pipelines import WanPipeline

    pipe, result, out, kw = tuned
    assert resolve_accel(str(out)) == list(result.configs)
    vidaccel.apply(pipe, *result.configs)
    direct = frames(pipe, PROMPTS[0], kw)
    vidaccel.remove(pipe)
    vidaccel.apply(pipe, str(out))
    np.testing.assert_array_equal(frames(pipe, PROMPTS[0], kw), direct)
    vidaccel.remove(pipe)
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    loaded = WanPipeline.from_pretrained(folder, accel=str(out))
    loaded.set_progress_bar_config(disable=True)
    assert vidaccel.applied(loaded) == ["cache"]
    np.testing.assert_array_equal(frames(loaded, PROMPTS[0], kw), direct)
    clip = tmp_path / "clip.mp4"
    code = main(["generate", PROMPTS[0], "--model", str(folder), "--preset", str(out), "-o", str(clip), "--frames", "9",
                 "--height", "32", "--width", "32", "--steps", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert clip.stat().st_size > 0 and f"accelerated cache (preset {out})" in captured.out
    assert main(["generate", "x", "--preset", str(tmp_path / "nope.json")]) == 2
    assert "no such preset file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "vidaccel-preset", "version": 1, "configs": [{"type": "CacheConfig",
                                                                                     "args": {"interval": 0}}]}))
    assert main(["generate", "x", "--model", str(folder), "--preset", str(bad), "-o", str(clip)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "configs[0] (CacheConfig): CacheConfig.interval=0 is not allowed" in err
    assert [c.name for c in bench_configs_from_names([str(out)])] == [str(out)]


def test_tune_resumes_after_interruption_without_repeating_a_run(tmp_path, monkeypatch, one_thread):
    pipe = make_pipeline("wan21")
    kw = kwargs_for(pipe, steps=6)
    out = tmp_path / "t.json"
    args = dict(budget="psnr=35", time_limit=900, techniques=["cache"], call_kwargs=kw, output=out, max_candidates=4,
                max_brackets=1, progress=False)
    real_run = measure_module.Runner.run
    calls = []

    def interrupting(self, *a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real_run(self, *a, **k)

    monkeypatch.setattr(measure_module.Runner, "run", interrupting)
    with pytest.raises(KeyboardInterrupt):
        vidaccel.tune(pipe, PROMPTS, **args)
    first = TuneState.load(str(tmp_path / "t.state.json"))
    assert len(first.records) > 0 and first.batches == 3 and not first.finished
    assert vidaccel.applied(pipe) == []  # an interrupted batch leaves the pipeline plain

    runs = []

    def counting(self, *a, **k):
        records = real_run(self, *a, **k)
        runs.extend(records)
        return records

    monkeypatch.setattr(measure_module.Runner, "run", counting)
    with pytest.raises(ValueError, match="was made with another setup .*budget"):
        vidaccel.tune(pipe, PROMPTS, **{**args, "budget": "psnr=36"})
    result = vidaccel.tune(pipe, PROMPTS, **args)
    final = TuneState.load(str(tmp_path / "t.state.json"))
    assert final.records[:len(first.records)] == first.records
    assert len(final.records) == len(first.records) + len(runs)
    assert final.elapsed_s >= first.elapsed_s and final.finished
    measured = [(r["cand"], r["split"], r["p"], r["seed"], r["steps"], r["rep"]) for r in final.records
                if r["cand"] != "baseline"]
    assert len(measured) == len(set(measured))
    assert result.rows and result.holdout is not None


def test_refuses_what_it_cannot_check_before_any_run(tmp_path, monkeypatch):
    pipe = make_pipeline("wan21")
    calls = []
    monkeypatch.setattr(measure_module.Runner, "warm_up", lambda self, steps: calls.append(steps) or 1.0)
    kw = kwargs_for(pipe)
    cases = [
        (dict(budget="adherence-drop=0.02"), "budget adherence-drop=0.02 cannot be checked: adherence is scored by the "
                                             "shapes scorer"),
        (dict(budget="fps=3"), "budget 'fps' is not allowed"),
        (dict(budget="psnr=30", prompts=PROMPTS[:1]), "tuning needs at least 2"),
        (dict(budget="psnr=30", prompts=[PROMPTS[0], PROMPTS[0]]), "prompts must be distinct"),
        (dict(budget="psnr=30", techniques=["warp"]), "techniques=['warp'] is not allowed"),
        (dict(budget="psnr=30", techniques=["linear_attention"]), "needs adapter="),
        (dict(budget="psnr=30", time_limit=0), "time_limit=0 is not allowed"),
        (dict(budget="psnr=30", output=str(tmp_path / "x.txt")), "must end in .json"),
        (dict(budget="psnr=30", low_steps=8), "low_steps=8 is not allowed: it must be below the full 8 steps"),
        (dict(budget="psnr=30", seeds=[1, 1]), "seeds=[1, 1] is not allowed"),
    ]
    for extra, needle in cases:
        args = dict(prompts=PROMPTS, call_kwargs=kw, output=str(tmp_path / "t.json"), progress=False)
        args.update(extra)
        with pytest.raises(ValueError) as e:
            vidaccel.tune(pipe, args.pop("prompts"), **args)
        assert needle in str(e.value), (extra, str(e.value))
    vidaccel.apply(pipe, CacheConfig())
    with pytest.raises(ValueError, match="already has \\['cache'\\] applied"):
        vidaccel.tune(pipe, PROMPTS, budget="psnr=30", call_kwargs=kw, output=None, progress=False)
    vidaccel.remove(pipe)
    assert calls == [] and not list(tmp_path.iterdir())


def test_per_role_configs_apply_to_their_own_expert(tmp_path, one_thread):
    from vidaccel.core.technique import attached

    pipe = make_pipeline("wan22")
    kw = kwargs_for(pipe)
    base = frames(pipe, PROMPTS[0], kw)
    fast = CacheConfig(threshold=float("inf"), policy="call", interval=3, warmup_steps=2, final_steps=0)
    slow = CacheConfig(threshold=float("inf"), policy="call", interval=2, warmup_steps=2, final_steps=0)
    vidaccel.apply(pipe, {"transformer": [], "transformer_2": [fast]})
    only_low = frames(pipe, PROMPTS[0], kw)
    assert list(attached(pipe.transformer)) == [] and list(attached(pipe.transformer_2)) == ["cache"]
    assert list(vidaccel.stats(pipe)["cache"]) == ["transformer_2"]
    assert not np.array_equal(only_low, base)
    vidaccel.remove(pipe)
    np.testing.assert_array_equal(frames(pipe, PROMPTS[0], kw), base)
    both = RoleConfigs({"transformer": [slow], "transformer_2": [fast]})
    vidaccel.apply(pipe, both)  # the same technique with other settings per expert
    mixed = frames(pipe, PROMPTS[0], kw)
    vidaccel.remove(pipe)
    path = write_preset(tmp_path / "roles.json", both)
    vidaccel.apply(pipe, path)
    np.testing.assert_array_equal(frames(pipe, PROMPTS[0], kw), mixed)
    vidaccel.remove(pipe)
    with pytest.raises(ValueError, match="the same technique was given more than once"):
        vidaccel.apply(pipe, {"transformer": [fast, slow]})
    with pytest.raises(ValueError, match="per-role configs are given for transformer_2, but the target's transformers "
                                         "are transformer"):
        vidaccel.apply(make_pipeline("wan21"), path)
    assert vidaccel.applied(pipe) == []


def test_tune_on_wan22_tries_per_expert_settings(tmp_path, one_thread):
    pipe = make_pipeline("wan22")
    kw = kwargs_for(pipe)
    result = vidaccel.tune(pipe, PROMPTS, budget="psnr=35", time_limit=900, techniques=["cache"], call_kwargs=kw,
                           output=tmp_path / "w22.json", max_candidates=4, max_brackets=2, progress=False)
    assert any(r["label"].startswith("transformer: ") for r in result.rows)  # one expert moved
    if result.configs:
        assert held_out_psnr(pipe, result.configs, PROMPTS[-1:], kw) >= 35.0
        assert resolve_accel(str(tmp_path / "w22.json")) == (
            [result.configs] if isinstance(result.configs, RoleConfigs) else list(result.configs))


def test_tune_on_cogvideox_with_sliding_windows(tmp_path, one_thread):
    pipe = make_pipeline("cogvideox-1.0")
    kw = kwargs_for(pipe)
    result = vidaccel.tune(pipe, PROMPTS, budget="psnr=30", time_limit=900, techniques=["cache", "sliding_window"],
                           call_kwargs=kw, output=tmp_path / "cog.json", max_candidates=8, max_brackets=1,
                           progress=False)
    labels = [r["label"] for r in result.rows]
    assert any(label.startswith("window") for label in labels) and any(label.startswith("cache") for label in labels)
    assert not any("cfg/" in label for label in labels)  # CogVideoX batches its CFG branches
    assert result.configs
    assert held_out_psnr(pipe, result.configs, PROMPTS[-1:], kw) >= 30.0


def test_cli_tune_writes_the_preset_table_and_plot(tmp_path, capsys, one_thread):
    from vidaccel.cli import main

    folder = tmp_path / "pipe"
    make_pipeline("wan21").save_pretrained(folder)
    out = tmp_path / "cli.json"
    prompts = [a for p in PROMPTS[:4] for a in ("--prompt", p)]
    code = main(["tune", str(folder), *prompts, "--budget", "psnr=30", "--minutes", "0.3", "--techniques", "cache",
                 "--frames", "9", "--height", "32", "--width", "32", "--steps", "6", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote" in captured.out and "| configuration |" in captured.out
    for suffix in (".json", ".md", ".png", ".state.json"):
        assert (tmp_path / f"cli{suffix}").stat().st_size > 0
    assert main(["tune", str(folder), *prompts, "--budget", "psnr=30", "-o", str(tmp_path / "x.yaml")]) == 2
    assert "--output='" in capsys.readouterr().err
    assert main(["tune", "--prompt", "a", "--prompt", "b", "--budget", "ssim=2"]) == 2
    assert "--budget: budget ssim=2.0 is not allowed" in capsys.readouterr().err


SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    torch.set_num_threads(1)
    rank, folder = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    import vidaccel
    from vidaccel.testing import tiny_wan_pipeline, tiny_call_kwargs
    pipe = tiny_wan_pipeline()
    kw = tiny_call_kwargs(pipe, num_inference_steps=6); kw.pop("output_type")
    prompts = ["a red circle moving right", "a blue square moving left", "a green ball moving up", "a cat on the sea"]
    out = os.path.join(folder, f"rank{rank}", "tuned.json")
    result = vidaccel.tune(pipe, prompts, budget="psnr=30", time_limit=600, techniques=["cache"], call_kwargs=kw,
                           output=out, max_candidates=3, max_brackets=1, progress=False)
    with open(os.path.join(folder, f"result{rank}.json"), "w") as f:
        json.dump({"label": result.label, "rows": [r["id"] for r in result.rows], "search": result.search}, f)
    dist.destroy_process_group()
""")


def test_two_processes_run_the_same_candidates_and_only_rank_0_writes(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error"}
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1  # rank 0's measurements decided for both
    assert (tmp_path / "rank0" / "tuned.json").is_file() and (tmp_path / "rank0" / "tuned.state.json").is_file()
    assert not (tmp_path / "rank1").exists()


def test_tune_searches_the_layer_count_of_a_linear_attention_adapter(tmp_path, one_thread):
    from vidaccel.accel import LinearAttentionConfig
    from vidaccel.accel.linear_attention import save_adapter
    from vidaccel.core.technique import attached

    pipe = make_pipeline("wan21")
    vidaccel.apply(pipe, LinearAttentionConfig(layers=[0, 2, 3]))  # an (untrained) adapter of 3 layers
    adapter = save_adapter(tmp_path / "la.safetensors", {"transformer": attached(pipe.transformer)["linear_attention"]})
    vidaccel.remove(pipe)
    kw = kwargs_for(pipe, steps=4)
    result = vidaccel.tune(pipe, PROMPTS, budget="psnr=10", time_limit=900, techniques=["linear_attention"],
                           adapter=adapter, call_kwargs=kw, output=tmp_path / "la.json", max_brackets=2,
                           progress=False)
    tried = {r["label"] for r in result.rows if r["search"]}
    assert {"linear-attention 3 layers", "linear-attention 2 layers"} <= tried
    assert "linear-attention 1 layer" in tried  # a neighbour of the broad points, tried in the second bracket
    for row in result.rows:
        assert json.loads(row["configs"])[0]["args"]["adapter"] == adapter
