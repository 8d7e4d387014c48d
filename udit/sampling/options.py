"""SampleOptions: every option of `udit sample` as one typed object (edm2's one options object).

The model options (MODEL_FIELDS) belong to the checkpoint: a training checkpoint records them in
its "args", as nanoGPT's checkpoint carries `model_args`, and sampling reads them from there. The
fields of the same names below are for a raw state dict (a released DiT-XL-2-256x256.pt), which
records none; given with a training checkpoint, each must equal what it records
(udit.sampling.checkpoint.resolve_options).
"""

from dataclasses import dataclass
from pathlib import Path

from udit import argtypes
from udit.errors import BadValueError
from udit.paper import recipe
from udit.precision import DEFAULT_PRECISION, check_precision

RECIPE = recipe()  # the paper's defaults (udit/paper/paper_numbers.yaml)
SAMPLERS = ("ddpm", "ddim")
LABEL_MODES = ("random", "uniform")
WEIGHTS = ("ema", "model")  # which weights of a training checkpoint
# What a training checkpoint's "args" records of its model (udit/training/loop.py TrainOptions):
# the weights only fit the architecture they were trained with
MODEL_FIELDS = ("model", "model_kw", "num_classes", "image_size", "pixel", "vae")
# The range of every numeric option, for the CLI's argparse types and SampleOptions.validate
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


@dataclass(frozen=True)
class SampleOptions:
    checkpoint: str  # training checkpoint or released state dict (.pt)
    out: str  # SAMPLES.npz (ADM format); shards go to SAMPLES.npz.parts/
    num_samples: int = RECIPE.fid_samples  # FID-50K as the paper
    seed: int = RECIPE.sample_seed  # sample i depends only on (seed, i)
    cfg_scale: float = RECIPE.cfg_scale  # 1.0: no guidance (the paper's T2); T4 uses 1.5
    guidance_channels: int | str = RECIPE.guidance_channels  # eps channels guided: 3, or 'all'
    steps: int = RECIPE.sampling_steps  # respaced steps: 250 as the paper
    sampler: str = "ddpm"  # ancestral DDPM as the paper, or DDIM
    eta: float = 0.0  # DDIM eta (0: deterministic); DDPM ignores it
    weights: str = "ema"  # which weights of a training checkpoint
    labels: str = "random"  # random: a uniform draw per sample; uniform: i % num_classes
    batch_size: int = 32  # samples per forward on each process: the samples do not depend on it
    grid: str | None = None  # PNG of the first 64 samples; None: OUT with .png
    device: str = "auto"  # udit.cli.add_device: auto (cuda when available), cpu, cuda[:N]
    keep_parts: bool = False  # keep OUT.parts/ after assembling OUT
    precision: str = DEFAULT_PRECISION  # tf32 as the official sample_ddp.py; bf16; fp32
    pause_after_shard: float = 0.0  # seconds to sleep after each shard (kill tests)
    overwrite: bool = False  # replace a finished OUT made with other options
    # MODEL_FIELDS of a raw state dict; a training checkpoint's own values win (see above)
    model: str | None = None  # registry name or slug
    model_kw: dict | None = None  # constructor overrides
    num_classes: int | None = None  # None: the checkpoint's, else 1000
    image_size: int | None = None  # pixels; None: the checkpoint's, else 256
    pixel: bool | None = None  # pixel-space model: no VAE
    vae: str | None = None  # hub id or local folder (may differ from the recorded name)

    def __post_init__(self):
        # "3" as the CLI passes it -> 3; any other text but 'all' is refused by validate()
        if isinstance(self.guidance_channels, str) and self.guidance_channels.isdigit():
            object.__setattr__(self, "guidance_channels", int(self.guidance_channels))

    @property
    def grid_path(self) -> Path:
        return Path(self.grid) if self.grid else Path(self.out).with_suffix(".png")

    @property
    def summary_path(self) -> Path:
        """OUT.json: the summary of a finished OUT, written last (its presence marks one)."""
        return Path(str(self.out) + ".json")

    def given_model(self) -> dict:
        """The MODEL_FIELDS given here (None: not given)."""
        return {key: getattr(self, key) for key in MODEL_FIELDS}

    def validate(self) -> None:
        """Refuse a value out of range, and a checkpoint or output path that cannot be one,
        before anything is loaded or written."""
        for name, allowed in RANGES.items():
            value = getattr(self, name)
            why = None if value is None else allowed.check(value)
            if why:
                raise BadValueError(f"--{name.replace('_', '-')} {why}")
        if self.sampler not in SAMPLERS:
            raise BadValueError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLERS}")
        if self.labels not in LABEL_MODES:
            raise BadValueError(f"unknown label mode {self.labels!r}; choose one of {LABEL_MODES}")
        if self.weights not in WEIGHTS:
            raise BadValueError(f"--weights must be 'ema' or 'model', got {self.weights!r}")
        if not Path(self.checkpoint).exists():
            raise FileNotFoundError(f"checkpoint not found: {self.checkpoint}")
        if not Path(self.checkpoint).is_file():
            raise BadValueError(
                f"--checkpoint {self.checkpoint} is not a regular file (a folder, pipe or "
                f"device); give a checkpoint file, e.g. RUN/checkpoints/ckpt-0400000.pt"
            )
        if Path(self.out).suffix != ".npz":
            raise BadValueError(
                f"--out must end in .npz (the ADM evaluator's format), got {self.out}"
            )
        channels = self.guidance_channels
        if channels != "all" and (type(channels) is not int or channels < 1):
            raise BadValueError(
                f"--guidance-channels must be a positive integer or 'all', got {channels!r}"
            )
        check_precision(self.precision)

    def config(self, *, checkpoint_sha256: str, model: dict, vae_fingerprint) -> dict:
        """Everything a sample depends on: OUT.parts/ never mixes shards of two configs. The
        batch size, the device and the number of processes do not count."""
        return {
            "checkpoint_sha256": checkpoint_sha256,
            "weights": self.weights,
            **model,  # MODEL_FIELDS as resolved from the checkpoint
            "vae_fingerprint": vae_fingerprint,
            "seed": self.seed,
            "cfg_scale": float(self.cfg_scale),
            "guidance_channels": self.guidance_channels,
            "steps": self.steps,
            "sampler": self.sampler,
            "eta": float(self.eta) if self.sampler == "ddim" else None,
            "labels": self.labels,
            "clip_denoised": False,
            "precision": self.precision,  # tf32/bf16 change the numbers: shards never mix them
        }
