"""`udit export`: a training checkpoint -> a Hub-ready diffusers DiTPipeline folder.

    udit export --checkpoint runs/x/checkpoints/ckpt-0400000.pt --out exports/u-dit-b
    udit export --checkpoint DiT-XL-2-256x256.pt --model DiT-XL/2 --vae VAE_DIR --out exports/dit

DiT models become diffusers' own DiTTransformer2DModel (udit.export.dit_diffusers), every other
registry model udit's UDiTTransformer2DModel (udit.export.hub_model), in a folder with the run's
VAE, a DDPMScheduler of the recipe's 1000 linear betas, the class-label map and a model card.
Every weight file is safetensors. The folder is written beside --out and renamed into place.
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from udit import outputs
from udit.cli import add_dry_run, dry_run
from udit.diffusion.schedule import LINEAR_BETA_END, LINEAR_BETA_START
from udit.errors import BadValueError, command_main
from udit.io import git_commit, sha256_file
from udit.models.spec import add_model_kw
from udit.paper import recipe

WEIGHTS = {"ema": "ema", "raw": "model"}  # --weights -> the checkpoint's sub-dict
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PROBE_SEED = 0
PROBE_BATCH = 2
EXPORT_TOL = 1e-4  # max |exported - udit| / max |udit| on the probe, float32


class ExportError(BadValueError):
    """A checkpoint that cannot become a DiTPipeline folder (pixel-space, unsupported shape)."""


#################################################################################
#                              Checkpoint -> models                             #
#################################################################################


def load_run(checkpoint: Path, *, weights: str, model: str | None, model_kw: dict | None, vae):
    """(udit model in eval mode, resolved options, training args, VAE, checkpoint sha256)."""
    from udit.data.vae import latent_shape, load_vae
    from udit.models import check_model_options
    from udit.sampling.checkpoint import (
        build_model,
        checkpoint_options,
        checkpoint_sha256,
        read_sampling_checkpoint,
        resolve_options,
    )

    sha = checkpoint_sha256(checkpoint)  # refuses a file that differs from its sidecar
    state = read_sampling_checkpoint(checkpoint, weights=WEIGHTS[weights])
    stored = checkpoint_options(state)
    if stored.get("model") is not None:  # unknown names: one line listing the known ones
        try:
            check_model_options(stored["model"], {})
        except BadValueError as err:
            raise ExportError(
                f"checkpoint {checkpoint} was trained as {stored['model']!r}, which this udit "
                f"does not know ({err}); export it with the udit version that trained it"
            ) from None
    if model is not None:
        check_model_options(model, model_kw or {})
    given = {"model": model, "model_kw": model_kw, "vae": vae}
    opts = resolve_options(given=given, stored=stored)
    if opts["pixel"]:
        raise ExportError(
            f"checkpoint {checkpoint} was trained on pixels (no VAE): DiTPipeline decodes "
            f"latents with a VAE, so only latent-space runs can be exported"
        )
    autoencoder = load_vae(opts["vae"])
    channels, side, _ = latent_shape(autoencoder, opts["image_size"])
    net = build_model(
        checkpoint=state,
        options=opts,
        in_channels=channels,
        input_size=side,
        weights=WEIGHTS[weights],
        device=torch.device("cpu"),
    )
    args = state.get("args") if isinstance(state, dict) else None
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    step = state.get("step") if isinstance(state, dict) else None
    return net, opts, args, step, autoencoder, sha


def is_dit(model) -> bool:
    from udit.models.dit import DiT

    return type(model) is DiT


def convert(net, opts: dict):
    """The diffusers transformer for a udit model: DiTTransformer2DModel for DiT, else the hub
    class (FFNs folded)."""
    if is_dit(net):
        from udit.export.dit_diffusers import to_diffusers

        return to_diffusers(net)
    from udit.export.hub_model import from_udit

    return from_udit(net, name=opts["model"], model_kw=opts["model_kw"])


@torch.no_grad()
def probe_check(net, transformer) -> dict:
    """Run both models on one seeded probe batch: {'rel': exported vs udit, 'rel_stock': the same
    for a DiT with diffusers' own timestep frequencies, 'text': one line for the card}."""
    from udit.export.dit_diffusers import PIPELINE_NULL_LABEL, exact_timesteps

    gen = torch.Generator().manual_seed(PROBE_SEED)
    shape = (PROBE_BATCH, net.in_channels, net.input_size, net.input_size)
    x = torch.randn(shape, generator=gen)  # (B, C, h, w)
    t = torch.tensor([10, 900])  # a low and a high noise level
    y = torch.tensor([0, net.num_classes])  # a class and the null label
    want = net(x, t, y)  # (B, C_out, h, w)
    y_pipe = torch.tensor([0, PIPELINE_NULL_LABEL])  # what DiTPipeline passes

    def rel() -> float:
        got = transformer(x, timestep=t, class_labels=y_pipe).sample
        return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))

    result = {"rel": rel(), "rel_stock": None}
    if is_dit(net):
        result["rel_stock"] = result["rel"]
        exact_timesteps(transformer)
        result["rel"] = rel()
        for block in transformer.transformer_blocks:  # back to what from_pretrained rebuilds
            block.norm1.emb.time_proj.downscale_freq_shift = 1
    if not result["rel"] <= EXPORT_TOL:
        raise RuntimeError(f"exported model differs from the udit model: rel {result['rel']:.3g}")
    text = f"max relative difference to the udit model on a probe batch {result['rel']:.2g}"
    if result["rel_stock"] is not None:
        text += (
            f" with DiT's timestep frequencies, {result['rel_stock']:.2g} with diffusers' own "
            f"(see Load and sample)"
        )
    result["text"] = text
    return result


