"""DiffiT (Hatamizadeh et al., "DiffiT: Diffusion Vision Transformers for Image Generation",
ECCV 2024), the latent DiffiT-XL/2 of the U-DiT paper's Table 3, whose authors re-implemented
its time-dependent multi-head self-attention (TMSA).

Read from NVlabs/DiffiT diffit/diffit.py (DiffiTAttention, DiffiTBlock, FinalLayer, Diffit):
a DiT-XL/2 token layout (patch 2, fixed sin-cos positions, D 1152, 16 heads, MLP 4) whose
blocks have no adaLN. Instead time (and class) enter every attention layer:

    TMSA:  q, k, v = W_s x + W_t c          c = t_embedder(t) + y_embedder(y), (N, D) per image
           attn = softmax(q k^T / sqrt(d) + B)   B: learned relative-position bias per head,
                                                 Swin-style table over the whole token grid
    block: x + TMSA(LN(x), c), then x + MLP(LN(x))    (LayerNorms without affine)
    final: Linear(SiLU(LN(x))) -> p*p*C_out      (no modulation)

The relative-position index is a pure function of the grid, rebuilt once per (grid, device)
and cached, not a buffer: nothing in the state dict depends on anything but weights.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from udit.models.dit import LN_EPS, Mlp
from udit.models.patch_model import PatchModel
from udit.models.spec import ModelSpec
from udit.paper import paper_numbers, recipe

RECIPE = recipe()  # ImageNet-1k and label dropout 0.1: the defaults below

INIT_STD_BIAS = 0.02  # trunc-normal std of the relative-position bias tables (DiffiT, Swin)


@functools.lru_cache(maxsize=8)
def relative_position_index(grid: int, device: torch.device) -> torch.Tensor:
    """(g*g, g*g) long: row of the ((2g-1)^2, heads) bias table for each (query, key) pair of a
    g x g grid in row-major order; (dh + g-1) * (2g-1) + (dw + g-1), as Swin / DiffiT."""
    token = torch.arange(grid * grid)
    coords = torch.stack([token // grid, token % grid])  # (2, T): row, column of each token
    rel = coords[:, :, None] - coords[:, None, :] + (grid - 1)  # (2, T, T) in [0, 2g-2]
    return (rel[0] * (2 * grid - 1) + rel[1]).to(device)


class TMSA(nn.Module):
    """Time-dependent multi-head self-attention over all tokens, with relative-position bias."""

    def __init__(self, dim: int, num_heads: int, grid_size: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid_size = grid_size
        self.qkv = nn.Linear(dim, 3 * dim)  # W_s (spatial, per token)
        self.qkv_temb = nn.Linear(dim, 3 * dim)  # W_t (temporal, per image)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * grid_size - 1) ** 2, num_heads)
        )

    def position_bias(self) -> torch.Tensor:
        """(heads, T, T) additive attention bias gathered from the learned table."""
        index = relative_position_index(self.grid_size, self.relative_position_bias_table.device)
        return self.relative_position_bias_table[index].permute(2, 0, 1)  # (T, T, H) -> (H, T, T)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        if t != self.grid_size**2:
            raise ValueError(f"TMSA built for a {self.grid_size}^2 token grid, got {t} tokens")
        qkv = self.qkv(x) + self.qkv_temb(c)[:, None]  # (N, T, 3D): W_s x + W_t c
        qkv = qkv.reshape(n, t, 3, self.num_heads, self.head_dim)  # (N, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, T, d)
        bias = self.position_bias().to(q.dtype)[None]  # (1, H, T, T)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (N, H, T, d)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class DiffiTBlock(nn.Module):
    """Pre-norm block: TMSA conditioned on c, then the MLP (no adaLN, no gates)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, grid_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.attn = TMSA(hidden_size, num_heads, grid_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), c)  # (N, T, D)
        return x + self.mlp(self.norm2(x))  # (N, T, D)


class DiffiTFinalLayer(nn.Module):
    """LayerNorm -> SiLU -> Linear to p*p*C_out per token (DiffiT's FinalLayer)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.silu(self.norm_final(x)))  # (N, T, p*p*C_out)


class DiffiT(PatchModel):
    """Class-conditional latent DiffiT: forward(x (N,C,H,W), t (N,), y (N,)) -> (N, 2C, H, W)."""

    def __init__(
        self,
        input_size: int = 32,  # latent side (256 px / VAE factor 8)
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,  # D
        depth: int = 28,
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
        self.add_dit_embedders(hidden_size, class_dropout_prob)  # grid = DiffiT's window
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            DiffiTBlock(hidden_size, num_heads, mlp_ratio, self.grid_size) for _ in range(depth)
        )
        self.final_layer = DiffiTFinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        self.init_dit_embedders()  # DiffiT _initialize_weights = DiT's without adaLN-Zero
        for block in self.blocks:
            nn.init.trunc_normal_(block.attn.relative_position_bias_table, std=INIT_STD_BIAS)
        # The output starts at zero (the blocks are not zero-gated).
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_latents(x)
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D): the "time" token of TMSA
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x)  # (N, T, p*p*C_out)
        return self.unpatchify(x)  # (N, C_out, H, W)


DIFFIT_ROW = "DiffiT-XL/2* (TMSA re-implemented)"
DIFFIT_MODELS: dict[str, ModelSpec] = {
    "DiffiT-XL/2": ModelSpec(
        name="DiffiT-XL/2",
        build=functools.partial(DiffiT, depth=28, hidden_size=1152, num_heads=16),
        paper_gflops=float(paper_numbers()["other_architectures_T3"][DIFFIT_ROW][0]),
        source="T3",
        note=(
            "NVlabs/DiffiT diffit.py Diffit (latent): depth 28, D 1152, 16 heads, patch 2, "
            "MLP 4, fixed sin-cos positions; TMSA q,k,v = W_s x + W_t c with c = time + class "
            "embedding (DiT embedders, null row, dropout 0.1) and a learned relative-position "
            "bias over the whole grid (Swin table); no adaLN; final LN-SiLU-Linear"
        ),
        extra={"paper_table": "other_architectures_T3", "paper_row": DIFFIT_ROW},
    )
}
