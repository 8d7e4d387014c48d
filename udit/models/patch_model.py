"""What the patch-token models share (DiT, U-ViT, PixArt-alpha, DiffiT): the fixed 2D sin-cos
position table, patchify / unpatchify, and the PatchModel base that holds the latent geometry,
DiT's embedders and their initialisation.

    x (N, C, H, W) -patchify-> (N, T, D) tokens, T = (H/p)(W/p) ... -> (N, T, p*p*C_out)
    -unpatchify-> (N, C_out, H, W)
"""

import math

import numpy as np
import torch
from torch import nn

from udit.models.embed import LabelEmbedder, TimestepEmbedder

POS_EMBED_PERIOD = 10000.0  # max period of the 2D sin-cos position embedding (MAE / DiT)
INIT_STD_EMBED = 0.02  # normal std of the label table and timestep MLP weights (DiT init)


#################################################################################
#                        Fixed 2D sine-cosine position embedding                #
#################################################################################


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """Positions (M,) -> (M, dim) as [sin | cos] over dim/2 geometric frequencies."""
    if dim % 2:
        raise ValueError(f"1D sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / POS_EMBED_PERIOD ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = pos.reshape(-1).astype(np.float64)[:, None] * omega[None]  # (M, dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size**2, dim) float32 table, tokens in row-major order.

    Same values as DiT/MAE: the first dim/2 channels encode the column (w) index, the last
    dim/2 the row (h) index, because upstream meshgrids (w, h) and names them the other way.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
    return torch.from_numpy(emb).float()


#################################################################################
#                             Patchify / unpatchify                             #
#################################################################################


def unpatchify(x: torch.Tensor, *, patch_size: int, channels: int) -> torch.Tensor:
    """(N, T, p*p*C) tokens of a square grid -> (N, C, h*p, w*p); a pure permutation (no FLOPs).
    Each token holds its patch as (p, q, C), channels last (DiT, U-ViT, PixArt, DiffiT)."""
    n, t, _ = x.shape
    p, c, g = patch_size, channels, math.isqrt(x.shape[1])
    if t != g * g or x.shape[2] != p * p * c:
        raise ValueError(
            f"expected (N, h*w, {p * p * c}) tokens of a square grid, got {tuple(x.shape)}"
        )
    x = x.reshape(n, g, g, p, p, c)  # (N, h, w, p, q, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p)  # (N, C, h p, w q)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens: (N, C, H, W) -> (N, H*W/p^2, D)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(
                f"input {tuple(x.shape)} is not divisible by patch size {self.patch_size}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, T, D)


#################################################################################
#                           PatchModel: the base class                          #
#################################################################################


class PatchModel(nn.Module):
    """Base of the patch-token models (DiT, U-ViT, PixArt-alpha, DiffiT): the latent geometry
    their constructors take, the input check and unpatchify, written once.

    forward(x (N, C, H, W), t (N,), y (N,)) -> (N, C_out, H, W); with learn_sigma the output
    stacks eps (first in_channels) and the sigma interpolation values (last in_channels).
    """

    def set_geometry(
        self,
        *,
        input_size: int,
        patch_size: int,
        in_channels: int,
        learn_sigma: bool,
        num_classes: int,
    ) -> None:
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes  # also the null label guidance uses (udit.diffusion.cfg)
        self.grid_size = input_size // patch_size

    def add_dit_embedders(self, hidden_size: int, class_dropout_prob: float) -> None:
        """DiT's patchify conv, timestep MLP and label table (with its null row)."""
        self.x_embedder = PatchEmbed(self.patch_size, self.in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(self.num_classes, hidden_size, class_dropout_prob)

    def init_dit_embedders(self) -> None:
        """DiT's initialisation up to the model-specific part, in upstream order (so seeded
        weights match the official code): xavier-uniform linears with zero bias, the fixed
        sin-cos positions, the patchify conv as the linear map it is, small normal weights for
        the label table and the timestep MLP."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.pos_embed.data.copy_(
            sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid_size)[None]
        )
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=INIT_STD_EMBED)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=INIT_STD_EMBED)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=INIT_STD_EMBED)

    def check_latents(self, x: torch.Tensor) -> None:
        if x.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(
                f"expected latents (N, {self.in_channels}, {self.input_size}, "
                f"{self.input_size}), got {tuple(x.shape)}"
            )

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C_out) -> (N, C_out, H, W)."""
        return unpatchify(x, patch_size=self.patch_size, channels=self.out_channels)
