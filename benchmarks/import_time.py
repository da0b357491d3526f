"""Cold-start cost of vidaccel: ``import vidaccel`` and ``vidaccel -h``, each in a fresh interpreter.

Prints the median wall time of ``--runs`` fresh processes per command, the cumulative ``-X importtime`` of
``vidaccel`` itself, and which heavy packages the import pulls in. ``--src`` measures another checkout (e.g. an
older commit in a git worktree) through ``PYTHONPATH``.

    python benchmarks/import_time.py                       # this checkout
    python benchmarks/import_time.py --src /tmp/oldtree    # another one
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


def _wall(cmd: list[str], env: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(src: str | None, runs: int) -> dict:
    env = _env(src)
    py = sys.executable
    probe = ("import sys, vidaccel; import json; print(json.dumps({m: m in sys.modules for m in %r}))" % (HEAVY,))
    loaded = json.loads(subprocess.run([py, "-c", probe], env=env, capture_output=True, text=True).stdout.strip()
                        .splitlines()[-1])
    trace = subprocess.run([py, "-X", "importtime", "-c", "import vidaccel"], env=env, capture_output=True,
                           text=True).stderr
    cumulative = next(int(line.split("|")[1]) for line in trace.splitlines()
                      if line.startswith("import time:") and line.rstrip().endswith("| vidaccel"))
    return {
        "import_vidaccel_s": round(_wall([py, "-c", "import vidaccel"], env, runs), 3),
        "vidaccel_help_s": round(_wall([py, "-m", "vidaccel.cli", "-h"], env, runs), 3),
        "python_startup_s": round(_wall([py, "-c", "pass"], env, runs), 3),
        "importtime_vidaccel_us": cumulative,
        "imports": loaded,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=None, help="checkout to measure (default: the installed / current one)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.src, args.runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
