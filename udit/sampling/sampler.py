"""One batch of samples, a pure function of (seed, indices) and the model.

Reproducibility (edm2 idea): sample i depends only on (seed, i). Its label, initial noise and
every per-step noise come from CPU generators seeded by SeedSequence([seed, i, stream]), so the
result does not depend on the batch size, the number of processes or the device.
"""

import numpy as np
import torch

from udit.diffusion import ClassifierFreeGuidance
from udit.diffusion.noise import seeded_generator
from udit.errors import BadValueError

LABEL_STREAM, NOISE_STREAM = 0, 1  # SeedSequence words: labels and noise are independent streams


class NonFiniteSamplesError(BadValueError):
    """Sampling produced NaN or inf: written out they would be black pixels, not samples."""


class AutocastForward(torch.nn.Module):
    """model(...) under `autocast`, its output cast back to fp32 for the sampler's arithmetic."""

    def __init__(self, model: torch.nn.Module, autocast):
        super().__init__()
        self.model, self.autocast = model, autocast  # (sample_batch passes the null class)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        with self.autocast:
            return self.model(*args, **kwargs).float()


def sample_labels(*, seed: int, indices: list[int], num_classes: int, mode: str) -> torch.Tensor:
    """Labels (B,) int64. 'random': uniform draw per sample, like DiT sample_ddp.py's randint;
    'uniform': i % num_classes, so every class appears N / num_classes times."""
    if mode == "uniform":
        return torch.tensor([i % num_classes for i in indices], dtype=torch.long)
    if mode == "random":
        gens = [seeded_generator(seed, i, LABEL_STREAM) for i in indices]
        return torch.cat([torch.randint(num_classes, (1,), generator=g) for g in gens])
    raise BadValueError(f"unknown label mode {mode!r}; choose 'random' or 'uniform'")


@torch.no_grad()
def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in ~[-1, 1] -> uint8 as DiT sample_ddp.py: clamp(127.5 x + 128, 0, 255), then a
    truncating cast (so 0 -> 128, -1 -> 0, 1 -> 255)."""
    return torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)


def sample_batch(
    *,
    model,
    diffusion,
    vae,
    indices: list[int],
    seed: int,
    num_classes: int,
    labels: str,
    cfg_scale: float,
    guidance_channels,
    sampler: str,
    eta: float,
    shape: tuple[int, int, int],
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples `indices` -> (images (B, H, W, 3) uint8, labels (B,) int64); row k depends only on
    (seed, indices[k]): its own generator draws x_T first, then one noise per step."""
    y = sample_labels(seed=seed, indices=indices, num_classes=num_classes, mode=labels)
    gens = [seeded_generator(seed, i, NOISE_STREAM) for i in indices]
    guided = ClassifierFreeGuidance(
        model, cfg_scale=cfg_scale, null_class=num_classes, guidance_channels=guidance_channels
    )
    loop_kw = {
        "model_kwargs": {"y": y.to(device)},
        "device": device,
        "generator": gens,
        "clip_denoised": False,
    }
    batch_shape = (len(indices), *shape)
    if sampler == "ddpm":
        x = diffusion.p_sample_loop(guided, batch_shape, **loop_kw)  # (B, C, h, w)
    else:
        x = diffusion.ddim_sample_loop(guided, batch_shape, eta=eta, **loop_kw)
    _check_finite(x, indices, stage="the model's samples")
    if vae is not None:
        from udit.data.vae import LATENT_SCALE

        x = vae.decode(x / LATENT_SCALE).sample  # (B, 3, H, W) in ~[-1, 1]
        _check_finite(x, indices, stage="the VAE's decoded images (of finite latents)")
    images = to_uint8(x).permute(0, 2, 3, 1)  # (B, H, W, 3)
    return images.to("cpu", dtype=torch.uint8).numpy(), y.numpy().astype(np.int64)


def _check_finite(x: torch.Tensor, indices: list[int], *, stage: str) -> None:
    """NaN/inf would clamp to black (or white) pixels and score as real samples: refuse them."""
    finite = torch.isfinite(x.flatten(1)).all(dim=1)  # (B,)
    if not finite.all():
        bad = [indices[k] for k in torch.nonzero(~finite).flatten().tolist()]
        listed = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
        raise NonFiniteSamplesError(
            f"{stage} hold NaN/inf for {len(bad)} of {len(indices)} samples (indices {listed})"
        )
