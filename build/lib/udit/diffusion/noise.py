"""Gaussian noise that depends only on the generator it is drawn from.

Samplers seed one torch.Generator per sample index (edm2 style): with a list of generators, row i
of every draw comes from generators[i] alone, so a sample is the same whatever batch, rank or
device count produced it. Draws happen on the generator's device and are then moved, so a CPU
generator gives the same numbers for a CPU or a GPU run.
"""

from collections.abc import Sequence

import numpy as np
import torch

Generators = torch.Generator | Sequence[torch.Generator] | None
SEED_WORDS = 2  # uint32 words drawn from SeedSequence -> one 64-bit generator seed


def seeded_generator(*words: int) -> torch.Generator:
    """CPU generator owned by one (seed, ...) tuple, e.g. (seed, step, index) in training or
    (seed, index, stream) in sampling; SeedSequence mixes the words so neighbouring tuples give
    unrelated streams."""
    state = np.random.SeedSequence(list(words)).generate_state(SEED_WORDS, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def randn(
    shape: Sequence[int],
    *,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal tensor of `shape`; generator: None (global RNG), one, or one per row."""
    shape = tuple(int(s) for s in shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(
            device
        )
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of {shape[0]}; "
            f"pass one generator per sample"
        )
    rows = [
        torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(device)
        for g in generators
    ]
    return torch.cat(rows, dim=0)
