"""PixArt-α (Chen et al., "PixArt-α: Fast Training of Diffusion Transformer for Photorealistic
Text-to-Image Synthesis", ICLR 2024), as the U-DiT paper trains it in Table 3: the PixArt-XL/2
transformer with the text cross-attention removed, class-conditional.

Read from PixArt-alpha/PixArt-alpha diffusion/model/nets/PixArt.py (PixArtBlock, T2IFinalLayer,
PixArt_XL_2) and diffusers' PixArtTransformer2DModel (BasicTransformerBlock with
norm_type "ada_norm_single"). The difference from DiT is adaLN-single:

    c   = t_embedder(t) + y_embedder(y)                      (N, D), as DiT
    t0  = t_block(c) = Linear(SiLU(c)) -> 6D                 ONE modulation MLP for all blocks
    block i: (shift, scale, gate) x 2 = scale_shift_table_i + t0    a learned (6, D) table each
    final:   (shift, scale) = final scale_shift_table + c           (2, D), no MLP

so the 28 per-block adaLN Linears of DiT (D -> 6D) become one. PixArt's block is
self-attention -> cross-attention -> MLP; the cross-attention (and the caption embedder) is
what the paper removed. With PixArt-α's lewei_scale 1 at base size h = w = grid, its
position table is DiT's fixed sin-cos table.
"""

import functools

import torch
from torch import nn

from udit.models.dit import LN_EPS, Attention, Mlp
from udit.models.embed import modulate
from udit.models.patch_model import INIT_STD_EMBED, PatchModel
from udit.models.spec import ModelSpec
from udit.paper import paper_numbers, recipe

RECIPE = recipe()  # ImageNet-1k and label dropout 0.1: the defaults below

MODULATIONS = 6  # shift, scale, gate for attention and for the MLP


class PixArtBlock(nn.Module):
    """adaLN-single block: the shared t0 plus this block's learned table modulates it."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(
            torch.randn(MODULATIONS, hidden_size) / hidden_size**0.5
        )

    def forward(self, x: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        mod = self.scale_shift_table[None] + t0.reshape(x.shape[0], MODULATIONS, -1)  # (N, 6, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(1)  # 6 x (N, D)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))  # (N, T, D)
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (N, T, D)
        return x


class PixArtFinalLayer(nn.Module):
    """PixArt's T2IFinalLayer: (shift, scale) = learned (2, D) table + c, then a linear map."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + c[:, None]).unbind(1)  # 2 x (N, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C_out)


class PixArtAlpha(PatchModel):
    """Class-conditional PixArt-α: forward(x (N,C,H,W), t (N,), y (N,)) -> (N, 2C, H, W)."""

    def __init__(
        self,
        input_size: int = 32,  # latent side (256 px / VAE factor 8)
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,  # D (PixArt-XL/2)
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = RECIPE.class_dropout,  # label dropout, for guidance
        num_classes: int = RECIPE.num_classes,  # ImageNet-1k
        learn_sigma: bool = True,  # PixArt's pred_sigma: output 2 x in_channels
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
        self.register_buffer("pos_embed", torch.zeros(1, self.grid_size**2, hidden_size))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, MODULATIONS * hidden_size))
        self.blocks = nn.ModuleList(
            PixArtBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.final_layer = PixArtFinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # PixArt.initialize_weights: DiT's (xavier linears, sin-cos table, patchify conv, label
        # table, timestep MLP), then the shared t_block like the timestep MLP.
        self.init_dit_embedders()
        nn.init.normal_(self.t_block[1].weight, std=INIT_STD_EMBED)
        # The output starts at zero; blocks are not zero-gated (the tables start random).
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_latents(x)
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        t0 = self.t_block(c)  # (N, 6D), shared by every block
        for block in self.blocks:
            x = block(x, t0)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x)  # (N, C_out, H, W)


PIXART_ROW = "PixArt-alpha-XL/2* (text cross-attention removed)"
PIXART_MODELS: dict[str, ModelSpec] = {
    "PixArt-alpha-XL/2": ModelSpec(
        name="PixArt-alpha-XL/2",
        build=functools.partial(PixArtAlpha, depth=28, hidden_size=1152, num_heads=16),
        paper_gflops=float(paper_numbers()["other_architectures_T3"][PIXART_ROW][0]),
        source="T3",
        note=(
            "PixArt-alpha PixArt.py PixArt_XL_2 / diffusers PixArtTransformer2DModel "
            "(ada_norm_single): depth 28, D 1152, 16 heads, patch 2, MLP 4, fixed sin-cos "
            "positions; text cross-attention and caption embedder removed; class-conditional "
            "by adding DiT's label embedding (null row, dropout 0.1) to the timestep embedding "
            "before the one shared t_block (adaLN-single); per-block learned (6, D) tables"
        ),
        extra={"paper_table": "other_architectures_T3", "paper_row": PIXART_ROW},
    )
}
