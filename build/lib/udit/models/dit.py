"""DiT baselines (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023).

The isotropic transformer the U-DiT paper compares against (T2, T4, T6). The state-dict
layout follows the official facebookresearch/DiT models.py key for key, so the released
DiT-XL-2-256x256.pt / DiT-XL-2-512x512.pt and checkpoints from the official train.py load
strictly:

    x_embedder.proj.{weight,bias}               patchify conv (timm PatchEmbed)
    t_embedder.mlp.{0,2}.{weight,bias}          timestep MLP           (udit.models.embed)
    y_embedder.embedding_table.weight           labels + 1 null class  (udit.models.embed)
    pos_embed                                   (1, T, D) fixed sin-cos, an nn.Parameter with
                                                requires_grad=False as upstream, so it is in
                                                the state dict and in parameters()
    blocks.{i}.attn.{qkv,proj}.{weight,bias}    (timm Attention)
    blocks.{i}.mlp.{fc1,fc2}.{weight,bias}      (timm Mlp)
    blocks.{i}.adaLN_modulation.1.{weight,bias}
    final_layer.{linear,adaLN_modulation.1}.{weight,bias}

Attention runs through F.scaled_dot_product_attention; udit.flops registers an fvcore
handle for it so FLOP counts match explicit q @ k^T attention.
"""

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from udit.models.embed import LabelEmbedder, TimestepEmbedder, modulate
from udit.models.spec import ModelSpec
from udit.paper import paper_numbers

LN_EPS = 1e-6  # LayerNorm eps of every DiT norm (official models.py)
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
#                                 Core DiT blocks                               #
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


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout).

    `fused=True` uses F.scaled_dot_product_attention; False spells out softmax(q k^T / sqrt(d)) v,
    which fvcore counts natively (used to check the SDPA FLOP handle).
    """

    def __init__(self, dim: int, num_heads: int, fused: bool = True, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # U-ViT: no qkv bias
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim)  # (N, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, T, d)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, d)
        else:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (N, H, T, T)
            x = attn.softmax(dim=-1) @ v  # (N, H, T, d)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU, as DiT blocks use (U-ViT: exact, "none")."""

    def __init__(self, dim: int, hidden: int, approximate: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (N, T, D)


class DiTBlock(nn.Module):
    """adaLN-Zero block: c -> (shift, scale, gate) for attention and for the MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))  # (N, T, D)
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (N, T, D)
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map to p*p*out_channels per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C_out)


#################################################################################
#                    What the patch-token models share                          #
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


#################################################################################
#                                    DiT model                                  #
#################################################################################


class DiT(PatchModel):
    """Class-conditional latent DiT: forward(x (N,C,H,W), t (N,), y (N,)) -> (N, C_out, H, W)."""

    def __init__(
        self,
        input_size: int = 32,  # latent side (256 px / VAE factor 8)
        patch_size: int = 2,  # p: tokens = (input_size / p)^2
        in_channels: int = 4,  # latent channels of sd-vae-ft-ema
        hidden_size: int = 1152,  # D
        depth: int = 28,  # number of DiT blocks
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,  # label dropout for classifier-free guidance
        num_classes: int = 1000,
        learn_sigma: bool = True,  # output 2 x in_channels (eps and variance)
    ):
        super().__init__()
        self.set_geometry(
            input_size=input_size,
            patch_size=patch_size,
            in_channels=in_channels,
            learn_sigma=learn_sigma,
            num_classes=num_classes,
        )
        self.add_dit_embedders(hidden_size, class_dropout_prob)
        # A frozen Parameter rather than a buffer: upstream does so, which puts it in the
        # state dict (strict loading of released checkpoints) and in the parameter count.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        self.init_dit_embedders()
        # adaLN-Zero: every block starts as the identity, the output as zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_latents(x)
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x)  # (N, C_out, H, W)

    def num_params(self, *, deployed: bool = False) -> int:
        """Parameter count, pos_embed included as upstream counts it. DiT has no
        re-parameterisation, so the deployed count is the same (the flag keeps one API
        with the U-shaped family)."""
        del deployed
        return sum(p.numel() for p in self.parameters())


#################################################################################
#                                  DiT configs                                  #
#################################################################################

# name -> (depth, hidden_size, num_heads, patch_size); DiT paper Table 1 / official models.py
DIT_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "DiT-S/8": (12, 384, 6, 8),
    "DiT-S/4": (12, 384, 6, 4),
    "DiT-S/2": (12, 384, 6, 2),
    "DiT-B/8": (12, 768, 12, 8),
    "DiT-B/4": (12, 768, 12, 4),
    "DiT-B/2": (12, 768, 12, 2),
    "DiT-L/4": (24, 1024, 16, 4),
    "DiT-L/2": (24, 1024, 16, 2),
    "DiT-XL/4": (28, 1152, 16, 4),
    "DiT-XL/2": (28, 1152, 16, 2),
}


def _dit_spec(name: str, depth: int, hidden: int, heads: int, patch: int) -> ModelSpec:
    build = functools.partial(
        DiT, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch
    )
    gflops = paper_numbers()["dit_gflops"].get(name)
    return ModelSpec(
        name=name,
        build=build,
        paper_gflops=gflops,
        source="dit-paper (dit_gflops)",
        note="official facebookresearch/DiT layout; SDPA attention",
    )


DIT_MODELS: dict[str, ModelSpec] = {
    name: _dit_spec(name, *cfg) for name, cfg in DIT_CONFIGS.items()
}
