"""`udit export` / `udit push`: registry models -> diffusers DiTPipeline folders.

Toy-width models with perturbed weights (adaLN-Zero init would make every output zero), written
as `udit train` checkpoints ({"model", "ema", "step", "args"}) beside a tiny random VAE.
"""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

from udit.data.vae import save_tiny_vae
from udit.diffusion import ClassifierFreeGuidance, create_diffusion
from udit.diffusion.noise import seeded_generator
from udit.diffusion.schedule import space_timesteps
from udit.export import push as push_module
from udit.export.cli import PICKLE_SUFFIXES, main
from udit.export.dit_diffusers import exact_timesteps, to_diffusers
from udit.export.hub_model import UDiTTransformer2DModel, from_udit
from udit.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CLASSES, IMAGE, LATENT = 10, 32, 8  # the tiny VAE downsamples 4x: 32 px -> 8x8 latents
# registry name -> toy-width constructor overrides; one per family the export supports
FAMILIES = {
    "DiT-S/4": {"hidden_size": 32, "depth": 2, "num_heads": 4},
    "U-DiT-B": {"hidden_size": 8, "num_heads": 2, "depths": [1, 1, 1, 1, 1]},  # re-param FFN
    "U-DiT-T": {"hidden_size": 8, "num_heads": 2, "depths": [1, 1, 1, 1, 1]},
    "U-ViT-L": {"hidden_size": 16, "depth": 2, "num_heads": 2},
    "PixArt-alpha-XL/2": {"hidden_size": 16, "depth": 1, "num_heads": 2},
    "DiffiT-XL/2": {"hidden_size": 16, "depth": 1, "num_heads": 2},
}
SEED, STEPS, CFG = 3, 4, 4.0


