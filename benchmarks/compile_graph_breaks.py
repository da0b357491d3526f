"""``torch.compile`` with each technique: graph breaks per transformer call, and what a pipeline call compiles.

On the embedded ``shapes-t2v`` model (CPU): the technique is applied, then ``pipe.transformer =
torch.compile(pipe.transformer)`` (the recommended order; compiling first works too and recompiles once). Per
technique:

* ``torch._dynamo.explain`` of one transformer call (the pipeline's first call's arguments, after a warm-up
  pipeline call): graphs, graph breaks, and the break reasons;
* a whole pipeline call with a counting backend (dynamo's graphs run eagerly, so no inductor time): graphs
  compiled on the first call, graphs compiled again on the second call (recompiles), graph breaks counted by
  dynamo, transformer calls.

    python benchmarks/compile_graph_breaks.py
    python benchmarks/compile_graph_breaks.py --record-only   # figures.json from the existing JSON

Writes benchmarks/results/compile_graph_breaks.json and .md, and records the table in
benchmarks/results/figures.json. ``STEPS`` (environment, default 4) sets the denoising steps of a pipeline call.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import add_record_options, command_line, describe_machine, machine, print_table, run_date  # noqa: E402

import vidaccel  # noqa: E402
from vidaccel import LinearAttentionConfig, QuantConfig, SlidingWindowConfig  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PROMPT = "a red circle moving right on a black background"
TECHNIQUES = {
    "none": [],
    "cache (preset fast)": ["fast"],
    "sliding_window": [SlidingWindowConfig(window=(3, 8, 8))],
    "quant fp8": [QuantConfig(format="fp8")],
    "quant nvfp4": [QuantConfig(format="nvfp4")],
    "quant fp8, measure_sqnr off": [QuantConfig(format="fp8", measure_sqnr="off")],
    "linear_attention": [LinearAttentionConfig(layers=[0], feature_map="elu")],
}


def run(pipe, steps):
    kw = dict(pipe.vidaccel_model["defaults"], num_inference_steps=steps, output_type="np")
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).frames


def measure(label, configs, steps):
    from torch._dynamo.utils import counters

    pipe = vidaccel.load_pipeline("embedded", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    if configs:
        vidaccel.apply(pipe, *configs)
    inner = pipe.transformer
    captured, calls = {}, [0]

    def grab(module, args, kwargs):
        calls[0] += 1
        if not captured:
            captured.update(kwargs)
            captured["args"] = args

    handle = inner.register_forward_pre_hook(grab, with_kwargs=True)
    run(pipe, steps)  # warm-up: technique state, captured arguments
    handle.remove()
    calls_per_pipeline = calls[0]
    args = captured.pop("args")
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(inner)(*args, **captured)
    reasons = collections.Counter(str(getattr(r, "reason", r)).splitlines()[0][:120]
                                  for r in explanation.break_reasons)

    torch._dynamo.reset()
    counters.clear()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    pipe.transformer = torch.compile(inner, backend=backend)
    run(pipe, steps)
    first = len(graphs)
    breaks_first = sum(counters["graph_break"].values())
    run(pipe, steps)
    row = {"technique": label, "explain_graphs_per_call": explanation.graph_count,
           "explain_breaks_per_call": explanation.graph_break_count,
           "graphs_compiled_call1": first, "graphs_compiled_call2": len(graphs) - first,
           "dynamo_graph_breaks_call1": breaks_first, "transformer_calls_per_pipeline_call": calls_per_pipeline,
           "break_reasons": dict(reasons.most_common(6))}
    vidaccel.remove(pipe)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_record_options(ap)
    args = ap.parse_args()
    if args.record_only:
        with open(os.path.join(RESULTS, "compile_graph_breaks.json")) as f:
            record_figures(json.load(f))
        return 0
    warnings.filterwarnings("ignore")
    logging.getLogger("vidaccel").setLevel(logging.ERROR)
    steps = int(os.environ.get("STEPS", "4"))
    rows = [measure(label, configs, steps) for label, configs in TECHNIQUES.items()]
    cols = ["technique", "explain_graphs_per_call", "explain_breaks_per_call", "graphs_compiled_call1",
            "graphs_compiled_call2", "dynamo_graph_breaks_call1", "transformer_calls_per_pipeline_call"]
    table = print_table(rows, cols)
    for r in rows:
        print(r["technique"], r["break_reasons"])
    command = command_line() if steps == 4 else f"STEPS={steps} {command_line()}"
    result = {"benchmark": "compile_graph_breaks", "command": command, "machine": machine(),
              "model": "embedded shapes-t2v (fp32, CPU)",
              "steps": steps, "order": "apply, then pipe.transformer = torch.compile(pipe.transformer)", "rows": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "compile_graph_breaks.json"), "w") as f:
        json.dump(result, f, indent=2)
    reasons = "\n".join(f"- {r['technique']}: {r['break_reasons'] or 'none'}" for r in rows)
    with open(os.path.join(RESULTS, "compile_graph_breaks.md"), "w") as f:
        f.write(f"# torch.compile graph breaks per technique\n\n`{command}`"
                f" — {result['machine']['date']}, torch {result['machine']['torch']}, embedded shapes-t2v on CPU; "
                f"order: apply, then compile.\n\n{table}\n\nBreak reasons (explain, one transformer call):\n\n{reasons}\n")
    if args.record:
        record_figures(result)
    return 0


def record_figures(result: dict) -> None:
    """Put the current table (from a compile_graph_breaks.json) into figures.json, RESULTS.md's source."""
    from figures import record

    rows = [[r["technique"], r["explain_graphs_per_call"], r["explain_breaks_per_call"], r["graphs_compiled_call1"],
             r["graphs_compiled_call2"], r["dynamo_graph_breaks_call1"], r["transformer_calls_per_pipeline_call"]]
            for r in result["rows"]]
    reasons = []
    for r in result["rows"]:
        if r["break_reasons"]:
            top = "; ".join(f"{why} (×{n})" for why, n in list(r["break_reasons"].items())[:2])
            reasons.append(f"{r['technique']}: {top}")
    record("compile_graph_breaks", title="torch.compile: graph breaks per technique", command=result["command"],
           machine=describe_machine(result["machine"]), date=run_date(result["machine"]),
           model=f"{result['model']}, {result['steps']} steps per pipeline call",
           columns=["technique", "graphs / transformer call", "breaks / transformer call",
                    "graphs compiled, 1st pipeline call", "graphs compiled, 2nd pipeline call",
                    "graph breaks, 1st pipeline call", "transformer calls / pipeline call"], rows=rows,
           notes=[f"Order: {result['order']}. 'per transformer call': torch._dynamo.explain of one call with the "
                  "first call's arguments, after a warm-up pipeline call. Pipeline columns: a whole call through a "
                  "counting backend (dynamo's graphs run eagerly, no inductor); graphs compiled on the 2nd call are "
                  "recompiles.",
                  "The quant rows with the default measure_sqnr=\"first_call\" measure per-layer SQNR in the first "
                  "transformer call of each pipeline call: that call breaks into many graphs (1st-call columns), "
                  "the later calls, which explain sees, are one graph; measure_sqnr=\"off\" leaves the probe out.",
                  "Most frequent break reasons (explain): " + (" | ".join(reasons) if reasons else "none") + ".",
                  "Counts, not timings, on CPU with the torch of the machine column; on a GPU the techniques take "
                  "their Triton-kernel paths, whose breaks this run does not see."])


if __name__ == "__main__":
    sys.exit(main())