def recipe_scheduler():
    """DDPMScheduler of the recipe's chain: 1000 linear betas 1e-4..0.02, eps prediction, no
    clipping (udit samples with clip_denoised=False), steps spaced like udit's respacing."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=recipe().diffusion_steps,
        beta_start=LINEAR_BETA_START,
        beta_end=LINEAR_BETA_END,
        beta_schedule="linear",
        variance_type="fixed_small",  # DiTPipeline drops the learned-sigma channels
        clip_sample=False,
        prediction_type="epsilon",
        timestep_spacing="linspace",  # = udit/DiT space_timesteps("N"): both ends kept
    )


def class_names(args: dict, num_classes: int) -> dict[int, str]:
    """id -> name: the run's class folders (latent manifest or ImageFolder) where they are
    still readable, else the ids themselves."""
    names = None
    latents, images = args.get("latents"), args.get("images")
    manifest = Path(latents) / "manifest.json" if latents else None
    if manifest is not None and manifest.is_file():
        from udit.io import read_json

        names = read_json(manifest, what="latent manifest").get("classes")
    elif images and Path(images).is_dir():
        names = sorted(p.name for p in Path(images).iterdir() if p.is_dir())
    if not names or len(names) > num_classes:
        names = []
    return {i: (names[i] if i < len(names) else str(i)) for i in range(num_classes)}


#################################################################################
#                                 Folder writing                                #
#################################################################################


def pickle_files(folder: Path) -> list[Path]:
    """Files under `folder` that hold (or may hold) pickles: never part of an export."""
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]


def refuse_existing(out: Path, *, overwrite: bool) -> None:
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BadValueError(
            f"--out {out} exists and is not empty; choose another folder or pass --overwrite"
        )


def write_folder(out: Path, fill) -> None:
    """fill(tmp) writes into a fresh folder beside `out`, which then replaces `out` by renames:
    a crash or Ctrl-C leaves the old folder (or none), never a half-written one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        fill(tmp)
        found = pickle_files(tmp)
        if found:
            raise RuntimeError(f"export wrote pickle files: {found}")
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; an export is meant to be shared
        if out.exists():  # --overwrite: the old folder goes aside, then away
            old = tmp.with_suffix(".old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_pipeline(folder: Path, transformer, autoencoder, *, id2label: dict, card: str) -> None:
    """A DiTPipeline folder (safetensors only) with the model card as its README.md."""
    from diffusers import DiTPipeline

    pipe = DiTPipeline(
        transformer=transformer, vae=autoencoder, scheduler=recipe_scheduler(), id2label=id2label
    )
    # DiTPipeline keeps the map only as `labels`; recorded in model_index.json, it comes back
    # through from_pretrained (as facebook/DiT-XL-2-256 stores it)
    pipe.register_to_config(id2label={str(k): v for k, v in id2label.items()})
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").write_text(card, encoding="utf-8")


def export(
    *,
    checkpoint: str,
    out: str,
    weights: str = "ema",
    model: str | None = None,
    model_kw: dict | None = None,
    vae: str | None = None,
    metrics: str | None = None,
    paper: tuple[str, str, str | None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the DiTPipeline folder `out` from `checkpoint`; -> a summary (paths, check)."""
    from udit.export import card

    ckpt, out = Path(checkpoint), Path(out)
    if weights not in WEIGHTS:
        raise BadValueError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if not ckpt.is_file():
        what = "no such file" if not ckpt.exists() else "not a regular file"
        raise FileNotFoundError(f"--checkpoint {ckpt}: {what}; give a `udit train` checkpoint")
    local_vae = vae if vae and Path(vae).exists() else None
    outputs.check(
        inputs={"--checkpoint": ckpt, "--metrics": metrics, "--vae": local_vae},
        outputs={"--out": out},
        folders=("--out",),
    )
    refuse_existing(out, overwrite=overwrite)
    scores = card.read_metrics(metrics) if metrics else None  # before the slow part
    card.paper_values(paper)  # an unknown paper row: refused before the slow part too

    net, opts, args, step, autoencoder, sha = load_run(
        ckpt, weights=weights, model=model, model_kw=model_kw, vae=vae
    )
    transformer = convert(net, opts)
    check = probe_check(net, transformer)
    hub_class = not is_dit(net)
    text = card.render(
        model=opts["model"],
        model_kw=opts["model_kw"],
        args=args,
        step=step,
        weights=weights,
        checkpoint_name=ckpt.name,
        checkpoint_sha256=sha,
        hub_class=hub_class,
        num_classes=opts["num_classes"],
        metrics=scores,
        metrics_sha256=sha256_file(metrics) if metrics else None,
        paper=paper,
        check=check,
        code_commit=git_commit(),
    )

    id2label = class_names(args, opts["num_classes"])
    write_folder(
        out, lambda tmp: save_pipeline(tmp, transformer, autoencoder, id2label=id2label, card=text)
    )
    return {"out": str(out), "model": opts["model"], "hub_class": hub_class, "check": check}


#################################################################################
#                                      CLI                                      #
#################################################################################


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="udit export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="`udit train` checkpoint or a state dict")
    p.add_argument("--out", required=True, type=Path, help="folder to write (must not exist)")
    p.add_argument(
        "--weights", choices=tuple(WEIGHTS), default="ema", help="EMA (default) or raw weights"
    )
    p.add_argument("--model", help="registry name; needed for a raw state dict")
    add_model_kw(p, help="constructor overrides")
    p.add_argument("--vae", help="VAE folder or hub id; default: the one the run recorded")
    p.add_argument("--metrics", help="metrics JSON of `udit evaluate` for the model card")
    p.add_argument("--paper-table", help="paper_numbers.yaml table of the row the run reproduces")
    p.add_argument("--paper-row", help="that row (the card's paper column; none if not given)")
    p.add_argument("--paper-key", help="the row's sub-key where it has several (e.g. 400K)")
    outputs.add_overwrite(p)
    add_dry_run(p)
    return p


@command_main("udit export")
def main(argv: list[str] | None = None) -> int:
    """`udit export --checkpoint CKPT --out DIR`: a Hub-ready DiTPipeline folder."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.paper_table is None) != (args.paper_row is None) or (
        args.paper_key and not args.paper_row
    ):
        parser.error("--paper-table and --paper-row go together (and --paper-key with them)")
    if dry_run(args):
        return 0
    paper = (args.paper_table, args.paper_row, args.paper_key) if args.paper_table else None
    summary = export(
        checkpoint=args.checkpoint,
        out=str(args.out),
        weights=args.weights,
        model=args.model,
        model_kw=args.model_kw or None,
        vae=args.vae,
        metrics=args.metrics,
        paper=paper,
        overwrite=args.overwrite,
    )
    kind = "UDiTTransformer2DModel" if summary["hub_class"] else "DiTTransformer2DModel"
    print(f"exported {summary['model']} as {kind} to {summary['out']}; {summary['check']['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
