"""Building blocks of the U-shaped family: downsampled attention, RoPE2D, FFNs with
re-parameterisation.

Module and parameter names (to_qkv, to_out, logit_scale, downsampler.layer, project_in, dwconv,
project_out, fc1, fc2) follow the official U-DiT udit_models.py so released checkpoints load
strictly. Everything works on NCHW feature maps; attention runs on token groups
(N, P, heads, n, head_dim).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6  # LayerNorm2d eps of the official code
LOGIT_SCALE_INIT = math.log(
    10.0
)  # cosine attention: initial per-head temperature (paper Sec. 3.3, official code)
LOGIT_SCALE_MAX = 4.6052  # = log(100), the clamp the official code applies before exp
ROPE_THETA = 10000.0  # RoPE2D base frequency (official precompute_freqs_cis_2d)
DOWN_FACTOR = 2  # tokens downsampled by 2 along each axis -> 4 groups (paper Sec. 3.2)
ATTENTIONS = ("full", "kv", "tokens")  # DiT-UNet / +KV downsampling (T1) / U-DiT (T1, T7)
DOWNSAMPLERS = ("dwconv_shortcut", "dwconv", "ps", "dense")  # T7 rows; 'dense' = T7 caption
FFNS = ("mlp", "dwconv", "rep")  # DiT MLP / + DWconv FFN / + re-param (T9)


def layer_norm_2d(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels of an NCHW map, no affine (official LayerNorm2d(affine=False))."""
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=LN_EPS).permute(0, 3, 1, 2)


