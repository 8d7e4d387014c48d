"""The other architectures of paper Table 3: U-ViT-L/XL, PixArt-alpha-XL/2, DiffiT-XL/2.

Their GFLOPs against paper_numbers.yaml `other_architectures_T3` (through `udit flops`), fvcore
counts at tiny size against the MACs written out per layer, the forward contract shared with DiT
(learned sigma, null class, guidance, label dropout), and each family's distinctive part against
a reference spelled out here: U-ViT's long skips, PixArt's adaLN-single, DiffiT's TMSA.
"""

import json
import math

import pytest
import torch
from torch import nn

from udit.diffusion.cfg import ClassifierFreeGuidance
from udit.flops import count_flops, main
from udit.models import MODELS, create_model
from udit.models.diffit import relative_position_index
from udit.paper import paper_numbers
from udit.training.determinism import LabelDropControl

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# registry name -> row of paper_numbers.yaml other_architectures_T3 (the exact names)
T3_ROWS = {
    "U-ViT-L": "U-ViT-L",
    "U-ViT-XL": "U-ViT-XL* (depth 20 -> 30)",
    "PixArt-alpha-XL/2": "PixArt-alpha-XL/2* (text cross-attention removed)",
    "DiffiT-XL/2": "DiffiT-XL/2* (TMSA re-implemented)",
}
NAMES = list(T3_ROWS)
NUM_CLASSES, SIDE = 10, 8
TINY = {"input_size": SIDE, "hidden_size": 32, "depth": 2, "num_heads": 2}
TINY["num_classes"] = NUM_CLASSES


def _tiny(name: str, **overrides) -> nn.Module:
    return create_model(name, **{**TINY, **overrides})


def _randomise(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Random values in every parameter and float buffer: zero-initialised output layers would
    otherwise hide everything upstream of them."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*model.parameters(), *model.buffers()]:
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def _inputs(batch: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, SIDE, SIDE, generator=g, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), generator=g).to(dtype)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return x, t, y


# --- registry and GFLOPs ----------------------------------------------------------------------


def test_registry_names_rows_and_paper_gflops_from_yaml():
    table = paper_numbers()["other_architectures_T3"]
    for name, row in T3_ROWS.items():
        spec = MODELS[name]
        assert spec.paper_gflops == table[row][0] and spec.source == "T3"
        assert (
            spec.extra["paper_row"] == row and spec.extra["paper_table"] == "other_architectures_T3"
        )
        assert "/" in spec.note or "." in spec.note  # names the source read


