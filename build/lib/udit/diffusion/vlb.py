"""Terms of the variational lower bound (Ho et al. 2020 eq. 5; Nichol & Dhariwal 2021 sec. 3.1).

L_vlb = L_0 + sum_{t>0} L_{t-1} + L_T with
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   -> normal_kl
  L_0     = -log p(x_0 | x_1), a Gaussian discretised to 256 bins
            -> discretized_gaussian_log_likelihood
All values are elementwise, in nats; callers average and divide by ln 2 for bits.
"""

import math

import torch

# Half-width of one of 256 bins of data scaled to [-1, 1] (DDPM sec. 3.3: 2 / 255 / 2).
BIN_HALF_WIDTH = 1.0 / 255.0
# Outside +-(1 - 1e-3) the bin is the open-ended edge bin (pixel value 0 or 255).
EDGE = 0.999
# Floor inside log() so empty bins give a large finite penalty instead of -inf.
LOG_FLOOR = 1e-12


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise; arguments broadcast."""
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (
        a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
        for a in (logvar1, logvar2)
    )
    # 0.5 * (log s2^2/s1^2 + (s1^2 + (m1 - m2)^2) / s2^2 - 1)
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) by the tanh approximation of the GELU paper, as ADM/DiT use; |err| < 1.8e-4."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log P(bin of x) under N(means, exp(log_scales)^2), x uint8 data rescaled to [-1, 1].

    Interior bins integrate the density over [x - 1/255, x + 1/255]; the two edge bins extend
    to -inf / +inf. Shapes of x, means and log_scales must match.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(
            f"shapes must match: x {tuple(x.shape)}, means {tuple(means.shape)}, "
            f"log_scales {tuple(log_scales.shape)}"
        )
    inv_std = torch.exp(-log_scales)
    cdf_upper = approx_standard_normal_cdf(inv_std * (x - means + BIN_HALF_WIDTH))
    cdf_lower = approx_standard_normal_cdf(inv_std * (x - means - BIN_HALF_WIDTH))
    log_below_upper = torch.log(cdf_upper.clamp(min=LOG_FLOOR))  # bin (-inf, x + h]
    log_above_lower = torch.log((1.0 - cdf_lower).clamp(min=LOG_FLOOR))  # bin [x - h, +inf)
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=LOG_FLOOR))  # bin [x - h, x + h]
    return torch.where(x < -EDGE, log_below_upper, torch.where(x > EDGE, log_above_lower, log_bin))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: (N, ...) -> (N,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))
