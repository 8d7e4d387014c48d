"""`python -m udit.sampling ...` is `udit sample ...` (what torchrun's -m needs)."""

import sys

from udit.sampling.cli import main

if __name__ == "__main__":
    sys.exit(main())
