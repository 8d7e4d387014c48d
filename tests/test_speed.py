"""Precision switches, the multi-tensor EMA, the fused re-param kernel and benchmarks/speed.py's
JSON (the contract `udit plan --speed-json` and the report read). No timing is asserted."""

import copy
import json
import math
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from udit.diffusion import create_diffusion
from udit.models import create_model
from udit.precision import set_precision
from udit.training.ema import make_ema, update_ema
from udit.training.loop import train_step

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MODELS = {"DiT-XL/2", "U-DiT-B vanilla", "U-DiT-L vanilla", "U-DiT-B", "U-DiT-L"}
# bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per op): a step's mean loss agrees
# with fp32 to 1% relative (measured on CPU autocast: 1.0e-4 DiT-S/2, 1.3e-3 U-DiT-S, tiny widths).
BF16_LOSS_RTOL = 1e-2


def _tiny(name: str, seed: int = 0) -> torch.nn.Module:
    kw = (
        {"hidden_size": 16, "num_heads": 2}
        if name.startswith("U-DiT")
        else {"hidden_size": 32, "depth": 2, "num_heads": 2}
    )
    torch.manual_seed(seed)
    model = create_model(name, input_size=8, in_channels=4, num_classes=10, **kw)
    with torch.no_grad():  # adaLN-Zero makes a fresh model's output exactly 0 at any precision
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def _step_loss(model, autocast) -> float:
    gen = torch.Generator().manual_seed(1)
    x, noise = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 10, 500, 999])
    y = torch.tensor([0, 3, 7, 9])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0, foreach=True)
    torch.manual_seed(2)  # the same label-dropout coins for every precision
    terms, _ = train_step(
        net=model,
        opt=opt,
        diffusion=create_diffusion(timestep_respacing=""),
        x=x,
        y=y,
        t=t,
        noise=noise,
        autocast=autocast,
    )
    return terms["loss"].mean().item()


@pytest.mark.parametrize("name", ["DiT-S/2", "U-DiT-S"])
def test_bf16_step_loss_agrees_with_fp32(name, one_thread):
    model = _tiny(name)
    fp32 = _step_loss(copy.deepcopy(model), set_precision("fp32", torch.device("cpu")))
    autocast = set_precision("bf16", torch.device("cpu"))
    assert isinstance(autocast, torch.autocast)
    bf16 = _step_loss(copy.deepcopy(model), autocast)
    tf32 = _step_loss(copy.deepcopy(model), set_precision("tf32", torch.device("cpu")))
    assert tf32 == fp32  # on CPU TF32 is not a mode: the same numbers
    assert bf16 != fp32  # bf16 really ran (else the comparison below proves nothing)
    assert abs(bf16 - fp32) <= BF16_LOSS_RTOL * abs(fp32), (bf16, fp32)


