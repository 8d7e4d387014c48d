"""Every number the paper reports: udit/paper/paper_numbers.yaml, read in one place.

paper_numbers()["main_400k_T2"]["U-DiT-B"]   # a table row, columns as in the file's header
recipe().fid_samples                         # 50000: the defaults every config and CLI use
"""

from dataclasses import dataclass, fields
from functools import cache
from importlib import resources

import yaml


@cache
def paper_numbers() -> dict:
    """The whole of paper_numbers.yaml (tables keyed as in the file; see its header)."""
    return yaml.safe_load(resources.files("udit.paper").joinpath("paper_numbers.yaml").read_text())


def training_settings() -> dict:
    """paper_numbers.yaml `training_settings`: the recipe of paper section 4 + official code."""
    return paper_numbers()["training_settings"]


@dataclass(frozen=True)
class Recipe:
    """The numbers the paper or the official code fixes, typed: the one source of the defaults
    of the config (udit.experiments), `udit train`, `udit sample` and the diffusion."""

    lr: float  # AdamW, constant, no warm-up
    weight_decay: float
    global_batch: int  # over all GPUs
    ema_decay: float
    global_seed: int  # training; per-rank seed = seed * world_size + rank
    vae: str
    latent_scale: float  # latents = VAE sample * latent_scale
    class_dropout: float  # label dropout for classifier-free guidance
    diffusion_steps: int  # T
    sampling_steps: int  # respaced DDPM steps for FID
    fid_samples: int
    sample_seed: int
    ckpt_every: int
    log_every: int  # training-log lines
    cfg_scale: float
    guidance_channels: int
    num_classes: int
    image_size: int  # pixels


@cache
def recipe() -> Recipe:
    settings = training_settings()
    return Recipe(**{f.name: f.type(settings[f.name]) for f in fields(Recipe)})
