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

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from udit.models.embed import modulate
from udit.models.patch_model import (
    PatchModel,
    sincos_pos_embed_2d,  # noqa: F401 - DiT's pos_embed table, importable from here as before
)
from udit.models.spec import ModelSpec
from udit.paper import paper_numbers, recipe

RECIPE = recipe()  # ImageNet-1k and label dropout 0.1: the defaults below

LN_EPS = 1e-6  # LayerNorm eps of every DiT norm (official models.py)


#################################################################################
#                                 Core DiT blocks                               #
#################################################################################


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
        class_dropout_prob: float = RECIPE.class_dropout,  # label dropout, for guidance
        num_classes: int = RECIPE.num_classes,  # ImageNet-1k
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

# name -> constructor, one line per model: DiT paper Table 1 / official models.py (DiT_XL_2 etc.)
DIT_BUILDERS: dict[str, partial] = {
    "DiT-S/8": partial(DiT, depth=12, hidden_size=384, num_heads=6, patch_size=8),
    "DiT-S/4": partial(DiT, depth=12, hidden_size=384, num_heads=6, patch_size=4),
    "DiT-S/2": partial(DiT, depth=12, hidden_size=384, num_heads=6, patch_size=2),
    "DiT-B/8": partial(DiT, depth=12, hidden_size=768, num_heads=12, patch_size=8),
    "DiT-B/4": partial(DiT, depth=12, hidden_size=768, num_heads=12, patch_size=4),
    "DiT-B/2": partial(DiT, depth=12, hidden_size=768, num_heads=12, patch_size=2),
    "DiT-L/4": partial(DiT, depth=24, hidden_size=1024, num_heads=16, patch_size=4),
    "DiT-L/2": partial(DiT, depth=24, hidden_size=1024, num_heads=16, patch_size=2),
    "DiT-XL/4": partial(DiT, depth=28, hidden_size=1152, num_heads=16, patch_size=4),
    "DiT-XL/2": partial(DiT, depth=28, hidden_size=1152, num_heads=16, patch_size=2),
}
# The same sizes as (depth, hidden_size, num_heads, patch_size) tuples.
DIT_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    name: tuple(build.keywords[k] for k in ("depth", "hidden_size", "num_heads", "patch_size"))
    for name, build in DIT_BUILDERS.items()
}


def _dit_spec(name: str, build: partial) -> ModelSpec:
    return ModelSpec(
        name=name,
        build=build,
        paper_gflops=paper_numbers()["dit_gflops"].get(name),
        source="dit-paper (dit_gflops)",
        note="official facebookresearch/DiT layout; SDPA attention",
    )


DIT_MODELS: dict[str, ModelSpec] = {name: _dit_spec(name, b) for name, b in DIT_BUILDERS.items()}
