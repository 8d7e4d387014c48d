"""`udit sample`: class-conditional samples into an ADM-compatible .npz, resumable, DDP-ready.

    udit sample --checkpoint runs/x/checkpoints/ckpt-0400000.pt --num-samples 50000 --out s.npz
    torchrun --nproc_per_node 8 -m udit.sample --checkpoint DiT-XL-2-256x256.pt --model DiT-XL/2 ...

Output (the format the ADM evaluator of guided-diffusion reads, and DiT's sample_ddp.py writes):
`arr_0` uint8 (N, H, W, 3) NHWC and `arr_1` int64 (N,) class labels, plus a PNG grid of the
first samples and OUT.json with the resolved options.

Reproducibility (edm2 idea): sample i depends only on (seed, i). Its label, initial noise and
every per-step noise come from CPU generators seeded by SeedSequence([seed, i, stream]), so the
result does not depend on the batch size, the number of processes or the device.

Resume: each batch is saved as a shard under OUT.parts/ (atomically); a re-run of the same
command only computes the indices no shard holds yet, then assembles OUT in index order.
"""

import argparse
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from udit import argtypes, distributed, outputs
from udit.cli import add_dry_run, dry_run
from udit.diffusion import ClassifierFreeGuidance, create_diffusion
from udit.diffusion.noise import seeded_generator
from udit.errors import BadValueError, UserError, command_main
from udit.io import (
    atomic_open,
    atomic_savez,
    atomic_write_json,
    check_free_space,
    read_json,
    sha256_file,
)
from udit.models.spec import parse_model_kw
from udit.paper import recipe
from udit.precision import DEFAULT_PRECISION, PRECISIONS, check_precision, set_precision
from udit.stop import StopFlag, StoppedEarly, mark_done

RECIPE = recipe()  # the paper's defaults (udit/paper/paper_numbers.yaml)
PARTS_SUFFIX = ".parts"  # OUT.npz -> OUT.npz.parts/ holds the finished shards
SHARD_GLOB = "shard-*.npz"
CONFIG_NAME = "config.json"  # the options every shard in OUT.parts/ was made with
GRID_MAX = 64  # the grid shows at most the first 8 x 8 samples
LABEL_STREAM, NOISE_STREAM = 0, 1  # SeedSequence words: labels and noise are independent streams
PIXEL_CHANNELS = 3  # RGB in [-1, 1] for pixel-space toy models
SAMPLERS = ("ddpm", "ddim")
LABEL_MODES = ("random", "uniform")
# Model options a training checkpoint's "args" records (udit/training/loop.py TrainOptions); a CLI
# value must agree with them, since the weights only fit the architecture they were trained with.
MODEL_FIELDS = ("model", "model_kw", "num_classes", "image_size", "pixel", "vae")
SIDECAR_SUFFIX = ".sha256"  # the trainer's checkpoint hash (udit.training.store)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The range of every numeric option, for the CLI's argparse types and generate()'s own check
RANGES = {
    "num_samples": argtypes.SAMPLES,
    "seed": argtypes.SEED,
    "cfg_scale": argtypes.GUIDANCE,
    "steps": argtypes.Range("int", 1, 1000),  # respaced steps of the 1000-step diffusion
    "eta": argtypes.NONNEG,
    "batch_size": argtypes.BATCH,
    "num_classes": argtypes.CLASSES,
    "image_size": argtypes.IMAGE_SIZE,
}


class UnusableCheckpointError(BadValueError):
    """A checkpoint that differs from its sidecar, does not load, or holds non-finite weights."""


class NonFiniteSamplesError(BadValueError):
    """Sampling produced NaN or inf: written out they would be black pixels, not samples."""


#################################################################################
#                            Per-sample randomness                              #
#################################################################################


def sample_labels(*, seed: int, indices: list[int], num_classes: int, mode: str) -> torch.Tensor:
    """Labels (B,) int64. 'random': uniform draw per sample, like DiT sample_ddp.py's randint;
    'uniform': i % num_classes, so every class appears N / num_classes times."""
    if mode == "uniform":
        return torch.tensor([i % num_classes for i in indices], dtype=torch.long)
    if mode == "random":
        gens = [seeded_generator(seed, i, LABEL_STREAM) for i in indices]
        return torch.cat([torch.randint(num_classes, (1,), generator=g) for g in gens])
    raise ValueError(f"unknown label mode {mode!r}; choose 'random' or 'uniform'")


