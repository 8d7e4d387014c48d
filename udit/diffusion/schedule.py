"""Noise schedules and timestep respacing, in float64 numpy.

Betas follow DiT's `get_named_beta_schedule` (facebookresearch/DiT diffusion/gaussian_diffusion.py):
DDPM's linear 1e-4..0.02 over 1000 steps, stretched for other step counts so the total noise stays
the same. Respacing follows DiT's `space_timesteps` and `SpacedDiffusion`: keep a subset of the
original steps and recompute each kept beta from the alphas_cumprod of consecutive kept steps, so
the respaced chain reaches exactly the same noise levels as the original one at the kept steps.
"""

import math

import numpy as np

from udit.paper import recipe

# DDPM (Ho et al. 2020, sec. 4) linear schedule, the one DiT and U-DiT train with (train.py:
# create_diffusion(timestep_respacing="") -> 1000 steps, "linear"): T from the recipe.
NUM_TRAIN_TIMESTEPS = recipe().diffusion_steps
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
# IDDPM (Nichol & Dhariwal 2021, eq. 17): cosine alpha_bar, offset s=0.008, betas capped at 0.999.
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999

NOISE_SCHEDULES = ("linear", "squaredcos_cap_v2")


def named_betas(*, name: str, num_steps: int) -> np.ndarray:
    """Betas (num_steps,) float64 of a named schedule."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if name == "linear":
        # Scaling by 1000/T keeps beta_t * T (the noise added per unit of "time") fixed.
        scale = NUM_TRAIN_TIMESTEPS / num_steps
        return np.linspace(
            scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_steps, dtype=np.float64
        )
    if name == "squaredcos_cap_v2":

        def alpha_bar(s: float) -> float:
            return math.cos((s + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

        steps = np.arange(num_steps, dtype=np.float64)
        ratios = np.array(
            [alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps) for i in steps]
        )
        return np.minimum(1.0 - ratios, COSINE_MAX_BETA)
    raise ValueError(f"unknown noise_schedule {name!r}; choose one of {NOISE_SCHEDULES}")


def space_timesteps(*, num_timesteps: int, section_counts: str | int | list[int]) -> list[int]:
    """Sorted original step indices to keep.

    section_counts: "250" (or 250) -> 250 steps spread evenly over [0, num_timesteps - 1];
    "10,15,20" -> split the process into 3 equal sections, keep 10/15/20 evenly in each;
    "ddim50" -> the integer stride of the DDIM paper, range(0, num_timesteps, stride).
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            count = _parse_int(spec[len("ddim") :], spec)
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == count:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"timestep_respacing {spec!r}: no integer stride gives exactly {count} "
                f"of {num_timesteps} steps"
            )
        counts = [_parse_int(part, spec) for part in spec.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"timestep_respacing needs positive step counts, got {section_counts!r}")

    # Sections differ in size by at most one step; the first `extra` sections get the extra step.
    base, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"timestep_respacing {section_counts!r}: cannot keep {count} steps "
                f"of a section of {size}"
            )
        # Fractional stride so that both ends of the section are kept; round() is Python's
        # round-half-to-even, as in DiT (it decides which of two tied steps is kept).
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(kept))


def respace_betas(*, betas: np.ndarray, use_timesteps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the chain visiting only `use_timesteps`, and the map respaced index -> original t.

    beta'_i = 1 - alpha_bar[k_i] / alpha_bar[k_{i-1}] (alpha_bar[k_{-1}] = 1), so that
    prod_{j<=i} (1 - beta'_j) = alpha_bar[k_i]: the kept noise levels are unchanged.
    """
    kept = sorted({int(k) for k in use_timesteps})
    if not kept or kept[0] < 0 or kept[-1] >= len(betas):
        raise ValueError(
            f"use_timesteps must lie in [0, {len(betas) - 1}], got {kept[:3]}...{kept[-3:]}"
        )
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    kept_cumprod = alphas_cumprod[kept]
    previous = np.append(1.0, kept_cumprod[:-1])
    return 1.0 - kept_cumprod / previous, np.asarray(kept, dtype=np.int64)


def _parse_int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"timestep_respacing {spec!r}: {text!r} is not an integer step count "
            f"(use e.g. '250', '10,20,30' or 'ddim50')"
        ) from None
