"""``vidaccel info``: versions, device, kernel backends, techniques and presets."""

from __future__ import annotations

import importlib
import json
import os


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="versions, device, usable kernel backends")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=run)


def run(args) -> int:
    import platform

    import torch

    from .. import __version__
    from ..accel import load_techniques
    from ..accel import available_presets
    from ..kernels import available_backends

    def version(mod: str) -> str:
        try:
            return importlib.import_module(mod).__version__
        except Exception:
            return "not installed"

    data = {
        "vidaccel": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": version("diffusers"),
        "transformers": version("transformers"),
        "triton": version("triton"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "kernel_backends": available_backends(),
        "techniques": [t.__name__ for t in load_techniques()],
        "presets": available_presets(),
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{key:<{width}}")
            for k, v in value.items():
                print(f"  {k:<{width - 2}} {v}")
        else:
            print(f"{key:<{width}} {', '.join(value) if isinstance(value, list) else value}")
    return 0