@pytest.mark.slow
def test_udit_flops_json_lists_the_four_within_one_percent(tmp_path, capsys):
    assert main(["--models", *NAMES, "--format", "json", "--out", str(tmp_path)]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    table = paper_numbers()["other_architectures_T3"]
    assert list(rows) == NAMES
    for name, row in T3_ROWS.items():
        paper = table[row][0]
        assert rows[name]["paper_gflops"] == paper
        assert abs(rows[name]["gflops"] / paper - 1) <= 0.01, (name, rows[name]["gflops"], paper)


def _macs(name: str, *, s: int, p: int, c: int, d: int, depth: int) -> int:
    """fvcore MACs at batch 1, written out per layer (linear: in*out per row; conv: per output
    pixel; layer_norm: 4 per element, 5 with affine; attention: 2 L^2 D)."""
    co, h, t = 2 * c, 4 * d, (s // p) ** 2
    patch = d * c * p * p * t
    if name.startswith("U-ViT"):
        n = t + 2  # label and time tokens
        block = 2 * 5 * n * d + 3 * d * d * n + 2 * n * n * d + d * d * n + 2 * h * d * n
        skips = (depth // 2) * 2 * d * d * n
        head = 5 * n * d + d * p * p * co * n + co * co * 9 * s * s  # norm, decoder, 3x3 conv
        return patch + (depth + 1) * block + skips + head
    block = 2 * 4 * t * d + 3 * d * d * t + 2 * t * t * d + d * d * t + 2 * h * d * t
    head = 4 * t * d + d * p * p * co * t
    t_mlp = 256 * d + d * d
    if name.startswith("PixArt"):
        return patch + t_mlp + d * 6 * d + depth * block + head  # ONE t_block for all blocks
    return patch + t_mlp + depth * (block + 3 * d * d) + head  # DiffiT: W_t c per block


@pytest.mark.parametrize("name", NAMES)
def test_fvcore_count_equals_the_layers_written_out(name):
    model = _tiny(name, depth=4).eval()
    macs, uncounted = count_flops(model, input_size=SIDE)
    assert uncounted == {}
    assert macs == _macs(name, s=SIDE, p=2, c=4, d=32, depth=4)


def test_full_size_layouts_on_meta():
    with torch.device("meta"):
        l, xl = create_model("U-ViT-L"), create_model("U-ViT-XL")
        pixart, diffit = create_model("PixArt-alpha-XL/2"), create_model("DiffiT-XL/2")
    assert (len(l.in_blocks), len(l.out_blocks), l.pos_embed.shape) == (10, 10, (1, 258, 1024))
    assert (len(xl.in_blocks), len(xl.out_blocks)) == (15, 15)  # depth 20 -> 30
    assert all(b.attn.qkv.bias is None for b in l.in_blocks)  # qkv_bias False
    assert l.final_layer.kernel_size == (3, 3)
    for model in (pixart, diffit):
        assert (len(model.blocks), model.blocks[0].norm1.normalized_shape) == (28, (1152,))
        assert model.blocks[0].attn.num_heads == 16 and model.patch_size == 2
    assert not any("adaLN" in k for k in pixart.state_dict())  # adaLN-single: one t_block
    assert pixart.blocks[0].scale_shift_table.shape == (6, 1152)
    assert diffit.blocks[0].attn.relative_position_bias_table.shape == (31 * 31, 16)


# --- the forward contract shared with DiT ------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_tiny_forward_backward_shapes_and_finite_params(name):
    model = _tiny(name)
    assert model.num_classes == NUM_CLASSES and model.in_channels == 4
    assert all(torch.isfinite(p).all() for p in [*model.parameters(), *model.buffers()])
    x, t, y = _inputs(3)
    out = model(x, t, y)
    assert out.shape == (3, 8, SIDE, SIDE)  # eps (4) + learned sigma (4)
    assert torch.isfinite(out).all()
    _randomise(model)  # zero output layers would give zero gradients upstream
    model(x, t, y).square().mean().backward()
    for key, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), key
            assert param.grad.abs().sum() > 0, f"{key} gets no gradient"


@pytest.mark.parametrize("name", NAMES)
def test_null_label_guidance_and_label_dropout(name):
    model = _randomise(_tiny(name)).double().eval()  # float64: batch 2 vs 1 is exact
    x, t, _ = _inputs(1, dtype=torch.float64)
    y, null = torch.tensor([3]), torch.tensor([NUM_CLASSES])
    cond, uncond = model(x, t, y)[0], model(x, t, null)[0]  # null = num_classes is a valid row
    assert not torch.allclose(cond, uncond, atol=1e-6)
    assert not torch.allclose(cond, model(x, t + 100, y)[0], atol=1e-6)  # time matters
    out = ClassifierFreeGuidance(model, cfg_scale=4.0)(x, t, y)
    assert torch.allclose(out[0, :3], uncond[:3] + 4.0 * (cond[:3] - uncond[:3]), atol=1e-10)
    assert torch.allclose(out[0, 3:], cond[3:], atol=1e-10)
    # the trainer's deterministic label dropout finds the one label embedder (p 0.1, DiT recipe)
    drops = LabelDropControl(model)
    assert len(drops) == 1 and drops.drop_prob == 0.1
    model.train()
    drops.masks = torch.ones(1, 1, dtype=torch.bool)
    assert torch.allclose(model(x, t, y)[0], uncond)  # a dropped label is the null label
    drops.remove()


# --- what distinguishes each family -------------------------------------------------------------


def test_uvit_long_skips_pair_shallow_with_deep():
    model = _randomise(_tiny("U-ViT-L", depth=6)).double().eval()
    x, t, y = _inputs(2, dtype=torch.float64)
    # U-ViT forward written out: tokens [label, time, patches]; out-block j fuses in-block 2-j
    tokens = model.patch_embed(x)
    time = _sinusoid(t, 32)
    h = torch.cat([model.y_embedder(y)[:, None], time[:, None], tokens], 1) + model.pos_embed
    ins = []
    for blk in model.in_blocks:
        h = blk(h)
        ins.append(h)
    h = model.mid_block(h)
    for j, blk in enumerate(model.out_blocks):
        h = blk(h, ins[len(ins) - 1 - j])
    h = model.decoder_pred(model.norm(h))[:, 2:]  # (N, 16, 2*2*8)
    img = h.reshape(2, 4, 4, 2, 2, 8).permute(0, 5, 1, 3, 2, 4).reshape(2, 8, 8, 8)
    assert torch.allclose(model(x, t, y), model.final_layer(img), atol=1e-12)


def _sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos | sin] of t * 10000^(-i / (dim/2)), i < dim/2 (U-ViT / DiT timestep_embedding)."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    args = t[:, None].double() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def test_pixart_adaln_single_one_shared_mlp_and_per_block_tables():
    model = _randomise(_tiny("PixArt-alpha-XL/2", depth=3)).double().eval()
    x, t, y = _inputs(2, dtype=torch.float64)
    calls, final_cond = [], []
    model.t_block.register_forward_hook(lambda *a: calls.append(1))
    model.final_layer.register_forward_hook(lambda m, args, out: final_cond.append(args[1]))
    out = model(x, t, y)
    assert len(calls) == 1  # one modulation MLP per forward, shared by every block
    c = model.t_embedder(t) + model.y_embedder(y)
    assert torch.equal(final_cond[0], c)  # the final layer modulates with c itself
    # one block written out: (shift, scale, gate) x (attention, MLP) = its table + t_block(c)
    mod = model.blocks[1].scale_shift_table + model.t_block(c).reshape(2, 6, 32)
    h = torch.randn(2, 16, 32, dtype=torch.float64)
    blk = model.blocks[1]
    ln = lambda v: nn.functional.layer_norm(v, (32,), eps=1e-6)
    ref = h + mod[:, 2, None] * blk.attn(ln(h) * (1 + mod[:, 1, None]) + mod[:, 0, None])
    ref = ref + mod[:, 5, None] * blk.mlp(ln(ref) * (1 + mod[:, 4, None]) + mod[:, 3, None])
    assert torch.allclose(blk(h, model.t_block(c)), ref, atol=1e-12)
    # final layer: (shift, scale) = its own table + c, no MLP
    final = model.final_layer
    shift, scale = final.scale_shift_table[0] + c, final.scale_shift_table[1] + c
    ref = final.linear(ln(h) * (1 + scale[:, None]) + shift[:, None])
    assert torch.allclose(final(h, c), ref, atol=1e-12)
    with torch.no_grad():
        model.blocks[2].scale_shift_table.add_(1.0)  # each block has its own table
    assert not torch.allclose(model(x, t, y), out)


def test_diffit_relative_position_index_is_swin_offsets():
    g = 3
    index = relative_position_index(g, torch.device("cpu"))
    for i in range(g * g):
        for j in range(g * g):
            dr, dc = i // g - j // g, i % g - j % g  # query minus key, rows and columns
            assert index[i, j] == (dr + g - 1) * (2 * g - 1) + (dc + g - 1)


def test_diffit_tmsa_is_time_dependent_attention_with_bias():
    model = _randomise(_tiny("DiffiT-XL/2")).double().eval()
    attn, g = model.blocks[0].attn, SIDE // 2
    x = torch.randn(2, g * g, 32, dtype=torch.float64)
    c = torch.randn(2, 32, dtype=torch.float64)
    # written out: q, k, v = W_s x + W_t c; softmax(q k^T / sqrt(d) + B) v per head; proj
    qkv = (
        x @ attn.qkv.weight.T
        + attn.qkv.bias
        + (c @ attn.qkv_temb.weight.T + attn.qkv_temb.bias)[:, None]
    )
    q, k, v = (z.reshape(2, g * g, 2, 16).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
    bias = torch.empty(2, g * g, g * g, dtype=torch.float64)
    for i in range(g * g):
        for j in range(g * g):
            dr, dc = i // g - j // g + g - 1, i % g - j % g + g - 1
            bias[:, i, j] = attn.relative_position_bias_table[dr * (2 * g - 1) + dc]
    scores = q @ k.transpose(-2, -1) / math.sqrt(16) + bias
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, g * g, 32)
    ref = ref @ attn.proj.weight.T + attn.proj.bias
    assert torch.allclose(attn(x, c), ref, atol=1e-12)


# --- what a caller sees of a setting the registry never uses ---------------------------------


def _std_ok(tensor: torch.Tensor, want: float, what: str) -> None:
    """Sample std within 5 standard errors (std's relative SE is 1/sqrt(2n)) of `want`."""
    n = tensor.numel()
    assert abs(float(tensor.std()) / want - 1) < 5 / math.sqrt(2 * n), (what, float(tensor.std()))


def test_initial_weights_follow_each_reference_recipe():
    """The first training step starts from the reference code's initial distributions (std of
    each tensor against its recipe, within 5 SE of the sample size): U-ViT trunc-normal 0.02
    linears with zero biases and position table; PixArt's modulation tables N(0, 1/D) and
    t_block N(0, 0.02); DiffiT's relative-position biases trunc-normal 0.02."""
    torch.manual_seed(0)
    d = 64
    uvit = _tiny("U-ViT-L", hidden_size=d)
    _std_ok(uvit.pos_embed, 0.02, "pos_embed")
    for name, module in uvit.named_modules():
        if isinstance(module, nn.Linear):
            _std_ok(module.weight, 0.02, name)
            assert module.bias is None or not module.bias.any(), name
    pixart = _tiny("PixArt-alpha-XL/2", hidden_size=d)
    tables = [b.scale_shift_table for b in pixart.blocks]
    _std_ok(torch.cat([t.flatten() for t in tables]), d**-0.5, "block tables")
    _std_ok(pixart.final_layer.scale_shift_table, d**-0.5, "final table")
    _std_ok(pixart.t_block[1].weight, 0.02, "t_block")
    diffit = _tiny("DiffiT-XL/2", hidden_size=d)
    biases = torch.cat([b.attn.relative_position_bias_table.flatten() for b in diffit.blocks])
    _std_ok(biases, 0.02, "relative position bias")


@pytest.mark.parametrize("name", NAMES)
def test_a_patch_size_of_4_unpatchifies_to_the_input_grid(name):
    """Every registry model uses patch 2 (where p * 2 == p ** 2); patch 4 must still give an
    (N, 2C, H, W) output whose every pixel depends on its own patch's token."""
    model = _randomise(_tiny(name, patch_size=4)).eval()
    x, t, y = _inputs(2)
    out = model(x, t, y)
    assert out.shape == (2, 8, SIDE, SIDE) and torch.isfinite(out).all()


def test_uvit_depth_must_be_even_and_its_mlp_uses_exact_gelu():
    """U-ViT pairs in- and out-blocks around one mid-block, so an odd depth is refused naming
    it; its MLPs use exact GELU (U-ViT's nn.GELU), where DiT's use the tanh form."""
    for depth in (3, 1, 0):
        refused = f"U-ViT depth must be even and >= 2 .*, got {depth}; fix"
        with pytest.raises(ValueError, match=refused):
            _tiny("U-ViT-L", depth=depth)
    gelus = [m for m in _tiny("U-ViT-L").modules() if isinstance(m, nn.GELU)]
    assert gelus and {m.approximate for m in gelus} == {"none"}
    dit_gelus = [
        m for m in create_model("DiT-S/8", input_size=8).modules() if isinstance(m, nn.GELU)
    ]
    assert {m.approximate for m in dit_gelus} == {"tanh"}


@pytest.mark.parametrize("name", ["PixArt-alpha-XL/2", "DiffiT-XL/2"])
def test_dit_derived_models_keep_dits_norms_and_fixed_positions(name):
    """PixArt-alpha and DiffiT build on DiT's blocks: every LayerNorm is DiT's (no affine,
    eps 1e-6, not torch's 1e-5) and the sin-cos position table is a constant, never trained."""
    model = _tiny(name)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 and not m.elementwise_affine for m in norms)
    assert not model.pos_embed.requires_grad
    assert all(p is not model.pos_embed for p in model.parameters() if p.requires_grad)
