"""Our models against the official code's outputs (tests/golden/golden_checks.py), on every CPU.

MKL picks its kernels by CPU: the float32 sin/cos of the timestep sinusoids (VML) and the GEMMs
differ in the last bits between CPU generations, and the random-weight tiny models carry that to
~5e-6 at the output (measured: DiT 4.9e-6, U-DiT up to 5.6e-5 on an AVX-512/AMX Xeon, where the
float64 limit is 1e-12). With MKL_CBWR=COMPATIBLE MKL runs one code path on every x86 CPU, and
the golden files match it bitwise (DiT) or at float64 round-off. MKL reads the variable once, at
its first call, so the checks run in a child process that has it from the start; the rest of the
suite keeps MKL's fast path.
"""

import os
import subprocess
import sys
from pathlib import Path

CHECKS = Path(__file__).parent / "golden" / "golden_checks.py"
NUM_CHECKS = 11  # 4 cases x (train, eval) + 2 guided + 1 repeated eval


if os.environ.get("MKL_CBWR") == "COMPATIBLE":
    # Already on the portable path (the README's mutmut command runs so): the checks run in this
    # process, where mutmut sees which functions each one reaches.
    from golden.golden_checks import *

else:

    def test_models_match_the_official_outputs_on_mkls_portable_path():
        env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)]
        child = subprocess.run(
            argv, check=False, env=env, capture_output=True, text=True, timeout=600
        )
        report = child.stdout[-6000:] + child.stderr[-2000:]
        assert child.returncode == 0, report
        assert f"{NUM_CHECKS} passed" in child.stdout, report  # every check ran, none was dropped
