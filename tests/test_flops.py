"""fvcore FLOPs: the SDPA handle, the paper's GFLOPs per registry model, the `udit flops` CLI."""

import csv
import json
import re

import pytest
import torch.nn.functional as F
from torch import nn

from udit.flops import (
    COLUMNS,
    IMAGENET512_ROWS,
    LATENT_256,
    LATENT_512,
    build_for_counting,
    count_flops,
    main,
    paper_gflops,
    param_count,
    tolerance,
)
from udit.models import MODELS
from udit.models.dit import DiT
from udit.models.unet import CAPTION_GFLOPS

SLOW_GFLOPS = 10.0  # models above this take several seconds each to trace on 2 CPU cores


class AttentionProbe(nn.Module):
    """q, k, v of different lengths and head dims, through SDPA or explicit matmuls; takes
    forward(x, t, y) like the registry models so count_flops can trace it."""

    def __init__(
        self, fused: bool, heads: int = 3, lq: int = 10, lk: int = 7, d_qk: int = 8, d_v: int = 5
    ):
        super().__init__()
        self.fused, self.shape = fused, (heads, lq, lk, d_qk, d_v)

    def forward(self, x, t, y):
        heads, lq, lk, d_qk, d_v = self.shape
        q = x.new_ones(2, heads, lq, d_qk)
        k = x.new_ones(2, heads, lk, d_qk)
        v = x.new_ones(2, heads, lk, d_v)
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v)
        return (q @ k.transpose(-2, -1) * d_qk**-0.5).softmax(-1) @ v


def test_sdpa_handle_matches_explicit_attention_and_formula():
    counts = {}
    for fused in (True, False):
        macs, uncounted = count_flops(AttentionProbe(fused), input_size=2)
        assert uncounted == {}
        counts[fused] = macs
    assert counts[True] == counts[False] == 2 * 3 * 10 * 7 * (8 + 5)  # B*heads*Lq*Lk*(d_qk + d_v)


def test_dit_count_independent_of_attention_kernel():
    model = DiT(
        input_size=16, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10
    ).eval()
    fused, uncounted = count_flops(model, input_size=16)
    assert uncounted == {}  # every op is counted or deliberately ignored (NEGLIGIBLE_OPS)
    for block in model.blocks:
        block.attn.fused = False
    explicit, _ = count_flops(model, input_size=16)
    assert fused == explicit


def _paper_cases():
    cases = []
    for name, spec in MODELS.items():
        if spec.paper_gflops is not None:
            marks = [pytest.mark.slow] if spec.paper_gflops > SLOW_GFLOPS else []
            cases.append(pytest.param(name, LATENT_256, id=f"{spec.slug}-256", marks=marks))
    for name, _ in IMAGENET512_ROWS:
        if name in MODELS:
            cases.append(
                pytest.param(
                    name, LATENT_512, id=f"{MODELS[name].slug}-512", marks=[pytest.mark.slow]
                )
            )
    return cases


@pytest.mark.parametrize("name,input_size", _paper_cases())
def test_gflops_match_paper(name, input_size):
    paper, source = paper_gflops(name, input_size=input_size)
    assert paper is not None and source
    model, _ = build_for_counting(name, input_size=input_size)
    macs, uncounted = count_flops(model, input_size=input_size)
    assert uncounted == {}, f"{name}: ops neither counted nor listed as negligible: {uncounted}"
    rel_err = macs / 1e9 / paper - 1
    assert abs(rel_err) <= tolerance(name), (
        f"{name} @ {input_size}: {macs / 1e9:.4f} vs paper {paper} ({rel_err:+.2%})"
    )


def test_every_dit_has_a_paper_number_and_one_percent_tolerance():
    for name in [n for n in MODELS if n.startswith("DiT-") and "/" in n]:
        assert MODELS[name].paper_gflops is not None and tolerance(name) == 0.01


def test_param_count_is_the_deployed_count():
    model, params = build_for_counting("DiT-S/8", input_size=LATENT_256)
    assert params == param_count(model) == sum(p.numel() for p in model.parameters())
    assert params / 1e6 == pytest.approx(33.15, abs=0.01)  # 32.96 M at p=2 + larger patch head
    assert not model.training


