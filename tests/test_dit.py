"""DiT baselines: shapes, the official state-dict layout, initialisation, guidance."""

import math

import pytest
import torch

from udit.diffusion import ClassifierFreeGuidance
from udit.models.dit import DIT_CONFIGS, DIT_MODELS, sincos_pos_embed_2d
from udit.paper import paper_numbers

# Parameter counts of the official models at latent 32 (DiT paper / official models.py).
OFFICIAL_PARAMS_M = {"DiT-S/2": 32.96, "DiT-B/2": 130.51, "DiT-L/2": 458.10, "DiT-XL/2": 675.13}


def official_keys(depth: int) -> list[str]:
    """Key order of facebookresearch/DiT models.py (timm PatchEmbed/Attention/Mlp inside)."""
    keys = [
        "pos_embed",
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
    ]
    for i in range(depth):
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            keys += [f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"]
    for layer in ("linear", "adaLN_modulation.1"):
        keys += [f"final_layer.{layer}.weight", f"final_layer.{layer}.bias"]
    return keys


def test_registry_names_and_paper_gflops():
    assert list(DIT_MODELS) == [
        "DiT-S/8",
        "DiT-S/4",
        "DiT-S/2",
        "DiT-B/8",
        "DiT-B/4",
        "DiT-B/2",
        "DiT-L/4",
        "DiT-L/2",
        "DiT-XL/4",
        "DiT-XL/2",
    ]
    table = paper_numbers()["dit_gflops"]
    for name, spec in DIT_MODELS.items():
        assert spec.paper_gflops == table[name] and spec.paper_gflops > 0
    assert DIT_MODELS["DiT-XL/2"].paper_gflops == 118.64


@pytest.mark.parametrize("name", list(DIT_MODELS))
def test_every_config_shapes_and_learned_sigma(name):
    # Full width/heads/patch of the config, depth 1 and latent 16 keep it fast.
    _, hidden, heads, patch = DIT_CONFIGS[name]
    model = DIT_MODELS[name].build(depth=1, input_size=16, num_classes=10).eval()
    assert (model.patch_size, model.blocks[0].attn.num_heads) == (patch, heads)
    assert model.pos_embed.shape == (1, (16 // patch) ** 2, hidden)
    x = torch.randn(2, 4, 16, 16)
    out = model(x, torch.tensor([3.0, 999.0]), torch.tensor([1, 10]))  # 10 = null class
    assert out.shape == (2, 8, 16, 16)  # eps (4) + learned sigma (4)


def test_full_size_param_counts_match_official():
    # Meta device: shapes only, no memory or init time.
    for name, expected in OFFICIAL_PARAMS_M.items():
        with torch.device("meta"):
            model = DIT_MODELS[name].build()
        assert len(model.blocks) == DIT_CONFIGS[name][0]
        assert model.num_params(deployed=True) / 1e6 == pytest.approx(expected, abs=0.005)


def test_no_learned_sigma_halves_output_channels(tiny_dit):
    model = tiny_dit(learn_sigma=False)
    assert (model.learn_sigma, model.out_channels, tiny_dit().learn_sigma) == (False, 4, True)
    assert model(
        torch.randn(1, 4, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long)
    ).shape == (1, 4, 8, 8)


def test_state_dict_layout_is_official(tiny_dit):
    model = tiny_dit(depth=2)
    assert list(model.state_dict()) == official_keys(2)
    assert isinstance(model.pos_embed, torch.nn.Parameter) and not model.pos_embed.requires_grad
    assert model.y_embedder.embedding_table.weight.shape == (11, 32)  # + null class
    assert model.final_layer.linear.weight.shape == (2 * 2 * 8, 32)  # p*p*2C


def test_sincos_pos_embed_layout():
    dim, grid = 16, 4
    emb = sincos_pos_embed_2d(dim, grid)
    assert emb.shape == (grid * grid, dim) and emb.dtype == torch.float32
    quarter = dim // 4
    # Token 0 (row 0, col 0): sin(0) = 0 then cos(0) = 1 in both halves.
    assert torch.equal(emb[0], torch.tensor(([0.0] * quarter + [1.0] * quarter) * 2))
    # Token 1 is (row 0, col 1): the first half encodes the column, the second the row (as DiT/MAE).
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    assert torch.allclose(emb[1, :quarter].double(), torch.sin(omega), atol=1e-6)
    assert torch.equal(emb[1, dim // 2 :], emb[0, dim // 2 :])
    # Token `grid` is (row 1, col 0): first half as token 0, second half moves.
    assert torch.equal(emb[grid, : dim // 2], emb[0, : dim // 2])
    assert torch.allclose(
        emb[grid, dim // 2 : dim // 2 + quarter].double(), torch.sin(omega), atol=1e-6
    )
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(18, 4)


def test_initialisation_is_adaln_zero(tiny_dit):
    model = tiny_dit()
    for block in model.blocks:
        assert (
            not block.adaLN_modulation[-1].weight.any()
            and not block.adaLN_modulation[-1].bias.any()
        )
    assert not model.final_layer.linear.weight.any()
    assert torch.equal(model.pos_embed[0], sincos_pos_embed_2d(32, 4))
    std = model.y_embedder.embedding_table.weight.std().item()
    assert 0.015 < std < 0.025  # normal(0, 0.02)
    qkv = model.blocks[0].attn.qkv.weight
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))  # xavier-uniform
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    assert not out.any()  # adaLN-Zero + zero final layer: the untrained model predicts 0


def test_sdpa_and_explicit_attention_agree(tiny_dit):
    model = tiny_dit(seed=0, std=0.1).eval()
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0.0, 10.0, 900.0]), torch.tensor([0, 4, 9])
    fused = model(x, t, y)
    for block in model.blocks:
        block.attn.fused = False
    assert torch.allclose(fused, model(x, t, y), atol=1e-5)
    assert fused.abs().mean() > 1e-2  # not the trivial zero output


@pytest.mark.parametrize("channels", [3, "all"])
def test_guidance_matches_separate_passes(channels, tiny_dit):
    model = tiny_dit(seed=0, std=0.1).eval()
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([50.0])
    y = torch.tensor([7])
    scale = 4.0
    out = ClassifierFreeGuidance(model, cfg_scale=scale, guidance_channels=channels)(x, t, y)
    cond = model(x, t, y)
    uncond = model(x, t, torch.tensor([10]))  # the null label = num_classes
    k = 4 if channels == "all" else channels
    guided = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
    assert out.shape == (1, 8, 8, 8)
    assert torch.allclose(out[:, :k], guided, atol=1e-5)
    assert torch.allclose(out[:, k:], cond[:, k:], atol=1e-5)  # unguided channels: conditional
    assert not torch.allclose(cond[:, :k], guided, atol=1e-3)  # guidance changed something


def test_bad_input_is_named(tiny_dit):
    model = tiny_dit()
    with pytest.raises(ValueError, match=r"expected latents \(N, 4, 8, 8\)"):
        model(torch.randn(1, 4, 16, 16), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        tiny_dit(input_size=9)
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        tiny_dit(num_heads=3)


def test_dit_defaults_are_the_official_class_defaults_dit_xl_2():
    """The official DiT class defaults to DiT-XL/2 (32x32x4 latents, 1000 classes): ours too,
    so a DiT built without arguments is the paper's largest baseline, layer for layer."""
    from udit.models.dit import DiT

    with torch.device("meta"):
        default, xl2 = DiT(), DIT_MODELS["DiT-XL/2"].build()
    assert {k: v.shape for k, v in default.state_dict().items()} == {
        k: v.shape for k, v in xl2.state_dict().items()
    }
    assert (default.num_classes, default.input_size, default.blocks[0].attn.num_heads) == (
        1000,
        32,
        16,
    )


@pytest.mark.parametrize("shape", [(2, 15, 32), (2, 16, 31), (2, 17, 32)])
def test_unpatchify_refuses_tokens_of_no_square_grid_or_another_patch(shape):
    from udit.models.patch_model import unpatchify

    assert unpatchify(torch.zeros(2, 16, 32), patch_size=2, channels=8).shape == (2, 8, 8, 8)
    with pytest.raises(ValueError) as err:
        unpatchify(torch.zeros(shape), patch_size=2, channels=8)
    assert str(err.value) == f"expected (N, h*w, 32) tokens of a square grid, got {shape}"


@pytest.mark.parametrize("dim", [256, 8, 7])
def test_timestep_features_are_dits_cos_sin_and_pad_an_odd_dim(dim):
    """DiT's timestep_embedding written out: freqs_i = exp(-ln(10^4) i / half), features
    [cos(t freqs) | sin(t freqs)], and one zero column when dim is odd."""
    from udit.models.embed import timestep_features

    t = torch.tensor([0.0, 1.0, 37.5, 999.0], dtype=torch.float64)
    half = dim // 2
    freqs = torch.tensor([math.exp(-math.log(10_000) * i / half) for i in range(half)]).double()
    want = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    if dim % 2:
        want = torch.cat([want, torch.zeros(4, 1, dtype=torch.float64)], dim=1)
    got = timestep_features(t.float(), dim)
    assert got.shape == (4, dim) and got.dtype == torch.float32
    # float32 arguments up to 999: their rounding moves cos / sin by up to ~6e-5
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-4)


def test_a_label_embedder_without_dropout_draws_no_random_numbers():
    """Without label dropout (and no trainer mask) a training forward takes labels as they are
    and leaves the global RNG where it was: the noise and timesteps drawn next are unchanged."""
    from udit.models.embed import LabelEmbedder

    emb = LabelEmbedder(num_classes=4, hidden=8, dropout=0.0).train()
    assert emb.embedding_table.num_embeddings == 4  # no null class row
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    torch.testing.assert_close(emb(y), emb.embedding_table.weight[y])
    assert torch.equal(torch.get_rng_state(), before)
