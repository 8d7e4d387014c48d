"""Where a metric came from: versions, device, input hashes, weights check, commit, time.

Official weights check. torch-fidelity's file name weights-inception-2015-12-05-6726825d.pth
follows torch hub's convention: `torch.hub.download_url_to_file(..., hash_prefix=...)` /
`load_state_dict_from_url(check_hash=True)` take the part after the last '-' as
`hash_prefix` and require `sha256(file).hexdigest().startswith(hash_prefix)`. So
6726825d is the first 8 hex digits of the file's SHA-256. The full digest is not
published by torch-fidelity and the file cannot be downloaded here, so the check is
the 8-digit prefix (32 bits: it catches wrong or random-weight files, not a forgery).
Any other file makes a result
`uncalibrated`: its numbers are not comparable with the paper's.
"""

import datetime
import platform
from pathlib import Path

import numpy as np
import torch

from udit.io import git_commit, sha256_file

OFFICIAL_WEIGHTS_SHA256_PREFIX = "6726825d"  # from the file name; torch hub hash_prefix convention


def is_official_weights(sha256: str) -> bool:
    return sha256.startswith(OFFICIAL_WEIGHTS_SHA256_PREFIX)


def versions() -> dict[str, str]:
    import torch_fidelity
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_fidelity": torch_fidelity.__version__,
        "numpy": np.__version__,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return (
        f"{device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)"
    )


def collect(*, device: torch.device, weights: Path, files: dict[str, Path]) -> dict:
    """Provenance block of a metrics JSON; `files` maps a role ('samples') to a path."""
    weights_sha = sha256_file(weights)
    return {
        "versions": versions(),
        "device": device_name(device),
        "inception_weights": {
            "file": Path(weights).name,
            "sha256": weights_sha,
            "official": is_official_weights(weights_sha),
            "official_check": f"sha256 prefix {OFFICIAL_WEIGHTS_SHA256_PREFIX} "
            "(torch hub hash_prefix)",
        },
        "sha256": {role: sha256_file(path) for role, path in files.items()},
        "files": {role: Path(path).name for role, path in files.items()},
        "git_commit": git_commit(),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
