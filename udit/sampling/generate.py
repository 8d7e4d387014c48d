"""generate(): one `udit sample` run, in its phases (DiT sample_ddp.py's order, resumable):

setup     check the options and output paths, start the processes, lock OUT
resolve   the checkpoint (sidecar, safe load), its model options, the VAE, the shard config
claim     the indices no shard holds yet, dealt out over the ranks
loop      this rank's batches, each written as a shard as soon as it is drawn
assemble  rank 0: shards -> OUT (arr_0, arr_1), the grid PNG and OUT.json
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from udit import distributed, outputs
from udit.errors import BadValueError
from udit.io import check_free_space, read_json
from udit.precision import set_precision
from udit.sampling import shards
from udit.sampling.batches import Draw, batches, bind_sampler
from udit.sampling.checkpoint import (
    build_model,
    checkpoint_options,
    checkpoint_sha256,
    load_space,
    read_sampling_checkpoint,
    resolve_options,
    vae_fingerprint,
)
from udit.sampling.options import SampleOptions
from udit.sampling.sampler import AutocastForward, NonFiniteSamplesError
from udit.stop import StopFlag, StoppedEarly

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Resolved:
    """What the checkpoint and the options resolve to, before any sample is drawn."""

    model: dict  # MODEL_FIELDS, the checkpoint's (udit.sampling.checkpoint.resolve_options)
    vae: torch.nn.Module | None  # the decoder of latent-space models
    shape: tuple[int, int, int]  # (C, h, w) of one sample as the model draws it
    config: dict  # everything a sample depends on (SampleOptions.config)


def generate(opts: SampleOptions) -> dict:
    """Write opts.out (.npz), its grid PNG and OUT.json; -> the summary written to OUT.json."""
    _check_paths(opts)  # setup: nothing is loaded, locked or written before this passes
    out = Path(opts.out)
    info = distributed.setup(opts.device)
    try:
        with distributed.rank0_lock(out, info, flag="--out"):
            autocast = set_precision(opts.precision, info.device)  # TF32 as sample_ddp.py
            state, run = resolve(opts, info.device)  # resolve: the checkpoint decides the model
            summary = {"out": out.name, "num_samples": opts.num_samples, "config": run.config}
            if _finished(opts, summary, info):
                return read_json(opts.summary_path, what="sample summary")
            _make_room(opts, run)
            parts = shards.parts_dir(out)
            mine, total = shards.claim(  # claim: what no shard holds, dealt over the ranks
                parts=parts,
                config=run.config,
                num_samples=opts.num_samples,
                info=info,
                fresh=opts.overwrite,
            )
            draw = _sampler(state, run, opts, info.device, autocast)
            del state  # the other weights and the optimiser: not needed while sampling
            _write_shards(opts, draw, mine=mine, total=total, parts=parts, info=info)  # loop
            distributed.barrier(info)
            if info.is_main:  # assemble: shards -> OUT, grid, OUT.json
                _assemble(opts, parts, summary)
            distributed.barrier(info)
            return summary
    finally:
        distributed.cleanup(info)


def _check_paths(opts: SampleOptions) -> None:
    """The options in range; the checkpoint (and a local --vae) never among the outputs."""
    opts.validate()
    vae = opts.vae if opts.vae and Path(opts.vae).exists() else None
    outputs.check(
        inputs={"--checkpoint": Path(opts.checkpoint), "--vae": vae},
        outputs={
            "--out": Path(opts.out),
            "--grid": opts.grid_path,
            "--out's summary": opts.summary_path,
        },
    )


def resolve(opts: SampleOptions, device: torch.device) -> tuple[dict, Resolved]:
    """(the checkpoint as loaded, what it resolves to). The file is hashed and checked against
    its sidecar before anything in it is unpickled, built or sampled."""
    sha256 = checkpoint_sha256(Path(opts.checkpoint))
    state = read_sampling_checkpoint(Path(opts.checkpoint), weights=opts.weights)
    model = resolve_options(given=opts.given_model(), stored=checkpoint_options(state))
    vae, shape = load_space(model, device=device)
    channels = opts.guidance_channels
    if opts.cfg_scale != 1.0 and channels != "all" and channels > shape[0]:
        raise BadValueError(
            f"--guidance-channels {channels} exceeds the {shape[0]} eps channels of "
            f"{model['model']} here; guide at most {shape[0]}, or 'all'"
        )
    config = opts.config(
        checkpoint_sha256=sha256, model=model, vae_fingerprint=vae_fingerprint(vae)
    )
    return state, Resolved(model=model, vae=vae, shape=shape, config=config)


def _finished(opts: SampleOptions, summary: dict, info) -> bool:
    """Whether OUT is a finished result of these options already (then there is nothing to
    do); a finished result of other options is refused unless --overwrite."""
    out = Path(opts.out)
    done = outputs.replace_result(
        out, flag="--out", options=summary, recorded=_recorded_summary, overwrite=opts.overwrite
    )
    if done and info.is_main:
        print(
            f"{out} already holds these {opts.num_samples} samples; nothing to do", file=sys.stderr
        )
    return done


def _make_room(opts: SampleOptions, run: Resolved) -> None:
    """The grid is ours to replace only if it is a PNG (the default out.png of an earlier run);
    the finished npz plus its shards (at most twice its bytes) must fit before any work."""
    outputs.replace_result(
        opts.grid_path,
        flag="--grid",
        options={"png": True},
        recorded=_recorded_png,
        overwrite=opts.overwrite,
    )
    per_image = 3 * run.model["image_size"] ** 2
    check_free_space(
        Path(opts.out).parent, 2 * opts.num_samples * per_image, what=f"{opts.num_samples} samples"
    )


def _sampler(state, run: Resolved, opts: SampleOptions, device: torch.device, autocast) -> Draw:
    """The model with the checkpoint's weights, bound to sample_batch with the options. Under
    bf16 the network alone runs in bf16 (guidance, sampler and VAE stay fp32)."""
    net = build_model(
        checkpoint=state,
        options=run.model,
        in_channels=run.shape[0],
        input_size=run.shape[-1],
        weights=opts.weights,
        device=device,
    )
    if opts.precision == "bf16":
        net = AutocastForward(net, autocast)
    return bind_sampler(
        opts,
        model=net,
        vae=run.vae,
        shape=run.shape,
        num_classes=run.model["num_classes"],
        device=device,
    )


def _write_shards(opts: SampleOptions, draw: Draw, *, mine: list, total: int, parts, info):
    """The loop: this rank's indices batch by batch, each batch a shard once drawn. SIGUSR1 /
    SIGTERM: the shard in flight is finished, then the run exits EXIT_STOPPED (a re-run
    resumes); shards are per rank, so each rank stops on its own, no agreement needed."""
    bar = tqdm(total=total, disable=not info.is_main, desc="sampling", unit="img", file=sys.stderr)
    done = 0
    with StopFlag() as flag:
        try:
            for batch in batches(draw, mine, opts.batch_size):
                shards.write_shard(parts, batch)
                done += len(batch.indices)
                bar.update(len(batch.indices) * info.world_size)  # rank 0 speaks for all ranks
                time.sleep(opts.pause_after_shard)  # lets kill tests stop a run between shards
                if flag.signal is not None and done < len(mine):
                    raise StoppedEarly(
                        f"{flag.name}: stopped after {done} of this rank's {len(mine)} samples "
                        f"(shards in {parts}); run the same command again to make the rest"
                    )
        except NonFiniteSamplesError as err:  # nothing of this batch was written
            raise NonFiniteSamplesError(
                f"sampling {Path(opts.checkpoint)} ({opts.weights} weights, cfg scale "
                f"{opts.cfg_scale}): {err}; the weights or the VAE are unusable, no image was "
                f"written"
            ) from None
    bar.close()


def _assemble(opts: SampleOptions, parts: Path, summary: dict) -> None:
    shards.write_outputs(
        parts=parts,
        out=Path(opts.out),
        grid=opts.grid_path,
        summary=summary,
        num_samples=opts.num_samples,
        keep_parts=opts.keep_parts,
    )


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
