"""The U-shaped family (udit/models/unet.py, unet_blocks.py): registry, shapes, re-parameterisation,
official key layout, parameter counts, token grouping and RoPE2D. GFLOPs against the paper are
checked for every registry model in tests/test_flops.py."""

import argparse
import math

import pytest
import torch
from torch import nn

from udit.diffusion import ClassifierFreeGuidance
from udit.flops import build_for_counting, count_flops
from udit.models.unet import UNET_MODELS, UShapedDiT
from udit.models.unet_blocks import (
    LOGIT_SCALE_MAX,
    DownsampledAttention,
    DownSampler,
    RepFFN,
    apply_rope,
    from_groups,
    rope2d_angles,
    to_groups,
)
from udit.models.weights import CheckpointError, load_checkpoint

# Tiny overrides: widths 16/32/64 keep head_dim (8/16/32 with 2 heads) divisible by 4 for RoPE2D.
TINY = {
    "hidden_size": 16,
    "num_heads": 2,
    "depths": (1, 1, 1, 1, 1),
    "input_size": 16,
    "num_classes": 10,
}
EXPECTED_NAMES = [
    "DiT-UNet",
    "DiT-UNet (Slim)",
    "DiT-UNet + KV downsampling",
    "U-DiT-T",
    "U-DiT-T + cos",
    "U-DiT-T + cos + RoPE2D",
    "U-DiT-T + cos + RoPE2D + DWconv FFN",
    "U-DiT-T + cos + RoPE2D + DWconv FFN + re-param",
    "U-DiT-T (PS only)",
    "U-DiT-T (DWconv + PS)",
    "U-DiT-T (dense conv)",
    "U-DiT-S vanilla",
    "U-DiT-B vanilla",
    "U-DiT-L vanilla",
    "U-DiT-S",
    "U-DiT-B",
    "U-DiT-L",
]
RELEASED = ("U-DiT-S", "U-DiT-B", "U-DiT-L")


def _inputs(batch: int, size: int, num_classes: int = 10, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, size, size, generator=g, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), generator=g).to(dtype)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return x, t, y


