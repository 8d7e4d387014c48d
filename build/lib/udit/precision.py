"""Numeric precision of training and sampling: one option, `tf32 | bf16 | fp32`.

    autocast = set_precision("tf32", device)   # matmul/cuDNN switches set; -> autocast context
    with autocast:
        out = model(x, t, y=y)

  tf32 : fp32 weights and activations, TF32 tensor-core matmuls and convolutions on CUDA. The
         default: the official U-DiT / DiT train.py and sample_ddp.py set
         `torch.backends.cuda.matmul.allow_tf32 = True` and `torch.backends.cudnn.allow_tf32 =
         True` at import, so the paper's numbers were made this way.
  bf16 : autocast to bfloat16 (weights, optimiser and EMA stay fp32), TF32 for what autocast
         leaves in fp32. A documented deviation from the paper, for speed; on CPU it runs too
         (CPU autocast) so its tests need no GPU.
  fp32 : strict fp32 everywhere (TF32 off): the slow exact path.
On CPU, tf32 and fp32 compute the same thing (TF32 is a CUDA tensor-core mode).
The switches are set from options when a job starts, never at import (style.md).
"""

import contextlib

PRECISIONS = ("tf32", "bf16", "fp32")
DEFAULT_PRECISION = "tf32"  # official train.py / sample_ddp.py: TF32 on


def check_precision(precision: str) -> str:
    from udit.errors import BadValueError

    if precision not in PRECISIONS:
        raise BadValueError(
            f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    return precision


def set_precision(precision: str, device):
    """Set the TF32 switches for `precision` on `device` (a torch.device); -> the autocast
    context a forward pass runs in (a no-op context unless bf16)."""
    import torch

    check_precision(precision)
    if device.type == "cuda":
        tf32 = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
