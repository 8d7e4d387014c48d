"""U-ViT (Bao et al., "All are Worth Words: A ViT Backbone for Diffusion Models", CVPR 2023).

The latent ImageNet-256 U-ViT the U-DiT paper trains in its Table 3, read from baofff/U-ViT
libs/uvit.py and configs/imagenet256_uvit.py (the "U-ViT-L" config: 4x32x32 latents, patch 2,
width 1024, depth 20, 16 heads, MLP ratio 4, qkv_bias False, mlp_time_embed False):

    tokens = [label | time | patches] + learned position embedding      (N, 2 + T, D)
    depth/2 in-blocks -> 1 mid-block -> depth/2 out-blocks, out-block i takes the output of
    in-block depth/2 - i through a long skip: Linear(concat(x, skip)) (2D -> D)
    LayerNorm -> Linear to p*p*C_out per token -> drop the 2 condition tokens -> unpatchify
    -> 3x3 conv (U-ViT's `final_layer`)

Blocks are pre-norm ViT blocks (affine LayerNorm, attention without qkv bias, exact-GELU MLP);
time enters only as a token (sinusoidal features, no MLP) and the class as a token.

Changes for the U-DiT paper's common setting (DiT recipe, documented in the registry note):
the output has 2 x in_channels (eps and learned sigma, as every model of the paper), and the
label table has the DiT null row with label dropout 0.1 inside the model (U-ViT drops 15% of
labels in its data loader) so classifier-free guidance goes through udit.diffusion.cfg.
"""

import functools

import torch
from torch import nn

from udit.models.dit import Attention, Mlp
from udit.models.embed import LabelEmbedder, timestep_features
from udit.models.patch_model import PatchEmbed, PatchModel
from udit.models.spec import ModelSpec
from udit.paper import paper_numbers, recipe

RECIPE = recipe()  # ImageNet-1k and label dropout 0.1: the defaults below

INIT_STD = 0.02  # trunc-normal std of every linear weight and the position table (U-ViT)
EXTRA_TOKENS = 2  # the label token and the time token, in front of the patch tokens


class UViTBlock(nn.Module):
    """Pre-norm ViT block; with `skip`, first fuses a long-skip input: Linear(2D -> D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, skip: bool):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="none")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (N, L, 2D) -> (N, L, D)
        x = x + self.attn(self.norm1(x))  # (N, L, D)
        return x + self.mlp(self.norm2(x))  # (N, L, D)


class UViT(PatchModel):
    """Class-conditional latent U-ViT: forward(x (N,C,H,W), t (N,), y (N,)) -> (N, 2C, H, W)."""

    def __init__(
        self,
        input_size: int = 32,  # latent side (256 px / VAE factor 8)
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1024,  # D (U-ViT's embed_dim)
        depth: int = 20,  # depth/2 in-blocks + 1 mid-block + depth/2 out-blocks
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = RECIPE.class_dropout,  # DiT recipe (U-ViT: p_uncond 0.15)
        num_classes: int = RECIPE.num_classes,  # ImageNet-1k
        learn_sigma: bool = True,  # output 2 x in_channels (eps and variance)
    ):
        super().__init__()
        if depth < 2 or depth % 2:
            raise ValueError(f"U-ViT depth must be even and >= 2 (in/out halves), got {depth}")
        self.set_geometry(
            input_size=input_size,
            patch_size=patch_size,
            in_channels=in_channels,
            learn_sigma=learn_sigma,
            num_classes=num_classes,
        )
        self.hidden_size = hidden_size
        tokens = self.grid_size**2

        self.patch_embed = PatchEmbed(patch_size, in_channels, hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.zeros(1, EXTRA_TOKENS + tokens, hidden_size))
        block = functools.partial(UViTBlock, hidden_size, num_heads, mlp_ratio)
        self.in_blocks = nn.ModuleList(block(skip=False) for _ in range(depth // 2))
        self.mid_block = block(skip=False)
        self.out_blocks = nn.ModuleList(block(skip=True) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(hidden_size)
        self.decoder_pred = nn.Linear(hidden_size, patch_size**2 * self.out_channels)
        self.final_layer = nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # U-ViT _init_weights: trunc-normal linear weights, zero biases, a trunc-normal learned
        # position table; LayerNorms, convs and the label table keep torch's defaults.
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_latents(x)
        x = self.patch_embed(x)  # (N, T, D)
        time = timestep_features(t, self.hidden_size).to(x.dtype)  # (N, D), no MLP in U-ViT
        label = self.y_embedder(y)  # (N, D)
        x = torch.cat([label[:, None], time[:, None], x], dim=1) + self.pos_embed  # (N, 2+T, D)
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())  # the deepest in-block feeds the first out-block
        x = self.decoder_pred(self.norm(x))[:, EXTRA_TOKENS:]  # (N, T, p*p*C_out)
        x = self.unpatchify(x)  # (N, C_out, H, W)
        return self.final_layer(x)  # (N, C_out, H, W)


NOTE = (
    "baofff/U-ViT libs/uvit.py with configs/imagenet256_uvit.py (U-ViT-L: patch 2, D 1024, "
    "16 heads, MLP 4, no qkv bias, time and class as tokens, sinusoidal time without MLP, "
    "long skips via Linear(2D->D), learned position table, final 3x3 conv); for the paper's "
    "common setting the output has 2x in_channels (learned sigma) and labels drop with p 0.1 "
    "to a DiT null row inside the model (U-ViT: p 0.15 in the data loader)"
)
# name -> constructor, one line per model (D 1024, 16 heads, patch 2: UViT's defaults)
UVIT_BUILDERS: dict[str, functools.partial] = {
    "U-ViT-L": functools.partial(UViT, depth=20),
    "U-ViT-XL": functools.partial(UViT, depth=30),
}
# name -> row of paper_numbers.yaml other_architectures_T3
UVIT_ROWS = {"U-ViT-L": "U-ViT-L", "U-ViT-XL": "U-ViT-XL* (depth 20 -> 30)"}
UVIT_NOTES = {"U-ViT-XL": "; depth 30 (15 in, 1 mid, 15 out) as T3"}  # after NOTE


def _uvit_spec(name: str, build: functools.partial) -> ModelSpec:
    row = UVIT_ROWS[name]
    return ModelSpec(
        name=name,
        build=build,
        paper_gflops=float(paper_numbers()["other_architectures_T3"][row][0]),
        source="T3",
        note=NOTE + UVIT_NOTES.get(name, ""),
        extra={"paper_table": "other_architectures_T3", "paper_row": row},
    )


UVIT_MODELS: dict[str, ModelSpec] = {name: _uvit_spec(name, b) for name, b in UVIT_BUILDERS.items()}
