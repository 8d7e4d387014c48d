"""The U-shaped family: DiT-UNet, the ablation ladder to U-DiT-T, and U-DiT-S/B/L
(paper Fig. 3, T1/T7/T9/T10/T2).

One implementation; the paper's ablation steps are constructor switches:
    attention   'full' (DiT-UNet) | 'kv' (+ key/value downsampling)
                | 'tokens' (U-DiT token downsampling)
    downsampler 'dwconv_shortcut' | 'dwconv' | 'ps' | 'dense'   (T7)
    cosine, rope                                                 (T9: + cos, + RoPE2D)
    ffn         'mlp' | 'dwconv' | 'rep'                         (T9: + DWconv FFN, + re-param)

Layout (official udit_models.py): 3x3 stem conv -> enc1 (C, HxW) -> enc2 (2C, H/2)
-> latent (4C, H/4) -> dec2 (2C, H/2) -> dec1 (2C, HxW) -> 3x3 output conv -> adaLN final layer
-> 3x3 conv to 2*in_channels.
Separate timestep/label embedders per width (C, 2C, 4C); module names match the official code so its
checkpoints load strictly. forward(x, t, y): (N, in_channels, H, W) -> (N, 2*in_channels, H, W).
"""

from functools import partial

import torch
from torch import nn

from udit.models.embed import LabelEmbedder, TimestepEmbedder
from udit.models.spec import ModelSpec
from udit.models.unet_blocks import (
    DownsampledAttention,
    RepFFN,
    build_ffn,
    layer_norm_2d,
    modulate_2d,
)
from udit.paper import paper_numbers, recipe

RECIPE = recipe()  # ImageNet-1k and label dropout 0.1: the defaults below

NUM_LEVELS = 3  # encoder levels 1, 2 and the latent level (paper: three stages)
LEVEL_STRIDE = 4  # input_size must be divisible by 4 (two 2x transitions) x 2 (token groups)


class UDiTBlock(nn.Module):
    """`sublayers` x (adaLN-Zero, attention, FFN). Official U-DiT blocks hold two
    (names suffixed 1, 2); the toy reconstructions hold one."""

    def __init__(self, dim: int, *, sublayers: int, ffn: str, mlp_ratio: float, **attn_kwargs):
        super().__init__()
        self.sublayers = sublayers
        for i in range(1, sublayers + 1):
            setattr(self, f"attn{i}", DownsampledAttention(dim, **attn_kwargs))
            setattr(self, f"mlp{i}", build_ffn(ffn, dim=dim, mlp_ratio=mlp_ratio))
            setattr(self, f"adaLN_modulation{i}", nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.sublayers + 1):
            mod = getattr(self, f"adaLN_modulation{i}")(c)  # (N, 6C)
            shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod.chunk(6, dim=1)
            h = getattr(self, f"attn{i}")(modulate_2d(layer_norm_2d(x), shift_a, scale_a))
            x = x + gate_a[:, :, None, None] * h  # (N, C, H, W)
            h = getattr(self, f"mlp{i}")(modulate_2d(layer_norm_2d(x), shift_f, scale_f))
            x = x + gate_f[:, :, None, None] * h
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.out_proj = nn.Conv2d(dim, out_channels, 3, padding=1)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.out_proj(modulate_2d(layer_norm_2d(x), shift, scale))