#################################################################################
#                             Files: atomic, shards                             #
#################################################################################


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Uncompressed npz (the ADM evaluator streams arr_0 out of the zip), written atomically."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}  # C order: fortran_order False
    atomic_savez(path, **arrays)


def finished_indices(parts: Path, *, delete_unreadable: bool = False) -> dict[int, Path]:
    """Sample index -> shard file, for every readable shard; an unreadable one is redone."""
    found = {}
    for shard in sorted(parts.glob(SHARD_GLOB)):
        try:
            with np.load(shard) as data:
                indices = data["indices"]
        except Exception as err:  # noqa: BLE001 - a damaged shard is recomputed, not fatal
            print(f"warning: unreadable shard {shard.name} will be redone: {err}", file=sys.stderr)
            if delete_unreadable:
                shard.unlink(missing_ok=True)
            continue
        found.update({int(i): shard for i in indices})
    return found


def assemble(*, parts: Path, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """All shards -> (images (N, H, W, 3) uint8, labels (N,) int64), ordered by sample index."""
    images = labels = None
    seen = np.zeros(num_samples, dtype=bool)
    for shard in sorted(parts.glob(SHARD_GLOB)):
        with np.load(shard) as data:
            idx, imgs, ys = data["indices"], data["images"], data["labels"]
        keep = idx < num_samples  # a previous run may have asked for more samples
        idx, imgs, ys = idx[keep], imgs[keep], ys[keep]
        if images is None:
            images = np.empty((num_samples, *imgs.shape[1:]), dtype=np.uint8)
            labels = np.empty(num_samples, dtype=np.int64)
        images[idx], labels[idx], seen[idx] = imgs, ys, True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise RuntimeError(
            f"{len(missing)} of {num_samples} samples have no shard in {parts} "
            f"(first missing index {missing[0]}); re-run the same command to finish them"
        )
    return images, labels


def image_grid(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> one row-major (rows*H, cols*W, 3) image of ceil(sqrt(B)) columns,
    empty cells black (torchvision's make_grid with padding 0, without importing torchvision,
    which pulls in torch._dynamo: ~2 s of every sample job's start-up)."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows, cols, h, w, c), dtype=images.dtype)
    grid.reshape(rows * cols, h, w, c)[:n] = images
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")


#################################################################################
#                          Options, model and checkpoint                        #
#################################################################################


def checkpoint_options(checkpoint) -> dict:
    """MODEL_FIELDS recorded in a training checkpoint's "args" ({} for a raw state dict)."""
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if args is None:
        return {}
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args)  # official: Namespace
    return {k: args[k] for k in MODEL_FIELDS if args.get(k) is not None}


def resolve_options(*, given: dict, stored: dict) -> dict:
    """The checkpoint's options, filled in by the CLI; a CLI value that contradicts it is an error
    (except the VAE, whose name may legitimately differ, e.g. a local copy of the hub model)."""
    from udit.models import get_spec

    given, stored = dict(given), dict(stored)
    for opts in (given, stored):  # paper name or slug; unknown names list the valid ones
        if opts.get("model") is not None:
            opts["model"] = get_spec(opts["model"]).name
    resolved = {}
    for key in MODEL_FIELDS:
        cli, saved = given.get(key), stored.get(key)
        if key == "model_kw":
            cli, saved = (cli or None), (dict(saved) if saved else None)
            if cli and saved is not None:  # a subset of the training overrides is fine
                clash = {k: v for k, v in cli.items() if k not in saved or saved[k] != v}
                if clash:
                    raise BadValueError(
                        f"--model-kw {clash!r} contradicts the checkpoint, which was trained "
                        f"with model_kw={saved!r}; drop the option or fix it"
                    )
                cli = saved
        if cli is not None and saved is not None and cli != saved and key != "vae":
            raise BadValueError(
                f"--{key.replace('_', '-')} {cli!r} contradicts the checkpoint, which was "
                f"trained with {key}={saved!r}; drop the option or use the matching checkpoint"
            )
        resolved[key] = cli if cli is not None else saved
    if resolved["model"] is None:
        raise BadValueError(
            "the checkpoint does not name its model (a raw state dict, e.g. a released "
            "one): pass --model"
        )
    resolved["model_kw"] = resolved["model_kw"] or {}
    resolved["pixel"] = bool(resolved["pixel"])
    resolved["num_classes"] = int(resolved["num_classes"] or RECIPE.num_classes)
    resolved["image_size"] = int(resolved["image_size"] or RECIPE.image_size)
    if resolved["pixel"]:
        resolved["vae"] = None
    elif resolved["vae"] is None:
        from udit.data.vae import DEFAULT_VAE

        resolved["vae"] = DEFAULT_VAE
    return resolved


def checkpoint_sha256(path: Path) -> str:
    """SHA-256 of the checkpoint's bytes, hashed here (the sidecar's word is not proof: the
    file may have been truncated or damaged after training wrote both). A `.sha256` sidecar
    that disagrees is refused."""
    actual = sha256_file(path)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar.is_file():
        words = sidecar.read_text(errors="replace").split()
        expected = words[0] if words else ""
        if expected != actual:
            raise UnusableCheckpointError(
                f"checkpoint {path} does not match its sidecar {sidecar.name} (file sha256 "
                f"{actual[:12]}..., sidecar {expected[:12] or 'empty'}...): it changed after "
                f"training wrote it; copy it again or use another checkpoint"
            )
    return actual


def read_sampling_checkpoint(path: Path, *, weights: str):
    """The checkpoint at `path` (weights_only), refused with its name when it does not load
    (truncated, not a checkpoint) or when the `weights` it would sample are not finite."""
    import pickle

    from udit.models.weights import CheckpointError, extract_state_dict, read_checkpoint

    try:
        state = read_checkpoint(path)
    except (FileNotFoundError, PermissionError):  # already name the file and the fix
        raise
    except (CheckpointError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        # torch's own messages run to paragraphs: keep the part that says what is wrong
        blocked = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if blocked:
            why = f"it pickles {blocked.group(1)}, which a checkpoint never holds"
        elif isinstance(err.__cause__ or err, pickle.UnpicklingError):
            why = "its pickle data is unreadable"
        else:
            why = f"{type(err).__name__}: {str(err).split('. ')[0][:160]}"
        raise UnusableCheckpointError(
            f"checkpoint {path} cannot be loaded ({why}); it is truncated, damaged or not a "
            f"torch checkpoint (loaded with weights_only=True: nothing in it was run)"
        ) from None
    for name, tensor in extract_state_dict(state, key=weights).items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise UnusableCheckpointError(
                f"checkpoint {path}: its {weights} weights are not finite, {name} holds {bad} "
                f"NaN/inf of {tensor.numel()} values (the run diverged or the file is damaged); "
                f"sample an earlier checkpoint"
            )
    return state


def build_model(
    *,
    checkpoint,
    options: dict,
    in_channels: int,
    input_size: int,
    weights: str,
    device: torch.device,
) -> torch.nn.Module:
    """Registry model with the checkpoint's `weights` ('ema' or 'model'), eval mode, on `device`."""
    from udit.models import create_model, load_checkpoint

    overrides = {
        "input_size": input_size,
        "in_channels": in_channels,
        "num_classes": options["num_classes"],
        **options["model_kw"],
    }  # same order as train
    model = create_model(options["model"], **overrides)
    load_checkpoint(model, checkpoint, key=weights)
    return model.to(device).eval().requires_grad_(False)


#################################################################################
#                                   Sampling                                    #
#################################################################################


class AutocastForward(torch.nn.Module):
    """model(...) under `autocast`, its output cast back to fp32 for the sampler's arithmetic."""

    def __init__(self, model: torch.nn.Module, autocast):
        super().__init__()
        self.model, self.autocast = model, autocast
        self.num_classes = getattr(model, "num_classes", None)  # the guidance null class

    def forward(self, *args, **kwargs) -> torch.Tensor:
        with self.autocast:
            return self.model(*args, **kwargs).float()


@torch.no_grad()
def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in ~[-1, 1] -> uint8 as DiT sample_ddp.py: clamp(127.5 x + 128, 0, 255), then a
    truncating cast (so 0 -> 128, -1 -> 0, 1 -> 255)."""
    return torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)


def sample_batch(
    *,
    model,
    diffusion,
    vae,
    indices: list[int],
    seed: int,
    num_classes: int,
    labels: str,
    cfg_scale: float,
    guidance_channels,
    sampler: str,
    eta: float,
    shape: tuple[int, int, int],
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples `indices` -> (images (B, H, W, 3) uint8, labels (B,) int64); row k depends only on
    (seed, indices[k]): its own generator draws x_T first, then one noise per step."""
    y = sample_labels(seed=seed, indices=indices, num_classes=num_classes, mode=labels)
    gens = [seeded_generator(seed, i, NOISE_STREAM) for i in indices]
    guided = ClassifierFreeGuidance(
        model, cfg_scale=cfg_scale, null_class=num_classes, guidance_channels=guidance_channels
    )
    loop_kw = {
        "model_kwargs": {"y": y.to(device)},
        "device": device,
        "generator": gens,
        "clip_denoised": False,
    }
    batch_shape = (len(indices), *shape)
    if sampler == "ddpm":
        x = diffusion.p_sample_loop(guided, batch_shape, **loop_kw)  # (B, C, h, w)
    else:
        x = diffusion.ddim_sample_loop(guided, batch_shape, eta=eta, **loop_kw)
    _check_finite(x, indices, stage="the model's samples")
    if vae is not None:
        from udit.data.vae import LATENT_SCALE

        x = vae.decode(x / LATENT_SCALE).sample  # (B, 3, H, W) in ~[-1, 1]
        _check_finite(x, indices, stage="the VAE's decoded images (of finite latents)")
    images = to_uint8(x).permute(0, 2, 3, 1)  # (B, H, W, 3)
    return images.to("cpu", dtype=torch.uint8).numpy(), y.numpy().astype(np.int64)


def _check_finite(x: torch.Tensor, indices: list[int], *, stage: str) -> None:
    """NaN/inf would clamp to black (or white) pixels and score as real samples: refuse them."""
    finite = torch.isfinite(x.flatten(1)).all(dim=1)  # (B,)
    if not finite.all():
        bad = [indices[k] for k in torch.nonzero(~finite).flatten().tolist()]
        listed = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
        raise NonFiniteSamplesError(
            f"{stage} hold NaN/inf for {len(bad)} of {len(indices)} samples (indices {listed})"
        )


def generate(
    *,
    checkpoint: str,
    out: str,
    num_samples: int = RECIPE.fid_samples,
    seed: int = RECIPE.sample_seed,
    cfg_scale: float = RECIPE.cfg_scale,
    guidance_channels=RECIPE.guidance_channels,
    steps: int = RECIPE.sampling_steps,
    sampler: str = "ddpm",
    eta: float = 0.0,
    model: str | None = None,
    model_kw: dict | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    pixel: bool | None = None,
    vae: str | None = None,
    weights: str = "ema",
    labels: str = "random",
    batch_size: int = 32,
    grid: str | None = None,
    device: str | None = None,
    keep_parts: bool = False,
    precision: str = DEFAULT_PRECISION,
    pause_after_shard: float = 0.0,
    overwrite: bool = False,
) -> dict:
    """Write `out` (.npz), its grid PNG and out.json; returns the summary written to out.json."""
    numbers = {
        "num_samples": num_samples,
        "seed": seed,
        "cfg_scale": cfg_scale,
        "steps": steps,
        "eta": eta,
        "batch_size": batch_size,
        "num_classes": num_classes,
        "image_size": image_size,
    }
    _check_options(
        numbers=numbers,
        sampler=sampler,
        labels=labels,
        weights=weights,
        checkpoint=checkpoint,
        out=out,
    )
    guidance_channels = "all" if str(guidance_channels) == "all" else int(guidance_channels)
    ckpt_path, out = Path(checkpoint), Path(out)
    grid_path = Path(grid) if grid else out.with_suffix(".png")
    summary_path = Path(str(out) + ".json")
    outputs.check(
        inputs={"--checkpoint": ckpt_path, "--vae": vae if vae and Path(vae).exists() else None},
        outputs={"--out": out, "--grid": grid_path, "--out's summary": summary_path},
    )
    check_precision(precision)

    info = distributed.setup(device)
    try:
        with distributed.rank0_lock(out, info, flag="--out"):
            autocast = set_precision(precision, info.device)  # TF32 as sample_ddp.py; bf16 autocast
            # hashed and checked before anything is unpickled, created or sampled
            ckpt_sha256 = checkpoint_sha256(ckpt_path)
            state = read_sampling_checkpoint(ckpt_path, weights=weights)
            given = {
                "model": model,
                "model_kw": model_kw,
                "num_classes": num_classes,
                "image_size": image_size,
                "pixel": pixel,
                "vae": vae,
            }
            opts = resolve_options(given=given, stored=checkpoint_options(state))
            autoencoder, shape = load_space(opts, device=info.device)
            # everything a sample depends on; batch size, device and process count do not count
            config = {
                "checkpoint_sha256": ckpt_sha256,
                "weights": weights,
                **opts,
                "vae_fingerprint": None if autoencoder is None else _vae_fingerprint(autoencoder),
                "seed": seed,
                "cfg_scale": float(cfg_scale),
                "guidance_channels": guidance_channels,
                "steps": steps,
                "sampler": sampler,
                "eta": float(eta) if sampler == "ddim" else None,
                "labels": labels,
                "clip_denoised": False,
                "precision": precision,  # tf32/bf16 change the numbers: shards never mix them
            }
            summary = {"out": out.name, "num_samples": num_samples, "config": config}
            if outputs.replace_result(
                out, flag="--out", options=summary, recorded=_recorded_summary, overwrite=overwrite
            ):
                if info.is_main:
                    print(
                        f"{out} already holds these {num_samples} samples; nothing to do",
                        file=sys.stderr,
                    )
                return read_json(summary_path, what="sample summary")
            # the grid is ours to replace only if it is a PNG (a default out.png of an earlier run)
            outputs.replace_result(
                grid_path,
                flag="--grid",
                options={"png": True},
                recorded=_recorded_png,
                overwrite=overwrite,
            )
            # the finished npz plus its shards (at most twice its bytes) must fit before any work
            per_image = 3 * opts["image_size"] ** 2
            check_free_space(out.parent, 2 * num_samples * per_image, what=f"{num_samples} samples")

            parts = Path(str(out) + PARTS_SUFFIX)
            if overwrite and info.is_main and parts.is_dir():
                shutil.rmtree(parts)  # shards of other options would be refused below
            distributed.barrier(info)
            mine, total = claim_indices(
                parts=parts, config=config, num_samples=num_samples, info=info
            )
            net = build_model(
                checkpoint=state,
                options=opts,
                in_channels=shape[0],
                input_size=shape[-1],
                weights=weights,
                device=info.device,
            )
            del state
            if precision == "bf16":  # the network in bf16; guidance, sampler and VAE stay fp32
                net = AutocastForward(net, autocast)
            diffusion = create_diffusion(str(steps))
            bar = tqdm(
                total=total, disable=not info.is_main, desc="sampling", unit="img", file=sys.stderr
            )
            # SIGUSR1 / SIGTERM: finish the shard in flight, then exit EXIT_STOPPED (a re-run
            # resumes); shards are per rank, so each rank stops on its own, no agreement needed
            with StopFlag() as flag:
                for start in range(0, len(mine), batch_size):
                    indices = mine[start : start + batch_size]
                    try:
                        images, ys = sample_batch(
                            model=net,
                            diffusion=diffusion,
                            vae=autoencoder,
                            indices=indices,
                            seed=seed,
                            num_classes=opts["num_classes"],
                            labels=labels,
                            cfg_scale=cfg_scale,
                            guidance_channels=guidance_channels,
                            sampler=sampler,
                            eta=eta,
                            shape=shape,
                            device=info.device,
                        )
                    except NonFiniteSamplesError as err:  # nothing of this batch was written
                        raise NonFiniteSamplesError(
                            f"sampling {ckpt_path} ({weights} weights, cfg scale {cfg_scale}): "
                            f"{err}; the weights or the VAE are unusable, no image was written"
                        ) from None
                    write_npz(
                        parts / f"shard-{indices[0]:08d}-{len(indices):05d}.npz",
                        indices=np.asarray(indices, dtype=np.int64),
                        images=images,
                        labels=ys,
                    )
                    bar.update(len(indices) * info.world_size)  # rank 0 speaks for all ranks
                    time.sleep(pause_after_shard)  # lets kill tests stop a run between shards
                    if flag.signal is not None and start + batch_size < len(mine):
                        raise StoppedEarly(
                            f"{flag.name}: stopped after {start + len(indices)} of this rank's "
                            f"{len(mine)} samples (shards in {parts}); run the same command "
                            f"again to make the rest"
                        )
            bar.close()
            distributed.barrier(info)

            if info.is_main:
                _write_outputs(
                    parts=parts,
                    out=out,
                    grid=grid_path,
                    summary=summary,
                    num_samples=num_samples,
                    keep_parts=keep_parts,
                )
            distributed.barrier(info)
            return summary
    finally:
        distributed.cleanup(info)


def _recorded_png(path: Path) -> dict | None:
    """{"png": True} for a PNG (a grid this command may replace), None for any other file."""
    with open(path, "rb") as f:
        return {"png": True} if f.read(len(PNG_MAGIC)) == PNG_MAGIC else None


def _recorded_summary(out: Path) -> dict | None:
    """What a finished samples file at `out` was made with (its OUT.json), or None when `out`
    is not a finished `udit sample` result (no summary, or a summary of another file)."""
    summary = Path(str(out) + ".json")
    if not summary.is_file():
        return None
    previous = read_json(summary, what="sample summary")
    if not isinstance(previous, dict) or previous.get("out") != out.name:
        return None
    return {k: previous.get(k) for k in ("out", "num_samples", "config")}


def _check_options(*, numbers: dict, sampler, labels, weights, checkpoint, out):
    for name, value in numbers.items():
        why = None if value is None else RANGES[name].check(value)
        if why:
            raise BadValueError(f"--{name.replace('_', '-')} {why}")
    if sampler not in SAMPLERS:
        raise BadValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if labels not in LABEL_MODES:
        raise BadValueError(f"unknown label mode {labels!r}; choose one of {LABEL_MODES}")
    if weights not in ("ema", "model"):
        raise BadValueError(f"--weights must be 'ema' or 'model', got {weights!r}")
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if not Path(checkpoint).is_file():
        raise BadValueError(
            f"--checkpoint {checkpoint} is not a regular file (a folder, pipe or device); give "
            f"a checkpoint file, e.g. RUN/checkpoints/ckpt-0400000.pt"
        )
    if Path(out).suffix != ".npz":
        raise BadValueError(f"--out must end in .npz (the ADM evaluator's format), got {out}")


def _write_outputs(
    *, parts: Path, out: Path, grid: Path, summary: dict, num_samples: int, keep_parts: bool
) -> None:
    """Shards -> OUT.npz, its grid PNG and OUT.npz.json (the summary, written last: its presence
    marks a finished file); then OUT.parts/ goes unless kept."""
    arr_0, arr_1 = assemble(parts=parts, num_samples=num_samples)
    write_npz(out, arr_0=arr_0, arr_1=arr_1)
    write_png(grid, image_grid(arr_0[:GRID_MAX]))
    summary.update(shape=list(arr_0.shape), grid=grid.name)
    write_json(Path(str(out) + ".json"), summary)
    if not keep_parts:
        shutil.rmtree(parts)
    print(
        f"wrote {out} arr_0 {arr_0.shape} uint8, arr_1 {arr_1.shape} int64; grid {grid}",
        file=sys.stderr,
    )


def load_space(opts: dict, *, device: torch.device):
    """(VAE or None, per-sample shape the model samples in): pixels, or latents of the VAE."""
    if opts["pixel"]:
        return None, (PIXEL_CHANNELS, opts["image_size"], opts["image_size"])
    from udit.data.vae import latent_shape, load_vae  # diffusers: only when a VAE is used

    vae = load_vae(opts["vae"], device=device)
    return vae, latent_shape(vae, opts["image_size"])


def claim_indices(*, parts: Path, config: dict, num_samples: int, info) -> tuple[list[int], int]:
    """(indices this rank computes, how many are missing in all) after checking OUT.parts/ holds
    shards made with `config`. Missing indices are dealt out i = rank, rank + W, ..."""
    if info.is_main:
        parts.mkdir(parents=True, exist_ok=True)
        for stale in parts.glob(".*.tmp"):  # temp files of a killed run
            stale.unlink(missing_ok=True)
        # assemble() must not meet unreadable shards later
        if not finished_indices(parts, delete_unreadable=True):
            # no shard yet, so nothing to mix: the options of an earlier attempt that failed
            # before its first shard (bad weights, NaN samples) give way to these
            write_json(parts / CONFIG_NAME, config)
    distributed.barrier(info)
    if not (parts / CONFIG_NAME).is_file():
        raise BadValueError(
            f"{parts} holds shards but no {CONFIG_NAME}, so their options are unknown; "
            f"delete it or choose another --out"
        )
    saved = read_json(parts / CONFIG_NAME, what="sample shard options", hint=f"delete {parts}")
    if saved != config:
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise BadValueError(
            f"{parts} holds samples made with other options ({', '.join(changed)} differ); "
            f"delete it or choose another --out"
        )
    done = finished_indices(parts)
    distributed.barrier(info)  # every rank has scanned before any rank adds a shard
    todo = np.ones(num_samples, dtype=bool)  # bounded: num_samples <= argtypes.MAX_SAMPLES
    todo[[i for i in done if i < num_samples]] = False
    missing = np.flatnonzero(todo)
    return missing[info.rank :: info.world_size].tolist(), len(missing)


def _vae_fingerprint(vae) -> dict:
    from udit.data.vae import vae_fingerprint

    return vae_fingerprint(vae)


def write_json(path: Path, obj) -> None:
    atomic_write_json(path, obj, sort_keys=True)


#################################################################################
#                                      CLI                                      #
#################################################################################


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="udit sample",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, help="training checkpoint or released state dict (.pt)"
    )
    p.add_argument(
        "--out", required=True, help="SAMPLES.npz (ADM format); shards go to SAMPLES.npz.parts/"
    )
    p.add_argument(
        "--model", help="registry name; default: the checkpoint's (required for raw state dicts)"
    )
    p.add_argument(
        "--model-kw",
        nargs="*",
        default=[],
        metavar="KEY=VAL",
        help="model constructor overrides; default: the checkpoint's (must match training)",
    )
    p.add_argument(
        "--num-samples",
        type=RANGES["num_samples"],
        default=RECIPE.fid_samples,
        help="FID-50K as the paper",
    )
    p.add_argument(
        "--seed",
        type=RANGES["seed"],
        default=RECIPE.sample_seed,
        help="sample i depends only on (seed, i)",
    )
    p.add_argument(
        "--cfg-scale",
        type=RANGES["cfg_scale"],
        default=RECIPE.cfg_scale,
        help="1.0: no guidance (the paper's T2); T4 uses 1.5",
    )
    p.add_argument(
        "--guidance-channels",
        default=str(RECIPE.guidance_channels),
        help="eps channels guided: 3 as DiT/U-DiT, or 'all'",
    )
    p.add_argument(
        "--steps",
        type=RANGES["steps"],
        default=RECIPE.sampling_steps,
        help="respaced sampling steps",
    )
    p.add_argument(
        "--sampler", choices=SAMPLERS, default="ddpm", help="ancestral DDPM as the paper, or DDIM"
    )
    p.add_argument("--eta", type=RANGES["eta"], default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument(
        "--labels",
        choices=LABEL_MODES,
        default="random",
        help="random: uniform draw per sample (DiT sample_ddp.py); uniform: i %% num_classes",
    )
    p.add_argument(
        "--weights",
        choices=("ema", "model"),
        default="ema",
        help="which weights of a training ckpt",
    )
    p.add_argument(
        "--vae", help="VAE hub id or local dir; default: the checkpoint's, else sd-vae-ft-ema"
    )
    p.add_argument("--pixel", action="store_true", default=None, help="pixel-space model: no VAE")
    p.add_argument(
        "--num-classes", type=RANGES["num_classes"], help="default: the checkpoint's, else 1000"
    )
    p.add_argument(
        "--image-size",
        type=RANGES["image_size"],
        help="pixels; default: the checkpoint's, else 256",
    )
    p.add_argument(
        "--batch-size",
        type=RANGES["batch_size"],
        default=32,
        help="samples per forward on each process",
    )
    p.add_argument("--grid", help="PNG of the first 64 samples; default: OUT with .png")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--keep-parts", action="store_true", help="keep OUT.parts/ after assembling OUT")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="tf32 as the official sample_ddp.py, bf16 autocast (a deviation) or strict fp32",
    )
    p.add_argument(
        "--pause-after-shard", type=argtypes.NONNEG, default=0.0, help=argparse.SUPPRESS
    )  # kill tests
    outputs.add_overwrite(p)
    add_dry_run(p)
    return p


@command_main("udit sample")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if dry_run(args):
        return 0
    kwargs = {**vars(args), "model_kw": parse_model_kw(args.model_kw)}
    kwargs.pop("dry_run")
    try:
        generate(**kwargs)
        mark_done()
    except (ValueError, KeyError) as err:
        if isinstance(err, UserError):
            raise
        # Kept from before the one error style: the option checks in this module still raise
        # plain ValueError, and get_spec KeyError; drop this once they raise BadValueError.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise UserError(str(message)) from err
    return 0


if __name__ == "__main__":
    sys.exit(main())
