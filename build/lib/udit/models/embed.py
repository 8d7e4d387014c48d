"""Conditioning embedders shared by DiT and the U-shaped family.

State-dict names (`mlp.0`, `mlp.2`, `embedding_table`) follow facebookresearch/DiT models.py,
which the official U-DiT code imports unchanged, so released checkpoints load strictly.
"""

import math

import torch
from torch import nn

FREQ_DIM = 256  # sinusoidal features fed to the timestep MLP (DiT default)


def timestep_features(
    t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: (N,) -> (N, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Timestep t -> (N, hidden) through sinusoidal features and a 2-layer SiLU MLP."""

    def __init__(self, hidden: int, freq_dim: int = FREQ_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


class LabelEmbedder(nn.Module):
    """Class label -> (N, hidden). Row `num_classes` is the null class used for
    classifier-free guidance; during training labels are replaced by it with prob `dropout`."""

    def __init__(self, num_classes: int, hidden: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.embedding_table = nn.Embedding(num_classes + int(dropout > 0), hidden)

    def forward(self, y: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if (self.training and self.dropout > 0) or force_drop is not None:
            drop = (
                (torch.rand(y.shape[0], device=y.device) < self.dropout)
                if force_drop is None
                else force_drop.bool()
            )
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation for token sequences: x (N, T, D), shift/scale (N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
