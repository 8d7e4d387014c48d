"""Batches of samples as a generator over the pure sampler (edm2 generate_images: the caller
iterates and decides what each batch becomes; here, a shard of OUT.parts/)."""

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from udit.diffusion import create_diffusion
from udit.sampling.options import SampleOptions
from udit.sampling.sampler import sample_batch

# indices -> (images (B, H, W, 3) uint8, labels (B,) int64): sample_batch with the rest bound
Draw = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Batch:
    indices: list[int]  # sample indices, in the order given
    images: np.ndarray  # (B, H, W, 3) uint8
    labels: np.ndarray  # (B,) int64


def bind_sampler(
    opts: SampleOptions,
    *,
    model,
    vae,
    shape: tuple[int, int, int],
    num_classes: int,
    device: torch.device,
) -> Draw:
    """sample_batch with everything but the indices bound: a batch's samples as a function of
    its indices alone."""
    return functools.partial(
        sample_batch,
        model=model,
        diffusion=create_diffusion(str(opts.steps)),
        vae=vae,
        seed=opts.seed,
        num_classes=num_classes,
        labels=opts.labels,
        cfg_scale=opts.cfg_scale,
        guidance_channels=opts.guidance_channels,
        sampler=opts.sampler,
        eta=opts.eta,
        shape=shape,
        device=device,
    )


def batches(draw: Draw, indices: list[int], batch_size: int) -> Iterator[Batch]:
    """`indices` in consecutive chunks of at most `batch_size`, each drawn by `draw`. Sample i
    depends only on (seed, i), so what a sample looks like does not depend on `batch_size`."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        images, labels = draw(indices=chunk)
        yield Batch(indices=chunk, images=images, labels=labels)
