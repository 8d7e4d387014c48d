"""Where every DAG output lives: one scheme for the Snakefile, the trainer and the report.

    {results}/flops/flops.json                                    udit flops
    {results}/speed/speed.json                                    benchmarks/speed.py --json
    {results}/{experiment}/train/checkpoints/ckpt-{step}.pt       udit train (step: 7 digits)
    {results}/{experiment}/train/log.jsonl                        udit train
    {results}/{experiment}/samples/{tag}.npz | .png               udit sample
    {results}/{experiment}/metrics/{tag}.json                     udit evaluate
    {results}/{experiment}/export/{step}/                         udit export
    {results}/data/{dataset}/images/ | latents/ | reference.npz   toy-data, extract-latents,
                                                                  build-reference
    {results}/data/tiny-vae/, {results}/inception/standin.pth     tiny-vae, standin Inception

`{tag}` is an evaluation tag: `{step}-cfg{cfg}` ('0400000-cfg1.5'; 'released-cfg1.5' for an
official checkpoint), and `{step}-cfg{cfg}-seed{n}` for the extra sampling seeds of the
generation lottery (`sample_seeds: K`: the first seed keeps the plain tag). Every function
returns a plain string so the Snakefile can pass wildcard placeholders through:
`samples(R, "{experiment}", "{tag}")`.
"""

import re

STEP_DIGITS = 7  # zero-padded like the official repos' 0400000.pt, so names sort by step
RELEASED_STEP = "released"  # step tag of an official checkpoint (no training node)
CKPT_DIR = "checkpoints"
CKPT_PATTERN = re.compile(rf"^ckpt-(\d{{{STEP_DIGITS},}})\.pt$")
TRAIN_LOG = "log.jsonl"  # one JSON object per logged step


def step_tag(step: int | str) -> str:
    """400000 -> '0400000'; a string (a wildcard such as '{step}', or 'released') passes through."""
    return step if isinstance(step, str) else f"{int(step):0{STEP_DIGITS}d}"


def cfg_tag(cfg: float) -> str:
    """One spelling per guidance scale: 1 -> '1.0', 1.5 -> '1.5'."""
    return str(float(cfg))


# A step tag and an evaluation tag, for the Snakefile's {step} / {tag} wildcards and parse_eval_tag
STEP_TAG = rf"\d{{{STEP_DIGITS}}}|{RELEASED_STEP}"
EVAL_TAG = rf"({STEP_TAG})-cfg(\d+\.\d+)(?:-seed(\d+))?"


def eval_tag(step: int | str, cfg: float, sample_seed: int | None = None) -> str:
    """'0400000-cfg1.5': the file stem of one evaluation node's samples and metrics;
    '0400000-cfg1.5-seed2' for an extra sampling seed of the same checkpoint and scale."""
    extra = "" if sample_seed is None else f"-seed{int(sample_seed)}"
    return f"{step_tag(step)}-cfg{cfg_tag(cfg)}{extra}"


def parse_eval_tag(tag: str) -> tuple[str, float, int | None]:
    """'0400000-cfg1.5' -> ('0400000', 1.5, None); '0400000-cfg1.5-seed2' -> (..., 2)."""
    match = re.fullmatch(EVAL_TAG, tag)
    if not match:
        raise ValueError(f"not an evaluation tag: {tag!r}")
    seed = match.group(3)
    return match.group(1), float(match.group(2)), None if seed is None else int(seed)


def replicate(experiment: str, seed: int) -> str:
    """'u-dit-t', 7 -> 'u-dit-t-seed7': the id of an experiment's replicate trained with `seed`
    (its first replicate keeps the plain id), so every replicate has its own run folder."""
    return f"{experiment}-seed{seed}"


def checkpoint_name(step: int | str) -> str:
    return f"ckpt-{step_tag(step)}.pt"


def train_dir(results, experiment: str) -> str:
    """The run folder `udit train --run-dir` writes (checkpoints, log, options)."""
    return f"{results}/{experiment}/train"


def checkpoint(results, experiment: str, step: int | str) -> str:
    return f"{train_dir(results, experiment)}/{CKPT_DIR}/{checkpoint_name(step)}"


def train_log(results, experiment: str) -> str:
    return f"{train_dir(results, experiment)}/{TRAIN_LOG}"


def samples(results, experiment: str, tag: str) -> str:
    return f"{results}/{experiment}/samples/{tag}.npz"


def grid(results, experiment: str, tag: str) -> str:
    return f"{results}/{experiment}/samples/{tag}.png"


def metrics(results, experiment: str, tag: str) -> str:
    return f"{results}/{experiment}/metrics/{tag}.json"


def flops(results) -> str:
    return f"{results}/flops/flops.json"


def speed(results) -> str:
    """Training/sampling speed measurement (benchmarks/speed.py --json): the report's Table 11."""
    return f"{results}/speed/speed.json"


# --- data stage ------------------------------------------------------------------------------
def data_images(results, dataset: str) -> str:
    """A toy dataset's generated ImageFolder (`udit toy-data`)."""
    return f"{results}/data/{dataset}/images"


def latents_manifest(results, dataset: str) -> str:
    """The manifest of a dataset's latent cache (`udit extract-latents`), shared by its runs."""
    return f"{results}/data/{dataset}/latents/manifest.json"


def reference(results, dataset: str) -> str:
    """A dataset's reference statistics (`udit build-reference`) when the config names none."""
    return f"{results}/data/{dataset}/reference.npz"


def tiny_vae(results) -> str:
    """The random-init AutoencoderKL of toy runs (`udit tiny-vae`)."""
    return f"{results}/data/tiny-vae"


def standin_inception(results) -> str:
    """The seeded random-weight Inception of offline runs (`udit make-standin-inception`)."""
    return f"{results}/inception/standin.pth"


def export(results, experiment: str, step: int | str) -> str:
    """The diffusers DiTPipeline folder of one milestone (`udit export`)."""
    return f"{results}/{experiment}/export/{step_tag(step)}"
