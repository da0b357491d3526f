"""The ``vidaccel`` command line: one parser tree, one error type, one exit-code convention.

Subcommands, one module each: ``generate``, ``bench``, ``tune``, ``long``, ``convert``, ``linearize``, ``info`` and
``train-embedded`` (the last runs the source checkout's ``training/``). Every module has ``add_parser(sub)``
and ``run(args)``; building the parser imports nothing heavy, so ``vidaccel -h`` and argument errors are fast.

Exit codes: 0 success; 2 a user error (one line on stderr naming the value and what is allowed, no traceback,
before any model is loaded or any step runs); 1 a run that did not keep its promise (non-finite frames, an
encoder, disk or file-size failure: one line saying what was and was not written); 130 interrupted (Ctrl-C or
SIGTERM; an mp4 being written is finished or left untouched, never cut short).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Sequence

from . import bench, convert, generate, info, linearize, long, train, tune
from .common import CliError, Parser, say

__all__ = ["main", "build_parser", "CliError"]

_COMMANDS = (generate, info, bench, tune, long, convert, linearize, train)


def build_parser() -> Parser:
    parser = Parser(prog="vidaccel", description="Fast Wan / CogVideoX video generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "train-embedded":  # parsed by the training module itself
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return train.run_passthrough(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    start = time.perf_counter()
    code = args.func(args)
    logging.getLogger(__name__).info("done in %.1fs", time.perf_counter() - start)
    return code


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    # import-time notices of transformers, diffusers, torchao and torch (missing CUDA extensions, deprecations) are
    # noise on a command line whose errors are one line
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops a command like Ctrl-C: files being written are finished or removed, never left half-written
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except CliError as e:
        from ..parallel.launch import reports_error

        if reports_error(e):  # argument errors under torchrun: once, not once per rank
            print(say(f"error: {e}"), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a disk, permission or encoder failure outside the commands' own checks
        print(say(f"error: {e}"), file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