def modulate_2d(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of a map: x (N, C, H, W), shift/scale (N, C)."""
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


#################################################################################
#                                    RoPE2D                                     #
#################################################################################


def rope2d_angles(
    *, head_dim: int, height: int, width: int, theta: float = ROPE_THETA
) -> torch.Tensor:
    """Rotation angles (height*width, head_dim/2), float64, for tokens in row-major order.

    Head-dim pairs alternate x and y: pair 2m rotates by x * f_m, pair 2m+1 by y * f_m with
    f_m = theta^(-4m/head_dim) (official precompute_freqs_cis_2d: x = pos % side,
    y = pos // side)."""
    if head_dim % 4:
        raise ValueError(f"RoPE2D needs head_dim divisible by 4, got {head_dim}")
    freqs = theta ** (
        -torch.arange(0, head_dim, 4, dtype=torch.float64) / head_dim
    )  # (head_dim/4,)
    pos = torch.arange(height * width)
    xs, ys = (pos % width).double(), (pos // width).double()
    angles = torch.stack(
        [torch.outer(xs, freqs), torch.outer(ys, freqs)], dim=-1
    )  # (n, head_dim/4, 2)
    return angles.reshape(height * width, head_dim // 2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (2i, 2i+1) of x (..., n, head_dim) by angles with
    cos/sin (n, head_dim/2)."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., n, head_dim/2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return out.flatten(-2)


#################################################################################
#                            Downsampled attention                              #
#################################################################################


class DownSampler(nn.Module):
    """Token downsampler before attention (T7): a k x k conv (depthwise, or dense for the caption's
    2.22-GFLOP variant), optionally with an identity shortcut.
    'ps' = pixel (un)shuffle only, no conv."""

    def __init__(self, dim: int, *, kind: str, kernel: int):
        super().__init__()
        if kind not in DOWNSAMPLERS:
            raise ValueError(f"unknown downsampler {kind!r}; choose from {DOWNSAMPLERS}")
        self.shortcut = kind in (
            "dwconv_shortcut",
            "dense",
        )  # dense: as in udit_models_original.py (conv3 + shortcut)
        groups = 1 if kind == "dense" else dim
        self.layer = (
            None
            if kind == "ps"
            else nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return x
        return self.layer(x) + x if self.shortcut else self.layer(x)


def to_groups(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel-unshuffle a map into factor^2 groups of tokens: (N, C, H, W) -> (N, f*f, H/f * W/f, C).
    Group p = i * f + j holds pixels (f*h + i, f*w + j): every token kept, none dropped."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // factor, factor, w // factor, factor)
    return x.permute(0, 3, 5, 2, 4, 1).reshape(n, factor * factor, (h // factor) * (w // factor), c)


def from_groups(x: torch.Tensor, factor: int, h: int, w: int) -> torch.Tensor:
    """Inverse of to_groups: (N, f*f, n, C) -> (N, C, H, W)."""
    n, _, _, c = x.shape
    x = x.reshape(n, factor, factor, h // factor, w // factor, c)
    return x.permute(0, 5, 3, 1, 4, 2).reshape(n, c, h, w)


def pool_tokens(t: torch.Tensor, h: int, w: int, factor: int) -> torch.Tensor:
    """2x2 average pooling of one token group on its grid: (N, 1, H*W, C) -> (N, 1, H*W/f^2, C)."""
    grid = t[:, 0].transpose(1, 2).unflatten(-1, (h, w))  # (N, C, H, W)
    return F.avg_pool2d(grid, factor).flatten(2).transpose(1, 2)[:, None]


class DownsampledAttention(nn.Module):
    """Self-attention on an NCHW map with three token layouts (paper Sec. 3.2, T1):
    'full'   : plain self-attention over all H*W tokens (DiT-UNet);
    'tokens' : q, k, v all downsampled: downsampler, pixel-unshuffle into 4 groups of H/2 x W/2
               tokens, attention inside each group, groups merged back (U-DiT);
    'kv'     : queries stay at H*W tokens; keys and values are 2x2 average-pooled to H/2 x W/2
               tokens (reconstruction: the paper gives no operator; projections stay at full
               resolution so the cost matches token downsampling, 0.91 vs 0.90 GFLOPs in T1).
    `fused=True` (default, as DiT) runs F.scaled_dot_product_attention (flash / memory-efficient
    kernels on GPU); False spells out softmax(q k^T * scale) v as the official code does. Both give
    the same numbers and the same fvcore count (udit.flops handles the SDPA op); no parameters
    depend on the switch, so state-dict keys are the same either way."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        attention: str,
        downsampler: str,
        downsampler_kernel: int,
        cosine: bool,
        rope: bool,
        fused: bool = True,
    ):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; choose from {ATTENTIONS}")
        if dim % num_heads:
            raise ValueError(f"width {dim} not divisible by num_heads={num_heads}")
        if rope and (dim // num_heads) % 4:
            raise ValueError(
                f"RoPE2D needs head_dim divisible by 4; width {dim} / {num_heads} heads = "
                f"{dim // num_heads}"
            )
        if rope and attention == "kv":
            raise ValueError(
                "RoPE2D with key/value-only downsampling is not defined (q and k grids differ)"
            )
        self.attention, self.heads, self.rope, self.fused = attention, num_heads, rope, fused
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        if attention != "full":
            self.downsampler = DownSampler(dim, kind=downsampler, kernel=downsampler_kernel)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = nn.Conv2d(dim, dim, 1)
        if cosine:  # per-head learnable temperature (official 'v2' attention)
            self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), LOGIT_SCALE_INIT))
        else:
            self.logit_scale = None
        self._rope_cache: dict = {}

    def _rope_tables(self, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, like.dtype, like.device)
        if key not in self._rope_cache:
            angles = rope2d_angles(head_dim=self.head_dim, height=h, width=w)
            self._rope_cache[key] = (angles.cos().to(like), angles.sin().to(like))
        return self._rope_cache[key]

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(
            -3, -2
        )  # (N, P, n, C) -> (N, P, heads, n, d)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) v for q (N, P, heads, n, d), k and v (N, P, heads, n_kv, d).
        Cosine attention: q and k unit-normalised, scale = exp(logit_scale clamped at log 100)
        per head."""
        scale = self.scale
        if self.logit_scale is not None:  # cosine similarity with a clamped learnable temperature
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            scale = self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()  # (heads, 1, 1)
        if not self.fused:
            attn = (q @ k.transpose(-2, -1)) * scale  # (N, P, heads, n, n_kv)
            return attn.softmax(dim=-1) @ v  # (N, P, heads, n, d)
        if self.logit_scale is not None:
            # SDPA takes one float scale: fold the per-head temperature into q
            # ((s q) k^T = s (q k^T)).
            q, scale = q * scale, 1.0
        groups = q.shape[:2]
        # Flash / memory-efficient kernels want (batch, heads, L, d): fold the token groups into
        # the batch.
        out = F.scaled_dot_product_attention(
            q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), scale=scale
        )  # (N*P, heads, n, d)
        return out.unflatten(0, groups)  # (N, P, heads, n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        f = DOWN_FACTOR
        if self.attention == "full":
            tokens, (gh, gw) = x.flatten(2).transpose(1, 2)[:, None], (h, w)  # (N, 1, H*W, C)
        else:
            x = self.downsampler(x)  # (N, C, H, W)
            if self.attention == "tokens":
                tokens, (gh, gw) = to_groups(x, f), (h // f, w // f)  # (N, 4, H*W/4, C)
            else:
                tokens, (gh, gw) = x.flatten(2).transpose(1, 2)[:, None], (h, w)
        q, k, v = self.to_qkv(tokens).chunk(3, dim=-1)  # (N, P, n, C) each
        if self.attention == "kv":
            k, v = pool_tokens(k, h, w, f), pool_tokens(v, h, w, f)  # (N, 1, H*W/4, C)
        q, k, v = map(self._heads, (q, k, v))  # (N, P, heads, n, d)
        if self.rope:
            cos, sin = self._rope_tables(gh, gw, q)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = self._attend(q, k, v)  # (N, P, heads, n, d)
        out = out.transpose(-3, -2).flatten(-2)  # (N, P, n, C)
        if self.attention == "tokens":
            out = from_groups(out, f, h, w)  # (N, C, H, W)
        else:
            out = out[:, 0].transpose(1, 2).reshape(n, c, h, w)
        return self.to_out(out)


#################################################################################
#                                     FFNs                                      #
#################################################################################


class Mlp(nn.Module):
    """DiT's 2-layer MLP on a map (1x1 convs, tanh GELU): the FFN of DiT-UNet and of
    vanilla U-DiT (T10)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DWConvFFN(nn.Module):
    """'+ DWconv FFN' step (T9) = the official FeedForward(rep=False): 1x1 conv, GELU,
    depthwise 5x5, 1x1 conv. It is also exactly the deployed graph of the re-parameterised FFN,
    hence the same 0.95 GFLOPs."""

    def __init__(self, dim: int, hidden: int, kernel: int = 5):
        super().__init__()
        self.project_in = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.project_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.dwconv(F.gelu(self.project_in(x))))


def _fuse_pointwise(first: nn.Conv2d, second: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Two stacked 1x1 convs -> one: W = W2 W1, b = W2 b1 + b2."""
    w1, w2 = first.weight.flatten(1), second.weight.flatten(1)
    return (w2 @ w1)[:, :, None, None], (w2 @ first.bias[:, None])[:, 0] + second.bias


class RepFFN(nn.Module):
    """'+ re-param' step (T9) = the official FeedForward(rep=True).

    Train graph: 1x1 (dim -> h/2), 1x1 (h/2 -> h), GELU, identity + dw5x5 + dw3x3 + dw1x1,
    1x1 (h -> h/2), 1x1.
    Eval graph: one fused 1x1, GELU, one dw5x5 (identity and the 3x3/1x1 kernels padded into it),
    one fused 1x1.
    The fused tensors are computed from the parameters into NEW tensors (never in place: the
    official add_buffer adds into dwconv[0].weight itself, so every eval() corrupts the weights)
    and cached until a parameter changes (optimizer step, load_state_dict, dtype or device move)."""

    KERNELS = (5, 3, 1)

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"re-parameterised FFN needs an even hidden width, got {hidden}")
        self.hidden = hidden
        self.project_in = nn.Sequential(
            nn.Conv2d(dim, hidden // 2, 1), nn.Conv2d(hidden // 2, hidden, 1)
        )
        self.dwconv = nn.ModuleList(
            nn.Conv2d(hidden, hidden, k, padding=k // 2, groups=hidden) for k in self.KERNELS
        )
        self.project_out = nn.Sequential(
            nn.Conv2d(hidden, hidden // 2, 1), nn.Conv2d(hidden // 2, dim, 1)
        )
        self._fused: tuple | None = None
        self._fused_key: tuple | None = None

    @torch.no_grad()
    def fused_weights(self) -> dict[str, torch.Tensor]:
        """Deployed weights (fresh tensors; the parameters are only read)."""
        w_in, b_in = _fuse_pointwise(*self.project_in)
        big = self.KERNELS[0]
        w_dw = torch.zeros_like(self.dwconv[0].weight)  # (h, 1, 5, 5)
        for conv in self.dwconv:
            pad = (big - conv.kernel_size[0]) // 2
            w_dw = w_dw + F.pad(conv.weight, (pad, pad, pad, pad))
        w_dw[:, :, big // 2, big // 2] += 1.0  # the identity branch
        b_dw = sum(conv.bias for conv in self.dwconv)
        w_out, b_out = _fuse_pointwise(*self.project_out)
        return {
            "w_in": w_in,
            "b_in": b_in,
            "w_dw": w_dw,
            "b_dw": b_dw,
            "w_out": w_out,
            "b_out": b_out,
        }

    def _branch_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, 1, 5, 5) kernel and (h,) bias of identity + every dw branch (autograd-tracked)."""
        big = self.KERNELS[0]
        w = sum(F.pad(c.weight, (((big - c.kernel_size[0]) // 2),) * 4) for c in self.dwconv)
        identity = torch.zeros_like(w)
        identity[:, :, big // 2, big // 2] = 1.0
        return w + identity, sum(c.bias for c in self.dwconv)

    def _deployed(self) -> dict[str, torch.Tensor]:
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        if key != self._fused_key:
            self._fused, self._fused_key = self.fused_weights(), key
        return self._fused

    def train(self, mode: bool = True):
        # Fold when entering eval (as the official code, so the fold stays outside the traced
        # forward that FLOP counters see); forward re-folds only if a parameter changed since.
        self._fused = self._fused_key = None
        super().train(mode)
        if not mode:
            self._deployed()
        return self

    def deployed_num_params(self) -> int:
        return sum(t.numel() for t in self.fused_weights().values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = F.gelu(self.project_in(x))  # (N, h, H, W)
            # identity + dw5x5 + dw3x3 + dw1x1 as ONE dw5x5 whose kernel is their sum, built
            # differentiably (the same function and gradients, another rounding order): on CPU
            # a 1x1 depthwise conv runs torch's per-channel slow path, and four passes become one
            w, b = self._branch_kernel()
            x = F.conv2d(x, w, b, padding=self.KERNELS[0] // 2, groups=self.hidden)
            return self.project_out(x)  # (N, dim, H, W)
        w = self._deployed()
        x = F.gelu(F.conv2d(x, w["w_in"], w["b_in"]))
        x = F.conv2d(x, w["w_dw"], w["b_dw"], padding=self.KERNELS[0] // 2, groups=self.hidden)
        return F.conv2d(x, w["w_out"], w["b_out"])


def build_ffn(kind: str, *, dim: int, mlp_ratio: float) -> nn.Module:
    if kind not in FFNS:
        raise ValueError(f"unknown ffn {kind!r}; choose from {FFNS}")
    hidden = int(dim * mlp_ratio)
    return {"mlp": Mlp, "dwconv": DWConvFFN, "rep": RepFFN}[kind](dim, hidden)