class Resample(nn.Module):
    """Level transition: 3x3 conv (no bias) then pixel (un)shuffle by 2
    (official Downsample / Upsample)."""

    def __init__(self, dim: int, *, up: bool):
        super().__init__()
        out = dim * 2 if up else dim // 2
        shuffle = nn.PixelShuffle(2) if up else nn.PixelUnshuffle(2)
        self.body = nn.Sequential(nn.Conv2d(dim, out, 3, padding=1, bias=False), shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Stem(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _check_layout(*, input_size: int, depths: tuple) -> None:
    if input_size % (LEVEL_STRIDE * 2):
        raise ValueError(f"input_size must be divisible by {LEVEL_STRIDE * 2}, got {input_size}")
    if len(depths) != 2 * NUM_LEVELS - 1:
        raise ValueError(f"depths needs 5 entries (enc1, enc2, latent, dec2, dec1), got {depths}")


class UShapedDiT(nn.Module):
    def __init__(
        self,
        *,
        input_size: int = 32,  # latent side: 32 for 256px images, 64 for 512px
        in_channels: int = 4,  # VAE latent channels
        num_classes: int = RECIPE.num_classes,  # ImageNet-1k
        # label -> null class during training (classifier-free guidance)
        class_dropout_prob: float = RECIPE.class_dropout,
        learn_sigma: bool = True,  # output 2*in_channels: eps and the learned-range variance
        hidden_size: int = 96,  # C: widths are C, 2C, 4C, 2C, dec1_mult*C
        num_heads: int = 4,  # same head count at every level (head_dim grows with width)
        depths: tuple = (2, 5, 8, 5, 2),  # blocks per level: enc1, enc2, latent, dec2, dec1
        sublayers: int = 2,  # (attention, FFN) pairs per block
        mlp_ratio: float = 2.0,
        attention: str = "tokens",
        downsampler: str = "dwconv_shortcut",
        downsampler_kernel: int = 5,
        cosine: bool = True,
        rope: bool = True,
        ffn: str = "rep",
        dec1_mult: int = 2,  # official dec1 runs at 2C (reduce_chan_level1: 2C -> 2C)
        output_conv: bool = True,  # 3x3 conv at dec1 width before the final layer (official)
        # official: each width's label embedder drops labels independently
        shared_label_drop: bool = False,
        # F.scaled_dot_product_attention; False = explicit q k^T (same numbers)
        fused_attention: bool = True,
    ):
        super().__init__()
        _check_layout(input_size=input_size, depths=depths)
        self.input_size, self.in_channels = input_size, in_channels
        self.num_classes = num_classes  # the null (unconditional) label is num_classes
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.shared_label_drop = shared_label_drop
        c = hidden_size
        block = partial(
            UDiTBlock,
            sublayers=sublayers,
            ffn=ffn,
            mlp_ratio=mlp_ratio,
            num_heads=num_heads,
            attention=attention,
            downsampler=downsampler,
            downsampler_kernel=downsampler_kernel,
            cosine=cosine,
            rope=rope,
            fused=fused_attention,
        )
        # modules in the official order: the state-dict keys and the seeded weights follow it
        self.x_embedder = Stem(in_channels, c)
        self._add_conditioning(c, num_classes=num_classes, class_dropout_prob=class_dropout_prob)
        self._add_levels(block, c, depths=depths, dec1_width=dec1_mult * c)
        self._add_head(dec1_mult * c, output_conv=output_conv)
        self.initialize_weights()

    def _add_conditioning(self, c: int, *, num_classes: int, class_dropout_prob: float) -> None:
        """Timestep and label embedders per width: t_embedder_l, y_embedder_l at C, 2C, 4C."""
        for level, width in enumerate((c, 2 * c, 4 * c), start=1):
            setattr(self, f"t_embedder_{level}", TimestepEmbedder(width))
            setattr(
                self, f"y_embedder_{level}", LabelEmbedder(num_classes, width, class_dropout_prob)
            )

    def _add_levels(self, block, c: int, *, depths: tuple, dec1_width: int) -> None:
        """The U: encoder levels 1, 2, the latent level and decoder levels 2, 1, with the
        transitions between them and the 1x1 convs that fuse each skip."""
        widths = (c, 2 * c, 4 * c, 2 * c, dec1_width)
        self.encoder_level_1 = nn.ModuleList(block(widths[0]) for _ in range(depths[0]))
        self.down1_2 = Resample(c, up=False)  # C @ H -> 2C @ H/2
        self.encoder_level_2 = nn.ModuleList(block(widths[1]) for _ in range(depths[1]))
        self.down2_3 = Resample(2 * c, up=False)  # 2C @ H/2 -> 4C @ H/4
        self.latent = nn.ModuleList(block(widths[2]) for _ in range(depths[2]))
        self.up3_2 = Resample(4 * c, up=True)  # 4C @ H/4 -> 2C @ H/2
        self.reduce_chan_level2 = nn.Conv2d(4 * c, 2 * c, 1)  # concat skip (2C + 2C) -> 2C
        self.decoder_level_2 = nn.ModuleList(block(widths[3]) for _ in range(depths[3]))
        self.up2_1 = Resample(2 * c, up=True)  # 2C @ H/2 -> C @ H
        self.reduce_chan_level1 = nn.Conv2d(2 * c, widths[4], 1)  # skip (C + C) -> dec1 width
        self.decoder_level_1 = nn.ModuleList(block(widths[4]) for _ in range(depths[4]))

    def _add_head(self, width: int, *, output_conv: bool) -> None:
        """The optional 3x3 output conv at dec1 width, then the adaLN final layer."""
        self.output = nn.Conv2d(width, width, 3, padding=1) if output_conv else nn.Identity()
        self.final_layer = FinalLayer(width, self.out_channels)

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every attention between SDPA (True) and explicit q k^T (False); weights are
        untouched."""
        for m in self.modules():
            if isinstance(m, DownsampledAttention):
                m.fused = fused

    def blocks(self) -> list[UDiTBlock]:
        return [
            *self.encoder_level_1,
            *self.encoder_level_2,
            *self.latent,
            *self.decoder_level_2,
            *self.decoder_level_1,
        ]

    def initialize_weights(self):
        # Xavier-uniform weights and zero biases for every linear and conv layer (DiT / U-DiT).
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Stem like a linear layer over its flattened kernel (official: xavier on the (C, -1) view).
        nn.init.xavier_uniform_(
            self.x_embedder.proj.weight.view(self.x_embedder.proj.weight.shape[0], -1)
        )
        for level in range(1, NUM_LEVELS + 1):
            nn.init.normal_(getattr(self, f"y_embedder_{level}").embedding_table.weight, std=0.02)
            t_mlp = getattr(self, f"t_embedder_{level}").mlp
            nn.init.normal_(t_mlp[0].weight, std=0.02)
            nn.init.normal_(t_mlp[2].weight, std=0.02)
        # adaLN-Zero: every residual branch starts as the identity.
        for blk in self.blocks():
            for i in range(1, blk.sublayers + 1):
                nn.init.zeros_(getattr(blk, f"adaLN_modulation{i}")[-1].weight)
                nn.init.zeros_(getattr(blk, f"adaLN_modulation{i}")[-1].bias)
        # Zero output: the untrained model predicts 0.
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.out_proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _conditions(self, t: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-width conditioning c_l = t_embedder_l(t) + y_embedder_l(y), l = 1, 2, 3."""
        force_drop = None
        if self.shared_label_drop and self.training and self.y_embedder_1.dropout > 0:
            force_drop = torch.rand(y.shape[0], device=y.device) < self.y_embedder_1.dropout
        return [
            getattr(self, f"t_embedder_{i}")(t) + getattr(self, f"y_embedder_{i}")(y, force_drop)
            for i in range(1, NUM_LEVELS + 1)
        ]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (N, in_channels, H, W) latents, t (N,) timesteps, y (N,) labels
        -> (N, out_channels, H, W)."""
        if (
            x.ndim != 4
            or x.shape[1] != self.in_channels
            or x.shape[2:] != (self.input_size, self.input_size)
        ):
            raise ValueError(
                "expected x of shape "
                f"(N, {self.in_channels}, {self.input_size}, {self.input_size}), "
                f"got {tuple(x.shape)}; build the model with input_size={x.shape[-1]} for that size"
            )
        c1, c2, c3 = self._conditions(t, y)  # (N, C), (N, 2C), (N, 4C)
        x = self.x_embedder(x)  # (N, C, H, W)
        for blk in self.encoder_level_1:
            x = blk(x, c1)
        skip1 = x
        x = self.down1_2(x)  # (N, 2C, H/2, W/2)
        for blk in self.encoder_level_2:
            x = blk(x, c2)
        skip2 = x
        x = self.down2_3(x)  # (N, 4C, H/4, W/4)
        for blk in self.latent:
            x = blk(x, c3)
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), skip2], dim=1))  # (N, 2C, H/2, W/2)
        for blk in self.decoder_level_2:
            x = blk(x, c2)
        x = self.reduce_chan_level1(torch.cat([self.up2_1(x), skip1], dim=1))  # (N, dec1, H, W)
        for blk in self.decoder_level_1:
            x = blk(x, c2)  # dec1 uses the 2C conditioning (official)
        x = self.output(x)
        return self.final_layer(x, c2)  # (N, out_channels, H, W)

    def num_params(self, *, deployed: bool = False) -> int:
        """Parameter count; deployed=True counts each re-parameterised FFN at its fused size
        (paper T8)."""
        total = sum(p.numel() for p in self.parameters())
        if deployed:
            for m in self.modules():
                if isinstance(m, RepFFN):
                    total += m.deployed_num_params() - sum(p.numel() for p in m.parameters())
        return total


#################################################################################
#                                   Registry                                    #
#################################################################################

# fvcore GFLOPs vs paper: released configs are known, toy ones reconstructed
RELEASED_TOL, TOY_TOL = 0.01, 0.03
# plain DiT attention and MLP: the vanilla U-DiTs (T10) and the toy DiT-UNet
PLAIN = {"cosine": False, "rope": False, "ffn": "mlp"}


def released(*, hidden_size: int, num_heads: int, depths: tuple, **switches) -> dict:
    """Keywords of the official U_DiT_S/B/L at this size (paper T8: C, heads, depths): two
    (attention, FFN) pairs per block, MLP ratio 2, token downsampling, dec1 at 2C, the 3x3 output
    conv and every modification (cosine, RoPE2D, re-parameterised FFN); `switches` replace some."""
    official = {
        "depths": depths,
        "sublayers": 2,
        "mlp_ratio": 2.0,
        "attention": "tokens",
        "downsampler": "dwconv_shortcut",
        "downsampler_kernel": 5,
        "cosine": True,
        "rope": True,
        "ffn": "rep",
        "dec1_mult": 2,
        "output_conv": True,
        "hidden_size": hidden_size,
        "num_heads": num_heads,
    }
    return official | switches


# Toy scale (T1, T7, T9): the paper publishes no configuration. Reconstruction, chosen by searching
# widths/depths/layouts for the smallest worst-case GFLOPs error over every toy figure: C=40,
# 2 heads, one DiT-style (attention, FFN) pair per block, depths [2, 7, 8, 7, 2], DiT's MLP ratio 4,
# official level layout (dec1 at 2C) without the 3x3 output conv; the T7 dense downsampler is a
# dense 5x5 conv (the depthwise 5x5 made dense). fvcore: DiT-UNet 1.388, Slim (C=30) 0.907,
# KV 0.908, U-DiT-T 0.908, PS only 0.892, DWconv FFN 0.969, dense 2.203 -> worst residual +2.0%
# (DWconv FFN vs 0.95).
TOY_NOTE = (
    "toy config reconstructed (paper gives none): C=40, 2 heads, depths [2,7,8,7,2], one "
    "attention+FFN pair per block, MLP ratio 4, dec1 at 2C, no output conv"
)


def toy(*, hidden_size: int, **switches) -> dict:
    """Keywords of the toy scale at width `hidden_size` (TOY_NOTE), then the ablation `switches`."""
    return {
        "hidden_size": hidden_size,
        "num_heads": 2,
        "depths": (2, 7, 8, 7, 2),
        "sublayers": 1,
        "mlp_ratio": 4.0,
        "downsampler_kernel": 5,
        "dec1_mult": 2,
        "output_conv": False,
        **switches,
    }


def u_dit_t(**changes) -> dict:
    """U-DiT-T (the toy DiT-UNet with token downsampling) with `changes`: the T7/T9 ablations."""
    return toy(hidden_size=40, **PLAIN, attention="tokens", downsampler="dwconv_shortcut") | changes


# name -> UShapedDiT keywords, one line per model (as DiT's `DiT_XL_2 = ...` constructors)
TOY_CONFIGS: dict[str, dict] = {
    "DiT-UNet": toy(hidden_size=40, **PLAIN, attention="full"),
    "DiT-UNet (Slim)": toy(hidden_size=30, **PLAIN, attention="full"),
    "DiT-UNet + KV downsampling": u_dit_t(attention="kv"),
    "U-DiT-T": u_dit_t(),
    "U-DiT-T + cos": u_dit_t(cosine=True),
    "U-DiT-T + cos + RoPE2D": u_dit_t(cosine=True, rope=True),
    "U-DiT-T + cos + RoPE2D + DWconv FFN": u_dit_t(cosine=True, rope=True, ffn="dwconv"),
    "U-DiT-T + cos + RoPE2D + DWconv FFN + re-param": u_dit_t(cosine=True, rope=True, ffn="rep"),
    "U-DiT-T (PS only)": u_dit_t(downsampler="ps"),
    "U-DiT-T (DWconv + PS)": u_dit_t(downsampler="dwconv"),
    "U-DiT-T (dense conv)": u_dit_t(downsampler="dense"),
}
VANILLA_CONFIGS: dict[str, dict] = {  # U-DiT without its modifications (T10)
    "U-DiT-S vanilla": released(hidden_size=96, num_heads=4, depths=(2, 5, 8, 5, 2), **PLAIN),
    "U-DiT-B vanilla": released(hidden_size=192, num_heads=8, depths=(2, 5, 8, 5, 2), **PLAIN),
    "U-DiT-L vanilla": released(hidden_size=384, num_heads=16, depths=(2, 5, 8, 5, 2), **PLAIN),
}
RELEASED_CONFIGS: dict[str, dict] = {  # exactly the official U_DiT_S/B/L
    "U-DiT-S": released(hidden_size=96, num_heads=4, depths=(2, 5, 8, 5, 2)),
    "U-DiT-B": released(hidden_size=192, num_heads=8, depths=(2, 5, 8, 5, 2)),
    "U-DiT-L": released(hidden_size=384, num_heads=16, depths=(2, 5, 8, 5, 2)),
}

# Where the paper reports each model's GFLOPs: (table, row) of udit/paper's numbers; the
# table's name ends in its number, the spec's source ('toy_T1' -> 'T1').
PAPER_ROWS: dict[str, tuple[str, str]] = {
    "DiT-UNet": ("toy_T1", "DiT-UNet"),
    "DiT-UNet (Slim)": ("ablation_T9", "DiT-UNet (Slim)"),
    "DiT-UNet + KV downsampling": ("toy_T1", "DiT-UNet + key-value downsampling"),
    "U-DiT-T": ("downsampler_T7", "depthwise conv with shortcut + pixel shuffle"),
    "U-DiT-T + cos": ("ablation_T9", "+ cosine similarity"),
    "U-DiT-T + cos + RoPE2D": ("ablation_T9", "+ RoPE2D"),
    "U-DiT-T + cos + RoPE2D + DWconv FFN": ("ablation_T9", "+ depthwise-conv FFN"),
    "U-DiT-T + cos + RoPE2D + DWconv FFN + re-param": ("ablation_T9", "+ re-parameterisation"),
    "U-DiT-T (PS only)": ("downsampler_T7", "pixel shuffle only"),
    "U-DiT-T (DWconv + PS)": ("downsampler_T7", "depthwise conv + pixel shuffle"),
    **{name: ("vanilla_vs_all_T10", name) for name in VANILLA_CONFIGS},
    **{name: ("main_400k_T2", name) for name in RELEASED_CONFIGS},
}
# Not in a table: the T7 caption says a dense-conv downsampler costs 2.22 GFLOPs.
CAPTION_GFLOPS = {"U-DiT-T (dense conv)": (2.22, "T7")}  # name -> (GFLOPs, source)

# What each toy reconstruction chose, after TOY_NOTE.
TOY_NOTES = {
    "DiT-UNet": "plain U-Net of DiT blocks, full self-attention at every level",
    # full attention with C=30 lands on the 0.92 GFLOPs of T9 (no RoPE, so head_dim 15 is fine)
    "DiT-UNet (Slim)": "DiT-UNet narrowed to C=30 to match U-DiT-T's cost",
    "DiT-UNet + KV downsampling": "keys/values 2x2 average-pooled after the depthwise-conv "
    "downsampler; queries keep all tokens (operator reconstructed: the paper names no pooling "
    "operator)",
    "U-DiT-T": "= DiT-UNet + token downsampling; the paper gives 0.90 GFLOPs in T1 and 0.91 in "
    "T7/T9 for this model",
    "U-DiT-T + cos + RoPE2D + DWconv FFN": "FFN = official FeedForward(rep=False): 1x1, GELU, "
    "dw5x5, 1x1 (= the deployed re-param graph)",
    "U-DiT-T + cos + RoPE2D + DWconv FFN + re-param": "train graph adds split 1x1s and "
    "identity/3x3/1x1 branches; eval FLOPs = the fused graph",
    "U-DiT-T (DWconv + PS)": "depthwise 5x5 without the identity shortcut",
    "U-DiT-T (dense conv)": "T7 caption: a dense-conv downsampler costs 2.22 GFLOPs; here a "
    "dense 5x5 conv with shortcut (the official toy script measures 2.22 with a dense 3x3 in a "
    "different config)",
}
VANILLA_NOTE = (
    "U-DiT without cosine attention, RoPE2D, depthwise FFN and re-param (DiT MLP, ratio 2)"
)
RELEASED_NOTE = "official udit_models.py U_DiT_S/B/L; official checkpoints load strictly"
# Train-graph (unfused FFN) parameter counts of the official U_DiT_S/B/L (counted with the official
# udit_models.py, before re-parameterisation); num_params() reproduces them.
TRAIN_GRAPH_PARAMS_M = {"U-DiT-S": 58.90, "U-DiT-B": 231.25, "U-DiT-L": 916.34}


def _paper_gflops(name: str) -> tuple[float, str]:
    """-> (GFLOPs the paper reports for `name`, the table that says so)."""
    if name in CAPTION_GFLOPS:
        return CAPTION_GFLOPS[name]
    table, row = PAPER_ROWS[name]
    # columns: [gflops, fid, sfid, is, precision, recall]
    return float(paper_numbers()[table][row][0]), table.rsplit("_", 1)[-1]


def _spec(name: str, cfg: dict, *, note: str, tol: float, **extra) -> ModelSpec:
    gflops, source = _paper_gflops(name)
    return ModelSpec(
        name=name,
        build=partial(UShapedDiT, **cfg),
        paper_gflops=gflops,
        source=source,
        note=note,
        extra={"gflops_tolerance": tol, "config": dict(cfg), **extra},
    )


def _released_spec(name: str, cfg: dict) -> ModelSpec:
    return _spec(
        name,
        cfg,
        note=RELEASED_NOTE,
        tol=RELEASED_TOL,
        paper_params_m=paper_numbers()["configurations_T8"][name]["params_m"],
        train_graph_params_m=TRAIN_GRAPH_PARAMS_M[name],
    )


def _toy_note(name: str) -> str:
    return TOY_NOTE + (f"; {TOY_NOTES[name]}" if name in TOY_NOTES else "")


UNET_MODELS: dict[str, ModelSpec] = {
    **{n: _spec(n, cfg, note=_toy_note(n), tol=TOY_TOL) for n, cfg in TOY_CONFIGS.items()},
    **{n: _spec(n, cfg, note=VANILLA_NOTE, tol=RELEASED_TOL) for n, cfg in VANILLA_CONFIGS.items()},
    **{n: _released_spec(n, cfg) for n, cfg in RELEASED_CONFIGS.items()},
}
