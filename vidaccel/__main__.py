"""``python -m vidaccel``: the command line (what ``torchrun ... -m vidaccel generate ...`` runs on each rank)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