def test_cli_json_and_files(tmp_path, capsys):
    assert main(["--models", "DiT-S/8", "dit-s-4", "--format", "json", "--out", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)  # stdout holds the JSON list and nothing else
    assert [r["model"] for r in rows] == ["DiT-S/8", "DiT-S/4"]
    assert all(list(r) == COLUMNS for r in rows)
    s8 = rows[0]
    assert (s8["slug"], s8["input_size"], s8["paper_gflops"]) == ("dit-s-8", LATENT_256, 0.36)
    assert s8["gflops"] == pytest.approx(
        0.3586, abs=1e-4
    )  # fvcore on the official DiT-S/8 (explicit attention)
    assert s8["rel_err"] == pytest.approx(0.3586 / 0.36 - 1, abs=1e-4)
    assert json.loads((tmp_path / "flops.json").read_text()) == rows
    with open(tmp_path / "flops.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS and table[1]["model"] == "DiT-S/4"
    assert not [
        p for p in tmp_path.iterdir() if p.name.endswith(".tmp")
    ]  # atomic writes left no temp


def test_cli_other_size_has_no_paper_number(tmp_path, capsys):
    assert (
        main(
            ["--models", "DiT-S/8", "--input-size", "16", "--format", "csv", "--out", str(tmp_path)]
        )
        == 0
    )
    row = next(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert row["input_size"] == "16" and row["paper_gflops"] == "" and row["rel_err"] == ""
    assert 0 < float(row["gflops"]) < 0.3586 / 2  # 4x fewer tokens


def test_cli_rejects_unknown_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--models", "DiT-S/3", "--out", str(tmp_path)])
    assert err.value.code == 2
    assert "unknown model 'DiT-S/3'" in capsys.readouterr().err


def test_bad_inputs_to_count_are_rejected():
    with pytest.raises(ValueError, match="expected latents"):
        count_flops(build_for_counting("DiT-S/8", input_size=LATENT_256)[0], input_size=16)


def _gflops_in(table) -> set[float]:
    """Every GFLOPs figure a paper table holds: the first column of its rows (or of each
    milestone's row), or the value itself for a name -> GFLOPs table."""
    found = set()
    for row in table.values():
        rows = row.values() if isinstance(row, dict) else [row]
        found |= {r[0] if isinstance(r, list) else r for r in rows}
    return found


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_source_a_model_names_holds_its_paper_gflops(name):
    """A registry model's `source` is where its paper GFLOPs are printed: 'T<n>' a paper table
    (its rows or its caption's figure), 'dit-paper (<key>)' a table of the DiT paper."""
    from udit.paper import paper_numbers

    spec, numbers = MODELS[name], paper_numbers()
    assert re.fullmatch(r"T\d+|dit-paper \(\w+\)", spec.source), spec.source
    if spec.source.startswith("dit-paper ("):
        key = spec.source.removeprefix("dit-paper (").removesuffix(")")
        assert numbers[key][name] == spec.paper_gflops
        return
    tables = [k for k in numbers if k.endswith(f"_{spec.source}")]
    assert len(tables) == 1, f"{name}: source {spec.source!r} is not a paper table"
    if name in CAPTION_GFLOPS:  # printed in the table's caption, not in a row
        assert (spec.paper_gflops, spec.source) == CAPTION_GFLOPS[name]
    else:
        assert spec.paper_gflops in _gflops_in(numbers[tables[0]]), name


def test_every_model_has_a_distinct_file_safe_slug():
    """`udit flops` and the registry look models up by slug: lower-case words joined by single
    dashes, one per model, each its name's letters and digits in order."""
    from udit.models import MODELS_BY_SLUG
    from udit.models.spec import slugify

    assert len(MODELS_BY_SLUG) == len(MODELS)
    for slug, spec in MODELS_BY_SLUG.items():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug), slug
        assert slug.replace("-", "") == re.sub(r"[^a-z0-9]", "", spec.name.lower()), slug
    assert slugify("U-DiT-T (PS only)") == "u-dit-t-ps-only"