def test_precision_sets_the_cuda_tf32_switches():
    """The flags are process-wide and settable without a GPU; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for precision, want in (("tf32", True), ("fp32", False), ("bf16", True)):
            set_precision(precision, torch.device("cuda"))
            assert torch.backends.cuda.matmul.allow_tf32 is want, precision
            assert torch.backends.cudnn.allow_tf32 is want, precision
        set_precision("fp32", torch.device("cpu"))  # CPU: the CUDA switches are left alone
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert isinstance(set_precision("tf32", torch.device("cpu")), nullcontext)


def test_multi_tensor_ema_equals_the_per_parameter_loop_bit_for_bit():
    model = _tiny("U-DiT-S")
    ema, loop = make_ema(model), make_ema(model)
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            for b in model.buffers():
                b.add_(1)
        update_ema(ema, model, 0.9999)
        with torch.no_grad():  # official train.py update_ema
            loop_params = dict(loop.named_parameters())
            for name, p in model.named_parameters():
                loop_params[name].mul_(0.9999).add_(p.data, alpha=1 - 0.9999)
            for (_, lb), (_, b) in zip(loop.named_buffers(), model.named_buffers()):
                lb.copy_(b)
    for (name, a), b in zip(ema.state_dict().items(), loop.state_dict().values()):
        assert torch.equal(a, b), name


def test_fused_rep_branches_equal_the_separate_convolutions():
    """Training forward: identity + dw5 + dw3 + dw1 as one kernel = the four passes, output and
    gradients (float64, so only rounding order differs)."""
    from udit.models.unet_blocks import RepFFN

    torch.manual_seed(0)
    ffn = RepFFN(8, 16).double().train()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)

    def separate(m, x):
        h = torch.nn.functional.gelu(m.project_in(x))
        return m.project_out(h + sum(conv(h) for conv in m.dwconv))

    twin = copy.deepcopy(ffn)
    out, want = ffn(x), separate(twin, x)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    want.square().sum().backward()
    for (name, p), q in zip(ffn.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_image_grid_matches_torchvision_make_grid():
    from torchvision.utils import make_grid

    from udit.sampling.shards import image_grid

    for n in (1, 5, 10):
        images = np.random.default_rng(n).integers(0, 256, (n, 4, 6, 3), dtype=np.uint8)
        grid = make_grid(
            torch.from_numpy(images).permute(0, 3, 1, 2), nrow=math.ceil(math.sqrt(n)), padding=0
        )
        np.testing.assert_array_equal(image_grid(images), grid.permute(1, 2, 0).numpy())


@pytest.mark.slow
def test_speed_quick_writes_the_json_contract(tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/speed.py", "--device", "cpu", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "load_avg_1m" in result.stdout and "x ref" in result.stdout  # the one table
    data = json.loads(out.read_text())
    for key in ("schema", "quick", "device", "device_name", "gpus", "torch", "created"):
        assert key in data, key
    assert data["schema"] == 1 and data["quick"] is True and data["device"] == "cpu"
    assert data["gpus"] == 0

    def positive(v):
        return isinstance(v, (int, float)) and math.isfinite(v) and v > 0

    rows = data["train"]
    assert {r["model"] for r in rows} >= TRAIN_MODELS
    assert {r["path"] for r in rows} >= {"reference", "harness-tf32"}
    for r in rows:
        for key in ("images_per_s", "steps_per_s_8x256", "gmacs_per_image", "batch_per_gpu"):
            assert positive(r[key]), (r["model"], r["path"], key, r[key])
        assert r["precision"] in ("tf32", "bf16", "fp32") and r["input_size"] >= 1
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # CPU: no peak, no GPU memory
        assert math.isclose(r["steps_per_s_8x256"], r["images_per_s"] * 8 / 256)
    (sample,) = data["sample"]
    assert sample["model"] == "U-DiT-L" and sample["steps"] == 250 and sample["cfg"] == 1.5
    for key in ("images_per_s", "gpu_hours_50k", "batch"):
        assert positive(sample[key]), key
    assert positive(data["vae_decode"]["images_per_s"])
    assert positive(data["inception"]["images_per_s"])
    assert positive(data["ema"]["ms_per_update"])


def test_bf16_sampling_forward_runs_in_bf16_and_returns_fp32(one_thread):
    from udit.sampling.sampler import AutocastForward

    model = _tiny("U-DiT-S").eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        want = model(x, t, y=y)
        got = AutocastForward(model, set_precision("bf16", torch.device("cpu")))(x, t, y=y)
    assert got.dtype == torch.float32 and not torch.equal(got, want)  # bf16 really ran
    torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * want.abs().max().item())


@pytest.mark.parametrize("option", ["--batch=0", "--pairs=0", "--warmup=-1", "--repeats=0"])
def test_speed_refuses_non_positive_sizes_before_any_work(option):
    result = subprocess.run(
        [sys.executable, "benchmarks/speed.py", "--device", "cpu", "--quick", option],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    flag, value = option.split("=")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"argument {flag}: must be" in result.stderr and f"got {value}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_speed_dry_run_prints_the_resolved_options_and_measures_nothing(tmp_path):
    out = tmp_path / "speed.json"
    command = [sys.executable, "benchmarks/speed.py", "--device", "cpu", "--quick", "--dry-run"]
    result = subprocess.run(
        [*command, "--models", "DiT-S/2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    options = json.loads(result.stdout)  # the whole stdout is the JSON: no table, no rows
    assert options["models"] == ["DiT-S/2"] and options["json"] == str(out)
    # resolved as a measurement would use them (--quick sizes), without the flag itself
    assert (options["batch"], options["input_size"], options["pairs"]) == (4, 8, 1)
    assert options["paths"] == ["reference", "harness-tf32"] and "dry_run" not in options
    assert "s so far" not in result.stderr and not out.exists()  # nothing timed or written
    refused = subprocess.run(  # still validated: a bad value exits 2 before the dry run
        [*command, "--batch=0"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 2 and "argument --batch: must be" in refused.stderr
    assert refused.stdout == ""
