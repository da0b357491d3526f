"""Cold-start cost of vidaccel: ``import vidaccel`` and ``vidaccel -h``, each in a fresh interpreter.

Prints the median wall time of ``--runs`` fresh processes per command, the cumulative ``-X importtime`` of
``vidaccel`` itself, and which heavy packages the import pulls in. ``--src`` measures another checkout (e.g. an
older commit in a git worktree) through ``PYTHONPATH``.

    python benchmarks/import_time.py                       # this checkout
    python benchmarks/import_time.py --src /tmp/oldtree    # another one
    python benchmarks/import_time.py --before /tmp/oldtree --before-label 54c9cff   # both, recorded in RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "diffusers", "diffusers.hooks", "transformers", "triton")


def _env(src: str | None) -> dict:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
    env.pop("TRITON_INTERPRET", None)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wall(cmd: list[str], env: dict, runs: int, cwd: str) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(src: str | None, runs: int) -> dict:
    env = _env(src)
    cwd = src or ROOT  # `python -c` puts the working directory first on sys.path
    py = sys.executable
    probe = ("import sys, vidaccel, json; print(vidaccel.__file__); "
             "print(json.dumps({m: m in sys.modules for m in %r}))" % (HEAVY,))
    loaded = json.loads(subprocess.run([py, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True)
                        .stdout.strip().splitlines()[-1])
    trace = subprocess.run([py, "-X", "importtime", "-c", "import vidaccel"], env=env, cwd=cwd, capture_output=True,
                           text=True).stderr
    cumulative = next(int(line.split("|")[1]) for line in trace.splitlines()
                      if line.startswith("import time:") and line.rstrip().endswith("| vidaccel"))
    return {
        "import_vidaccel_s": round(_wall([py, "-c", "import vidaccel"], env, runs, cwd), 3),
        "vidaccel_help_s": round(_wall([py, "-m", "vidaccel.cli", "-h"], env, runs, cwd), 3),
        "python_startup_s": round(_wall([py, "-c", "pass"], env, runs, cwd), 3),
        "importtime_vidaccel_us": cumulative,
        "imports": loaded,
    }


def _row(label: str, m: dict) -> list[str]:
    heavy = [name for name, loaded in m["imports"].items() if loaded]
    return [label, f"{m['import_vidaccel_s']:.2f} s", f"{m['vidaccel_help_s']:.2f} s",
            f"{m['importtime_vidaccel_us'] / 1e3:.1f} ms", ", ".join(heavy) or "none"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=None, help="checkout to measure (default: the installed / current one)")
    ap.add_argument("--before", default=None, help="an older checkout measured in the same run, for comparison")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    now = measure(args.src, args.runs)
    out = {"now": now}
    if args.before:
        out["before"] = measure(args.before, args.runs)
    print(json.dumps(out, indent=2))
    if args.before and args.src is None:
        from figures import record

        record("import_time", title="Cold start: import vidaccel and vidaccel -h", command="python benchmarks/"
               f"import_time.py --before <checkout of {args.before_label}> --before-label {args.before_label}",
               columns=["code", "import vidaccel", "vidaccel -h", "-X importtime of vidaccel", "heavy modules loaded"],
               rows=[_row(args.before_label, out["before"]), _row("current", now)],
               model=f"median of {args.runs} fresh processes each; python startup alone "
                     f"{now['python_startup_s']:.2f} s",
               figures={"import": f"{now['import_vidaccel_s']:.2f} s", "help": f"{now['vidaccel_help_s']:.2f} s"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
