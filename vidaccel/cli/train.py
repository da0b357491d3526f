"""``vidaccel train-embedded``: reproduce the embedded shapes models from a source checkout.

Training is not part of the installed package: this command runs ``training/train.py`` of the checkout the
package was installed from (``pip install -e .``), and writes to ``./embedded_models`` unless ``--out`` says
otherwise. Its arguments are parsed by that module.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import CliError


def add_parser(sub) -> None:
    sub.add_parser("train-embedded", help="reproduce the embedded shapes models (CPU, resumable; source checkout)",
                   add_help=False)


def training_root() -> Path | None:
    """The source checkout holding ``training/``, or ``None`` for an installed (non-editable) package."""
    import vidaccel

    root = Path(vidaccel.__file__).resolve().parents[1]
    return root if (root / "training" / "train.py").is_file() else None


def run_passthrough(argv: list[str]) -> int:
    root = training_root()
    if root is None:
        raise CliError("train-embedded needs a source checkout of vidaccel (the training/ folder is not installed "
                       "with the package): clone the repository, `pip install -e .` it and run the command there")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from training.train import main

    return main(argv)