def toy_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The same weights for the same (name, seed): init and perturbation both seeded."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(name, input_size=LATENT, num_classes=CLASSES, **FAMILIES[name])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # DiT's frozen pos_embed stays the sin-cos table
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def write_checkpoint(path: Path, name: str, vae: Path, **extra_args) -> Path:
    args = {
        "model": name,
        "model_kw": FAMILIES[name],
        "num_classes": CLASSES,
        "image_size": IMAGE,
        "pixel": False,
        "vae": str(vae),
        "total_steps": 10,
        "global_batch": 4,
        **extra_args,
    }
    state = {
        "model": toy_model(name, seed=1).state_dict(),
        "ema": toy_model(name, seed=0).state_dict(),
        "step": 10,
        "args": args,
    }
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny VAE, DiT and U-DiT checkpoints, and their exports."""
    root = tmp_path_factory.mktemp("export")
    vae = Path(save_tiny_vae(out_dir=str(root / "vae"), seed=0))
    out = {"root": root, "vae": vae}
    for key, name in (("dit", "DiT-S/4"), ("udit", "U-DiT-B")):
        ckpt = write_checkpoint(root / f"{key}.pt", name, vae)
        assert main(["--checkpoint", str(ckpt), "--out", str(root / f"{key}-out")]) == 0
        out[key], out[f"{key}_ckpt"] = root / f"{key}-out", ckpt
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


#################################################################################
#                         Exported model == udit model                          #
#################################################################################


@torch.no_grad()
def test_dit_key_map_is_exact_in_float64():
    model = toy_model("DiT-S/4").double()
    ported = to_diffusers(model).double()
    x = torch.randn(3, 4, LATENT, LATENT, dtype=torch.float64)
    t, y = torch.tensor([0, 500, 999]), torch.tensor([1, 9, CLASSES])
    want = model(x, t, y)
    y_pipe = torch.tensor([1, 9, 1000])  # DiTPipeline's null label
    stock = rel(ported(x, timestep=t, class_labels=y_pipe).sample, want)
    exact_timesteps(ported)
    assert rel(ported(x, timestep=t, class_labels=y_pipe).sample, want) < 1e-12
    # diffusers' own timestep frequencies (10000^(-k/127)) are not DiT's: a real difference
    assert stock > 1e-3


@pytest.mark.parametrize("name", [n for n in FAMILIES if not n.startswith("DiT-")])
@torch.no_grad()
def test_hub_model_equals_udit_model_and_round_trips(name, tmp_path):
    model = toy_model(name).double()
    hub = from_udit(model, name=name, model_kw=FAMILIES[name])
    x = torch.randn(2, 4, LATENT, LATENT, dtype=torch.float64)
    t, y = torch.tensor([3, 900]), torch.tensor([2, CLASSES])
    got = hub(x, timestep=t, class_labels=torch.tensor([2, 1000])).sample
    assert rel(got, model(x, t, y)) < 1e-10
    hub.float().save_pretrained(tmp_path, safe_serialization=True)
    back = UDiTTransformer2DModel.from_pretrained(tmp_path).eval()
    xf = x.float()
    assert torch.equal(back(xf, t, y).sample, hub(xf, t, y).sample)
    assert back.config.model == name


def test_udit_export_holds_the_deployed_ffn(run):
    hub = UDiTTransformer2DModel.from_pretrained(run["udit"] / "transformer")
    assert hub.config.model_kw["ffn"] == "dwconv"
    names = set(hub.state_dict())
    assert not any(".dwconv.1." in k or "project_in.1." in k for k in names)  # no train graph


def test_dit_export_round_trips_exactly(run):
    from diffusers import DiTTransformer2DModel

    loaded = DiTTransformer2DModel.from_pretrained(run["dit"] / "transformer").eval()
    expected = to_diffusers(toy_model("DiT-S/4"))
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


#################################################################################
#                         Sampling: DiTPipeline vs udit                         #
#################################################################################


def pipeline(folder: Path, *, leading_ddim: bool):
    from diffusers import DDIMScheduler, DiTPipeline

    pipe = DiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if leading_ddim:  # = udit's "ddimN" respacing: range(0, 1000, 1000 // N)
        pipe.scheduler = DDIMScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="leading"
        )
    return pipe


@torch.no_grad()
def udit_ddim(model, vae, labels, *, channels) -> torch.Tensor:
    """udit's DDIM (eta 0) with per-sample generators, decoded to [0, 1] like DiTPipeline."""
    gens = [seeded_generator(SEED, i, 1) for i in range(len(labels))]
    guided = ClassifierFreeGuidance(model, cfg_scale=CFG, guidance_channels=channels)
    z = create_diffusion(f"ddim{STEPS}").ddim_sample_loop(
        guided,
        (len(labels), 4, LATENT, LATENT),
        model_kwargs={"y": torch.tensor(labels)},
        device="cpu",
        generator=gens,
        eta=0.0,
    )
    images = vae.decode(z / vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("key,name", [("dit", "DiT-S/4"), ("udit", "U-DiT-B")])
def test_pipeline_samples_like_udit_ddim(run, key, name):
    labels = [1, 7]
    pipe = pipeline(run[key], leading_ddim=True)
    if key == "dit":
        stock = pipe(labels, CFG, [seeded_generator(SEED, i, 1) for i in range(2)], STEPS, "pt")
        exact_timesteps(pipe.transformer)
    gens = [seeded_generator(SEED, i, 1) for i in range(2)]  # x_T: the same draws as udit's
    got = pipe(
        labels, guidance_scale=CFG, generator=gens, num_inference_steps=STEPS, output_type="pt"
    )
    model = toy_model(name)
    want = udit_ddim(model, pipe.vae, labels, channels="all")
    # float32 both; diffusers keeps alphas_cumprod in float32, udit in float64
    assert (got.images - want).abs().max() < 1e-4
    # DiTPipeline guides all 4 latent channels, the recipe (DiT) the first 3: they differ
    recipe = udit_ddim(model, pipe.vae, labels, channels=3)
    assert (recipe - want).abs().max() > 1e-4
    if key == "dit":
        assert (stock.images - want).abs().max() > 1e-4  # diffusers' timestep frequencies


@torch.no_grad()
def test_exported_ddpm_scheduler_is_udits_chain_with_fixed_small_variance(run):
    """DDPMScheduler (as exported) == udit's respaced DDPM with the posterior variance; with
    the same noise, udit's learned sigma is the only difference left."""
    from diffusers import DDPMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    sched = DDPMScheduler.from_pretrained(run["udit"] / "scheduler")
    for n in (250, 100, 50, 4):
        sched.set_timesteps(n)
        assert (
            sched.timesteps.tolist() == space_timesteps(num_timesteps=1000, section_counts=n)[::-1]
        )

    hub = UDiTTransformer2DModel.from_pretrained(run["udit"] / "transformer").eval()
    y = torch.tensor([1, 7])
    shape = (2, 4, LATENT, LATENT)

    def gens():
        return [seeded_generator(SEED, i, 1) for i in range(2)]

    g = gens()
    x = randn_tensor(shape, generator=g)
    sched.set_timesteps(STEPS)
    for t in sched.timesteps:
        eps = hub(x, timestep=t, class_labels=y).sample[:, :4]
        x = sched.step(eps, t, x, generator=g).prev_sample

    def eps_only(x_t, t, y):
        return hub(x_t, timestep=t, class_labels=y).sample[:, :4]

    fixed = create_diffusion(str(STEPS), learn_sigma=False, sigma_small=True)
    want = fixed.p_sample_loop(eps_only, shape, model_kwargs={"y": y}, generator=gens())
    assert rel(x, want) < 1e-4
    learned = create_diffusion(str(STEPS)).p_sample_loop(
        lambda x_t, t, y: hub(x_t, timestep=t, class_labels=y).sample,
        shape,
        model_kwargs={"y": y},
        generator=gens(),
    )
    print(f"DDPM {STEPS} steps, learned sigma vs fixed_small: rel {rel(learned, want):.3g}")
    assert rel(learned, want) > 1e-4  # the documented difference is real


def test_dit_export_loads_where_udit_cannot_be_imported(run, tmp_path):
    """A clean interpreter: -I -S (no site, so no editable-install hook for udit), only the
    installed packages' folder on sys.path."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        try:
            import udit
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("udit is importable here")
        import torch
        from diffusers import DiTPipeline
        pipe = DiTPipeline.from_pretrained({str(run["dit"])!r})
        pipe.set_progress_bar_config(disable=True)
        out = pipe([0, 3], num_inference_steps=2, generator=torch.manual_seed(0), output_type="np")
        assert out.images.shape == (2, {IMAGE}, {IMAGE}, 3), out.images.shape
        print("labels", len(pipe.labels))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"labels {CLASSES}" in done.stdout


#################################################################################
#                              Folders and the card                             #
#################################################################################


@pytest.mark.parametrize("key", ["dit", "udit"])
def test_export_folder_has_no_pickles_and_a_card(run, key):
    folder = run[key]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    assert {"model_index.json", "README.md"} <= {p.name for p in files}
    assert sum(p.suffix == ".safetensors" for p in files) == 2  # transformer, vae
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n")
    assert "2405.02730" in card and "sha256" in card
    index = json.loads((folder / "model_index.json").read_text())
    assert len(index["id2label"]) == CLASSES
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert not list(folder.parent.glob(f".{folder.name}.*"))  # no temp folder left


def test_card_shows_metrics_beside_the_paper_row_it_is_given(run, tmp_path, capsys):
    """The paper column is the row the caller names (the DAG: the evaluation's paper row), with
    its sub-key; no row given, no paper numbers (a guess by model name would put a 1M-step run
    beside the 400K row)."""
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"fid": 12.5, "is": 80.0, "uncalibrated": True}))
    ckpt = ["--checkpoint", str(run["udit_ckpt"]), "--metrics", str(metrics)]
    row = ["--paper-table", "longer_training_T5", "--paper-row", "U-DiT-B"]
    assert main([*ckpt, "--out", str(tmp_path / "a"), *row, "--paper-key", "400K"]) == 0
    card = (tmp_path / "a" / "README.md").read_text()
    assert "| fid | 12.5 | 16.64 |" in card  # U-DiT-B at 400K, paper T5
    assert "row `U-DiT-B / 400K`" in card and "uncalibrated" in card
    assert main([*ckpt, "--out", str(tmp_path / "b"), *row, "--paper-key", "1M"]) == 0
    assert "| fid | 12.5 | 12.87 |" in (tmp_path / "b" / "README.md").read_text()
    assert main([*ckpt, "--out", str(tmp_path / "c")]) == 0
    card = (tmp_path / "c" / "README.md").read_text()
    assert "| fid | 12.5 | - |" in card and "Paper column: none given" in card
    capsys.readouterr()
    assert main([*ckpt, "--out", str(tmp_path / "d"), *row, "--paper-key", "7M"]) == 2
    assert "has no key '7M'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_raw_weights_and_overwrite(run, tmp_path):
    out = tmp_path / "out"
    ckpt = str(run["udit_ckpt"])
    assert main(["--checkpoint", ckpt, "--out", str(out), "--weights", "raw"]) == 0
    raw = UDiTTransformer2DModel.from_pretrained(out / "transformer").state_dict()
    assert main(["--checkpoint", ckpt, "--out", str(out), "--overwrite"]) == 0
    ema = UDiTTransformer2DModel.from_pretrained(out / "transformer").state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)


def test_push_dry_run_lists_the_files(run, capsys):
    assert push_module.main(["--repo-id", "org/name", str(run["dit"]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "transformer/diffusion_pytorch_model.safetensors" in out and "README.md" in out


#################################################################################
#                       Bad input: one line, exit code 2                        #
#################################################################################


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    assert main(["--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "notes.pt" in one_error_line(capsys)


def test_refuses_a_checkpoint_of_an_unknown_model(run, tmp_path, capsys):
    state = torch.load(run["dit_ckpt"], weights_only=True)
    state["args"]["model"] = "DiT-Q/9"
    torch.save(state, tmp_path / "odd.pt")
    assert main(["--checkpoint", str(tmp_path / "odd.pt"), "--out", str(tmp_path / "o")]) == 2
    err = one_error_line(capsys)
    assert "DiT-Q/9" in err and "odd.pt" in err


def test_refuses_an_existing_non_empty_out(run, capsys):
    assert main(["--checkpoint", str(run["dit_ckpt"]), "--out", str(run["dit"])]) == 2
    assert "--overwrite" in one_error_line(capsys)


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_refuses_a_missing_or_invalid_metrics_file(run, tmp_path, capsys, content):
    metrics = tmp_path / "metrics.json"
    if content is not None:
        metrics.write_text(content)
    argv = ["--checkpoint", str(run["dit_ckpt"]), "--out", str(tmp_path / "o")]
    assert main([*argv, "--metrics", str(metrics)]) == 2
    assert "metrics.json" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_push_refuses_a_folder_with_pickles(run, tmp_path, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("---\nlibrary_name: diffusers\n---\n")
    (folder / "model.bin").write_bytes(b"\x80\x04")
    assert push_module.main(["--repo-id", "org/name", str(folder), "--dry-run"]) == 2
    assert "model.bin" in one_error_line(capsys)
