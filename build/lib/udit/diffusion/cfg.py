"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper the samplers can call directly.

    cfg_model = ClassifierFreeGuidance(model, cfg_scale=1.5)
    z0 = diffusion.p_sample_loop(cfg_model, z.shape, z, model_kwargs=dict(y=y))

Each call runs the model once on [x | x] with labels [y | null], then
    eps = eps_uncond + s * (eps_cond - eps_uncond)
on the first GUIDED_CHANNELS channels, as the official DiT / U-DiT `forward_with_cfg` does ("for
exact reproducibility reasons, we apply classifier-free guidance on only three channels by default"
— DiT models.py, the paper numbers were sampled this way). The remaining eps channel and the
learned-sigma channels come from the conditional half, which is the half DiT's sample_ddp.py keeps.
guidance_channels="all" guides every eps channel (the textbook form).

Unlike DiT, the caller does not double the batch: the wrapper takes N samples and returns N outputs,
so sampling noise is drawn for N samples only and stays tied to each sample's own generator.
"""

import torch
from torch import nn

from udit.paper import recipe

# DiT models.py forward_with_cfg: `eps, rest = model_out[:, :3], model_out[:, 3:]`.
GUIDED_CHANNELS = recipe().guidance_channels


class ClassifierFreeGuidance(nn.Module):
    """Wraps `model(x, t, y)`; null_class defaults to model.num_classes (the label-dropout row).

    guidance_channels: an int (or its digits as a string, e.g. "3") or "all".
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        cfg_scale: float,
        null_class: int | None = None,
        guidance_channels: int | str = GUIDED_CHANNELS,
    ):
        super().__init__()
        if not float(cfg_scale) == float(cfg_scale) or cfg_scale < 0:  # rejects NaN and negatives
            raise ValueError(f"cfg_scale must be a number >= 0, got {cfg_scale!r}")
        if null_class is None:
            null_class = getattr(model, "num_classes", None)
            if null_class is None:
                raise ValueError(
                    "model has no num_classes attribute; pass null_class= (the index of "
                    "the unconditional label, num_classes in DiT)"
                )
        if isinstance(guidance_channels, str) and guidance_channels.isdigit():
            guidance_channels = int(guidance_channels)  # "3" as a CLI passes it
        if guidance_channels != "all" and (
            not isinstance(guidance_channels, int) or guidance_channels < 1
        ):
            raise ValueError(
                f"guidance_channels must be a positive int or 'all', got {guidance_channels!r}"
            )
        self.model = model
        self.cfg_scale = float(cfg_scale)
        self.null_class = int(null_class)
        self.guidance_channels = guidance_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.cfg_scale == 1.0:
            return self.model(x, t, y=y, **kwargs)  # no guidance, no doubled batch
        n = x.shape[0]
        out = self.model(
            torch.cat([x, x]),
            torch.cat([t, t]),  # (2N, C, H, W)
            y=torch.cat([y, torch.full_like(y, self.null_class)]),
            **kwargs,
        )
        cond, uncond = out[:n], out[n:]  # (N, 2C, H, W) each
        k = x.shape[1] if self.guidance_channels == "all" else self.guidance_channels
        if k > x.shape[1]:
            raise ValueError(f"guidance_channels={k} exceeds the {x.shape[1]} eps channels")
        guided = uncond[:, :k] + self.cfg_scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([guided, cond[:, k:]], dim=1)  # (N, 2C, H, W)