def _randomise(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Random values everywhere, zero-initialised gates and output layers included, so outputs
    are not 0."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def test_registry_names_sources_and_tolerances():
    assert list(UNET_MODELS) == EXPECTED_NAMES
    for name, spec in UNET_MODELS.items():
        assert spec.paper_gflops and spec.source and spec.note, name
        released = name.startswith(RELEASED)
        assert spec.extra["gflops_tolerance"] == (0.01 if released else 0.03), name
    assert UNET_MODELS["U-DiT-T (dense conv)"].paper_gflops == 2.22
    assert [UNET_MODELS[n].paper_gflops for n in RELEASED] == [6.04, 22.22, 85.00]
    assert [UNET_MODELS[f"{n} vanilla"].paper_gflops for n in RELEASED] == [5.91, 21.96, 84.48]


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_tiny_forward_backward_shapes(name):
    overrides = dict(TINY, hidden_size=12) if name == "DiT-UNet (Slim)" else TINY
    model = UNET_MODELS[name].build(**overrides)
    x, t, y = _inputs(2, 16)
    out = model(x, t, y)
    assert out.shape == (2, 8, 16, 16) and torch.isfinite(out).all()
    _randomise(model)
    model(x, t, y).square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_input_size_64_and_clear_errors():
    model = UNET_MODELS["U-DiT-S"].build(**dict(TINY, input_size=64)).eval()
    x, t, y = _inputs(1, 64)
    assert model(x, t, y).shape == (1, 8, 64, 64)
    with pytest.raises(ValueError, match="input_size=32"):
        model(*_inputs(1, 32))
    with pytest.raises(ValueError, match="divisible by 8"):
        UShapedDiT(**dict(TINY, input_size=20))
    for bad, match in [
        ({"attention": "windows"}, "unknown attention"),
        ({"ffn": "moe"}, "unknown ffn"),
        ({"downsampler": "maxpool"}, "unknown downsampler"),
        ({"num_heads": 3}, "divisible by num_heads"),
        ({"num_heads": 8}, "head_dim divisible by 4"),
    ]:
        with pytest.raises(ValueError, match=match):
            UShapedDiT(**{**TINY, **bad})


def test_real_toy_and_udit_s_forward_at_batch_1():
    for name in ("U-DiT-T + cos + RoPE2D + DWconv FFN + re-param", "U-DiT-S"):
        model = UNET_MODELS[name].build().eval()
        with torch.no_grad():
            out = model(*_inputs(1, 32, num_classes=1000))
        assert out.shape == (1, 8, 32, 32)
        assert (
            out.abs().max() == 0
        )  # adaLN-Zero and the zeroed output conv: an untrained model predicts 0


@pytest.mark.parametrize("name", RELEASED)
def test_param_counts_match_paper(name):
    spec = UNET_MODELS[name]
    with torch.device("meta"):  # shapes only: counts without allocating 0.9 G parameters
        model = spec.build()
    assert model.num_params(deployed=True) / 1e6 == pytest.approx(
        spec.extra["paper_params_m"], abs=0.01
    )  # T8
    assert model.num_params() / 1e6 == pytest.approx(spec.extra["train_graph_params_m"], abs=0.01)


def test_reparam_eval_equals_train_and_round_trip_is_exact():
    model = _randomise(UShapedDiT(**TINY, class_dropout_prob=0.0)).double()
    x, t, y = _inputs(2, 16, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_out = model.train()(x, t, y)
    eval_out = model.eval()(x, t, y)
    # float64: measured 8e-15 on outputs of magnitude ~6, i.e. a few ulp
    assert (train_out - eval_out).abs().max() < 5e-14
    assert train_out.abs().max() > 1e-3  # not a trivial all-zero comparison
    again = model.train()(x, t, y)
    assert all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )  # the fold never writes params
    assert torch.equal(again, train_out)
    for _ in range(
        3
    ):  # repeated eval() calls do not drift either (the official in-place fold does)
        model.eval()
    assert torch.equal(model(x, t, y), eval_out)


def test_reparam_refolds_after_a_parameter_changes_in_eval_mode():
    model = _randomise(UShapedDiT(**TINY, class_dropout_prob=0.0)).double().eval()
    x, t, y = _inputs(1, 16, dtype=torch.float64)
    stale = model(x, t, y)
    with torch.no_grad():
        model.decoder_level_1[0].mlp1.dwconv[1].weight.add_(
            0.5
        )  # like an optimizer step or load_state_dict
    fresh = model(x, t, y)
    assert not torch.allclose(fresh, stale)
    assert (fresh - model.train()(x, t, y)).abs().max() < 5e-14  # float64, measured 8e-15


def test_rep_ffn_deployed_graph_is_the_dwconv_ffn():
    ffn = _randomise(RepFFN(6, 12)).double()
    w = ffn.fused_weights()
    assert (
        w["w_in"].shape == (12, 6, 1, 1)
        and w["w_dw"].shape == (12, 1, 5, 5)
        and w["w_out"].shape == (6, 12, 1, 1)
    )
    assert ffn.deployed_num_params() == 6 * 12 + 12 + 12 * 25 + 12 + 12 * 6 + 6


def _official_keys(c: int, heads_sublayers: int, depths: tuple) -> dict[str, tuple]:
    """Key -> shape of official udit_models.py U_DiT (ffn 'rep', attn 'v2', rope2d,
    dwconv5 + shortcut), written out from the official module tree: two sub-layers per block,
    dec1 at 2C."""
    keys = {"x_embedder.proj.weight": (c, 4, 3, 3), "x_embedder.proj.bias": (c,)}
    for i, w in enumerate((c, 2 * c, 4 * c), start=1):
        keys.update(
            {
                f"t_embedder_{i}.mlp.0.weight": (w, 256),
                f"t_embedder_{i}.mlp.0.bias": (w,),
                f"t_embedder_{i}.mlp.2.weight": (w, w),
                f"t_embedder_{i}.mlp.2.bias": (w,),
                f"y_embedder_{i}.embedding_table.weight": (11, w),
            }
        )
    levels = [
        ("encoder_level_1", c),
        ("encoder_level_2", 2 * c),
        ("latent", 4 * c),
        ("decoder_level_2", 2 * c),
        ("decoder_level_1", 2 * c),
    ]
    for (level, w), depth in zip(levels, depths):
        h = 2 * w  # mlp_ratio 2
        for b in range(depth):
            for j in range(1, heads_sublayers + 1):
                p = f"{level}.{b}."
                keys.update(
                    {
                        f"{p}attn{j}.to_qkv.weight": (3 * w, w),
                        f"{p}attn{j}.to_qkv.bias": (3 * w,),
                        f"{p}attn{j}.to_out.weight": (w, w, 1, 1),
                        f"{p}attn{j}.to_out.bias": (w,),
                        f"{p}attn{j}.logit_scale": (2, 1, 1),
                        f"{p}attn{j}.downsampler.layer.weight": (w, 1, 5, 5),
                        f"{p}attn{j}.downsampler.layer.bias": (w,),
                        f"{p}mlp{j}.project_in.0.weight": (h // 2, w, 1, 1),
                        f"{p}mlp{j}.project_in.0.bias": (h // 2,),
                        f"{p}mlp{j}.project_in.1.weight": (h, h // 2, 1, 1),
                        f"{p}mlp{j}.project_in.1.bias": (h,),
                        f"{p}mlp{j}.project_out.0.weight": (h // 2, h, 1, 1),
                        f"{p}mlp{j}.project_out.0.bias": (h // 2,),
                        f"{p}mlp{j}.project_out.1.weight": (w, h // 2, 1, 1),
                        f"{p}mlp{j}.project_out.1.bias": (w,),
                        f"{p}adaLN_modulation{j}.1.weight": (6 * w, w),
                        f"{p}adaLN_modulation{j}.1.bias": (6 * w,),
                    }
                )
                for k, size in enumerate((5, 3, 1)):
                    keys[f"{p}mlp{j}.dwconv.{k}.weight"] = (h, 1, size, size)
                    keys[f"{p}mlp{j}.dwconv.{k}.bias"] = (h,)
    keys.update(
        {
            "down1_2.body.0.weight": (c // 2, c, 3, 3),
            "down2_3.body.0.weight": (c, 2 * c, 3, 3),
            "up3_2.body.0.weight": (8 * c, 4 * c, 3, 3),
            "reduce_chan_level2.weight": (2 * c, 4 * c, 1, 1),
            "reduce_chan_level2.bias": (2 * c,),
            "up2_1.body.0.weight": (4 * c, 2 * c, 3, 3),
            "reduce_chan_level1.weight": (2 * c, 2 * c, 1, 1),
            "reduce_chan_level1.bias": (2 * c,),
            "output.weight": (2 * c, 2 * c, 3, 3),
            "output.bias": (2 * c,),
            "final_layer.out_proj.weight": (8, 2 * c, 3, 3),
            "final_layer.out_proj.bias": (8,),
            "final_layer.adaLN_modulation.1.weight": (4 * c, 2 * c),
            "final_layer.adaLN_modulation.1.bias": (4 * c,),
        }
    )
    return keys


def test_official_key_layout_loads_strictly(tmp_path):
    depths = (1, 2, 1, 2, 1)
    model = UNET_MODELS["U-DiT-S"].build(**dict(TINY, depths=depths))
    expected = _official_keys(16, 2, depths)
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # A training checkpoint as official train.py writes it: {"model", "ema", "opt", "args"}.
    path = tmp_path / "0400000.pt"
    ema = {k: torch.randn(v) for k, v in expected.items()}
    torch.save(
        {"model": state, "ema": ema, "opt": {}, "args": argparse.Namespace(model="U-DiT-S")}, path
    )
    load_checkpoint(model, path)
    assert torch.equal(model.latent[0].attn2.logit_scale, ema["latent.0.attn2.logit_scale"])
    renamed = {k.replace("attn1.", "attention1."): v for k, v in ema.items()}
    with pytest.raises(CheckpointError, match="attention1"):
        load_checkpoint(model, renamed)


def test_token_groups_keep_every_token():
    x = torch.randn(2, 3, 8, 6)
    groups = to_groups(x, 2)  # (2, 4, 12, 3)
    assert groups.shape == (2, 4, 12, 3)
    assert torch.equal(
        groups[:, 1].transpose(1, 2).reshape(2, 3, 4, 3), x[:, :, 0::2, 1::2]
    )  # group (0, 1)
    assert torch.equal(from_groups(groups, 2, 8, 6), x)


def test_token_downsampled_attention_is_full_attention_per_subgrid():
    """'tokens' with the pixel-shuffle-only downsampler = full attention on each strided
    2x2 subgrid."""
    kw = {
        "num_heads": 2,
        "downsampler": "ps",
        "downsampler_kernel": 5,
        "cosine": True,
        "rope": True,
    }
    down = _randomise(DownsampledAttention(8, attention="tokens", **kw)).double()
    full = DownsampledAttention(8, attention="full", **kw).double()
    full.load_state_dict(down.state_dict())
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    out = down(x)
    # to_out is a 1x1 conv, so it commutes with the subgrid split
    for i in range(2):
        for j in range(2):
            assert torch.allclose(out[:, :, i::2, j::2], full(x[:, :, i::2, j::2]), atol=1e-12)


def test_rope2d_layout_and_relative_positions():
    angles = rope2d_angles(head_dim=8, height=3, width=5)  # (15, 4): pairs x0, y0, x1, y1
    pos = 7  # row 1, column 2
    f = 10000.0 ** (-torch.arange(0, 8, 4, dtype=torch.float64) / 8)
    assert torch.allclose(angles[pos], torch.stack([2 * f, 1 * f], dim=-1).flatten())
    q, k = torch.randn(2, 8, dtype=torch.float64)
    rot = lambda v, p: apply_rope(v[None], angles[p : p + 1].cos(), angles[p : p + 1].sin())[0]
    # same offset (+1 row, +1 column) from two different origins -> same score
    assert torch.allclose(rot(q, 0) @ rot(k, 6), rot(q, 7) @ rot(k, 13))
    assert torch.allclose(rot(q, 3).norm(), q.norm())


def test_guidance_guides_first_three_channels():
    model = _randomise(UShapedDiT(**TINY)).double().eval()  # float64: batch 2 vs 1 is exact
    x, t, _ = _inputs(1, 16, dtype=torch.float64)
    y = torch.tensor([3])
    out = ClassifierFreeGuidance(model, cfg_scale=4.0)(x, t, y)  # null label = model.num_classes
    cond, uncond = model(x, t, y)[0], model(x, t, torch.tensor([model.num_classes]))[0]
    assert torch.allclose(out[0, :3], uncond[:3] + 4.0 * (cond[:3] - uncond[:3]), atol=1e-12)
    assert torch.allclose(out[0, 3:], cond[3:], atol=1e-12)
    assert not torch.allclose(out[0, :3], cond[:3], atol=1e-3)  # guidance changed something


# Every attention layout x cosine x RoPE2D (RoPE2D is undefined for 'kv': its q and k grids differ).
ATTENTION_VARIANTS = [
    (a, cos, rope)
    for a in ("full", "kv", "tokens")
    for cos in (False, True)
    for rope in (False, True)
    if not (rope and a == "kv")
]


def _attention_pair(
    attention: str, cosine: bool, rope: bool
) -> tuple[DownsampledAttention, DownsampledAttention]:
    """(fused, explicit) attention with identical random float64 weights; 16 channels, 2 heads
    (head_dim 8)."""
    kw = {
        "num_heads": 2,
        "attention": attention,
        "downsampler": "dwconv_shortcut",
        "downsampler_kernel": 5,
        "cosine": cosine,
        "rope": rope,
    }
    fused = _randomise(DownsampledAttention(16, fused=True, **kw), scale=0.5).double()
    if cosine:  # one head below the clamp, one above it (log 100), so the clamp is exercised
        with torch.no_grad():
            fused.logit_scale.copy_(torch.tensor([2.0, LOGIT_SCALE_MAX + 0.5])[:, None, None])
    explicit = DownsampledAttention(16, fused=False, **kw).double()
    explicit.load_state_dict(fused.state_dict())  # strict: the switch adds or renames no keys
    return fused, explicit


@pytest.mark.parametrize("attention,cosine,rope", ATTENTION_VARIANTS)
def test_fused_attention_equals_explicit_outputs_and_gradients(attention, cosine, rope):
    fused, explicit = _attention_pair(attention, cosine, rope)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grad_out = torch.randn(
        2, 16, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    results = []
    for module in (fused, explicit):
        inp = x.clone().requires_grad_(True)
        out = module(inp)
        out.backward(grad_out)
        results.append((out, inp.grad, {k: p.grad for k, p in module.named_parameters()}))
    (out_f, gx_f, gp_f), (out_e, gx_e, gp_e) = results
    assert out_f.abs().max() > 1e-2  # a real comparison, not of zeros
    assert (out_f - out_e).abs().max() < 1e-10
    assert (gx_f - gx_e).abs().max() < 1e-10
    assert gp_f.keys() == gp_e.keys()
    for name in gp_f:
        assert (gp_f[name] - gp_e[name]).abs().max() < 1e-10, name
    if cosine:  # the clamped head gets no temperature gradient, the other does, on both paths
        assert gp_f["logit_scale"][1].abs().max() == 0 and gp_f["logit_scale"][0].abs().max() > 0


def test_fused_attention_switch_whole_model_and_keys():
    model = _randomise(UShapedDiT(**TINY, class_dropout_prob=0.0)).double()
    explicit = UShapedDiT(**TINY, class_dropout_prob=0.0, fused_attention=False).double()
    explicit.load_state_dict(
        model.state_dict()
    )  # same keys either way: official checkpoints still load
    x, t, y = _inputs(2, 16, dtype=torch.float64)
    fused_out = model(x, t, y)
    assert (fused_out - explicit(x, t, y)).abs().max() < 1e-10
    model.set_fused_attention(False)
    assert all(not m.fused for m in model.modules() if isinstance(m, DownsampledAttention))
    assert (model(x, t, y) - fused_out).abs().max() < 1e-10


# U-DiT-S: two fvcore traces, ~17 s on 2 shared CPU cores
@pytest.mark.parametrize("name", ["U-DiT-T", pytest.param("U-DiT-S", marks=pytest.mark.slow)])
def test_fvcore_count_independent_of_attention_kernel(name):
    model, _ = build_for_counting(name, input_size=32)
    assert all(
        m.fused for m in model.modules() if isinstance(m, DownsampledAttention)
    )  # default: SDPA
    fused, uncounted = count_flops(model, input_size=32)
    assert uncounted == {}
    model.set_fused_attention(False)
    explicit, _ = count_flops(model, input_size=32)
    assert fused == explicit
    assert fused / 1e9 == pytest.approx(
        UNET_MODELS[name].paper_gflops, rel=UNET_MODELS[name].extra["gflops_tolerance"]
    )


def _changes(before: str, after: str) -> dict:
    """{switch: (before, after)} of the config switches two registry models differ in."""
    a, b = (UNET_MODELS[n].extra["config"] for n in (before, after))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


# (rung, the rung it adds to, what it changes): the paper's ladders, one change per rung
LADDERS = [
    ("DiT-UNet (Slim)", "DiT-UNet", {"hidden_size": (40, 30)}),  # T9: narrower, same layout
    ("DiT-UNet + KV downsampling", "DiT-UNet",
     {"attention": ("full", "kv"), "downsampler": (None, "dwconv_shortcut")}),  # T1
    ("U-DiT-T", "DiT-UNet + KV downsampling", {"attention": ("kv", "tokens")}),  # T1
    ("U-DiT-T + cos", "U-DiT-T", {"cosine": (False, True)}),  # T9
    ("U-DiT-T + cos + RoPE2D", "U-DiT-T + cos", {"rope": (False, True)}),
    ("U-DiT-T + cos + RoPE2D + DWconv FFN", "U-DiT-T + cos + RoPE2D", {"ffn": ("mlp", "dwconv")}),
    ("U-DiT-T + cos + RoPE2D + DWconv FFN + re-param", "U-DiT-T + cos + RoPE2D + DWconv FFN",
     {"ffn": ("dwconv", "rep")}),
    ("U-DiT-T (PS only)", "U-DiT-T", {"downsampler": ("dwconv_shortcut", "ps")}),  # T7
    ("U-DiT-T (DWconv + PS)", "U-DiT-T", {"downsampler": ("dwconv_shortcut", "dwconv")}),
    ("U-DiT-T (dense conv)", "U-DiT-T", {"downsampler": ("dwconv_shortcut", "dense")}),
    *[(f"U-DiT-{s}", f"U-DiT-{s} vanilla",  # T10: all modifications on the vanilla U-DiT
       {"cosine": (False, True), "rope": (False, True), "ffn": ("mlp", "rep")}) for s in "SBL"],
]  # fmt: skip


@pytest.mark.parametrize("rung, base, change", LADDERS, ids=[r[0] for r in LADDERS])
def test_each_ablation_rung_changes_only_what_its_row_names(rung, base, change):
    """An ablation row measures one change: its model is the row above it with exactly the
    switches the paper names changed (a rung that also changed something else, or lost its
    change, would make the table compare the wrong models)."""
    assert _changes(base, rung) == change


def test_wrong_input_shapes_are_refused_naming_the_expected_one():
    """Each way an input can be wrong alone (channels, size, rank) is refused with the shape
    the model was built for and the input_size that would fit."""
    model = UShapedDiT(**TINY).eval()
    _, t, y = _inputs(2, 32)
    side = TINY["input_size"]
    for shape, hint in [
        ((2, 3, side, side), f"input_size={side}"),  # channels only
        ((2, 4, 2 * side, 2 * side), f"input_size={2 * side}"),  # size only
        ((2, 4, side, side, 1), "input_size=1"),  # rank only
    ]:
        with pytest.raises(ValueError) as err:
            model(torch.zeros(shape), t, y)
        assert str(err.value) == (
            f"expected x of shape (N, 4, {side}, {side}), got {shape}; "
            f"build the model with {hint} for that size"
        )


def test_shared_label_drop_gives_every_width_the_models_one_coin():
    """shared_label_drop: in a training forward without the trainer's control, the model draws
    one coin per sample and every width's embedder drops by that same mask."""
    model = UShapedDiT(**{**TINY, "shared_label_drop": True}).train()
    seen = []
    for i in (1, 2, 3):
        getattr(model, f"y_embedder_{i}").register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(args[1] if len(args) >= 2 else None),
            with_kwargs=True,
        )
    torch.manual_seed(0)
    model(*_inputs(64, TINY["input_size"]))
    assert len(seen) == 3 and seen[0] is not None and 0 < int(seen[0].sum()) < 64
    assert all(torch.equal(s, seen[0]) for s in seen)


@pytest.mark.parametrize("kind", ["dwconv_shortcut", "dwconv", "dense", "ps"])
def test_downsampler_kinds_add_the_shortcut_only_where_named(kind):
    """T7's rows: the shortcut (x + conv(x)) belongs to the paper's dwconv_shortcut and to the
    dense-conv caption variant; 'dwconv' is the conv alone, 'ps' no conv at all."""
    torch.manual_seed(0)
    down = DownSampler(8, kind=kind, kernel=5)
    x = torch.randn(2, 8, 6, 6)
    if kind == "ps":
        assert down.layer is None and torch.equal(down(x), x)
        return
    conv = down.layer(x)
    want = conv + x if kind in ("dwconv_shortcut", "dense") else conv
    torch.testing.assert_close(down(x), want, rtol=0, atol=0)
    assert down.layer.groups == (1 if kind == "dense" else 8)


def _std_within(w: torch.Tensor, want: float, kurtosis: float) -> bool:
    """Sample std of `w` within 6 standard errors of `want`: the standard error of a sample
    std is want x sqrt((kurtosis - 1) / 4n) (3 for a normal, 1.8 for a uniform)."""
    n = w.numel()
    return abs(w.std().item() / want - 1) < 6 * math.sqrt((kurtosis - 1) / (4 * n))


def test_initialisation_is_dits_from_outside():
    """Drawn weights checked by their distribution, not by the code that draws them: Xavier-
    uniform for every linear and conv weight (the stem as a linear layer over its flattened
    kernel), zero biases, N(0, 0.02) label tables and timestep MLPs, adaLN-Zero and a zero
    output layer."""
    torch.manual_seed(0)
    model = UShapedDiT(**{**TINY, "hidden_size": 64, "num_heads": 4, "num_classes": 1000})
    checked = set()
    for level in (1, 2, 3):
        table = getattr(model, f"y_embedder_{level}").embedding_table.weight
        mlp = getattr(model, f"t_embedder_{level}").mlp
        for w in (table, mlp[0].weight, mlp[2].weight):
            assert abs(w.mean().item()) < 6 * 0.02 / math.sqrt(w.numel())
            assert _std_within(w, 0.02, kurtosis=3.0), w.shape
            checked.add(id(w))
    zero = [model.final_layer.adaLN_modulation[-1], model.final_layer.out_proj]
    for blk in model.blocks():
        zero += [getattr(blk, f"adaLN_modulation{i}")[-1] for i in range(1, blk.sublayers + 1)]
    for layer in zero:
        assert not layer.weight.any() and not layer.bias.any()
        checked.add(id(layer.weight))
    stem = model.x_embedder.proj.weight  # (C, in, k, k): fans C and in x k x k
    assert _xavier(stem, fan_out=stem.shape[0], fan_in=stem[0].numel())
    checked.add(id(stem))
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    for m in layers:
        assert m.bias is None or not m.bias.any()
        if id(m.weight) in checked:
            continue
        receptive = m.weight[0, 0].numel()  # k x k for a conv, 1 for a linear layer
        fan_in, fan_out = m.weight.shape[1] * receptive, m.weight.shape[0] * receptive
        assert _xavier(m.weight, fan_in=fan_in, fan_out=fan_out), m
        checked.add(id(m.weight))
    assert len(layers) > 40 and len(checked) > len(layers)


def _xavier(w: torch.Tensor, *, fan_in: int, fan_out: int) -> bool:
    bound = math.sqrt(6 / (fan_in + fan_out))
    inside = w.abs().max().item() <= bound
    if w.numel() < 256:  # too few draws for a spread; the bound still holds
        return inside
    return inside and _std_within(w, bound / math.sqrt(3), kurtosis=1.8)
