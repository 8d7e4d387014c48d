"""Everything that makes a training run step-exact and independent of the GPU count.

- Data order: one seeded permutation per epoch (like DistributedSampler.set_epoch), cut
  into global batches; rank r takes a contiguous slice of each global batch. The data
  position is therefore a pure function of the step: (epoch, batch index in epoch).
- Per-sample randomness (edm2 idea): the diffusion noise, the timestep, the latent sample
  drawn from the cached VAE moments and the label-dropout coins of sample g of step s come
  from a generator seeded by (seed, s, g), g = position in the GLOBAL batch. The global
  batch is split over ranks and DDP averages gradients, so 1 GPU with batch B and W GPUs
  with B/W each compute the same update (to float rounding), and resuming at step s
  replays exactly what an uninterrupted run would have drawn.
- Label dropout stays inside the model's LabelEmbedder: a forward pre-hook hands it a
  drop mask (force_drop) drawn from the per-sample generators. Each embedder draws its
  own coin, as the official U-DiT's three embedders each call torch.rand.
- RNG states of torch / cuda / numpy / python for the checkpoint, stored as tensors and
  lists so torch.load(weights_only=True) reads them.
"""

import random
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from udit.diffusion.noise import seeded_generator
from udit.errors import BadValueError
from udit.models.embed import LabelEmbedder

#################################################################################
#                                   Data order                                  #
#################################################################################


@dataclass(frozen=True)
class DataOrder:
    num_items: int  # dataset length
    global_batch: int  # samples per optimiser step over all ranks
    world_size: int
    rank: int
    seed: int

    def __post_init__(self):
        if self.global_batch % self.world_size:
            raise BadValueError(
                f"global batch {self.global_batch} is not divisible by world size "
                f"{self.world_size}: the global batch is fixed, so each rank needs an equal share"
            )
        if self.num_items < self.global_batch:
            raise BadValueError(
                f"dataset has {self.num_items} items, fewer than one global batch "
                f"({self.global_batch}); lower --global-batch"
            )

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // self.global_batch  # drop_last, as DiT's DataLoader

    def position(self, step: int) -> dict:
        """Data position before optimiser step `step` (0-based): what the checkpoint stores."""
        epoch, index = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "index": index, "batches_per_epoch": self.batches_per_epoch}

    def state(self, step: int) -> dict:
        """Position plus what it depends on: a resumed run checks it sees the same data."""
        return {
            **self.position(step),
            "seed": self.seed,
            "num_items": self.num_items,
            "global_batch": self.global_batch,
        }

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + epoch)  # DistributedSampler: seed + epoch
        return torch.randperm(self.num_items, generator=gen)

    def local_indices(self, step: int, perm: torch.Tensor | None = None) -> list[int]:
        pos = self.position(step)
        perm = self.permutation(pos["epoch"]) if perm is None else perm
        start = pos["index"] * self.global_batch + self.rank * self.local_batch
        return perm[start : start + self.local_batch].tolist()

    def global_offset(self) -> int:
        """Position in the global batch of this rank's first sample."""
        return self.rank * self.local_batch


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's index list for steps start..stop-1 (a DataLoader batch_sampler)."""

    def __init__(self, order: DataOrder, start: int, stop: int):
        self.order, self.start, self.stop = order, start, stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.stop):
            e = self.order.position(step)["epoch"]
            if e != epoch:  # one permutation per epoch, computed once
                epoch, perm = e, self.order.permutation(e)
            yield self.order.local_indices(step, perm)


#################################################################################
#                             Per-sample randomness                             #
#################################################################################


@dataclass
class SampleDraws:
    noise: torch.Tensor  # (N, C, H, W) diffusion noise
    t: torch.Tensor  # (N,) int64 timesteps, uniform in [0, T)
    latent_noise: torch.Tensor | None  # (N, C, H, W) noise for sampling z from the VAE moments
    label_drop: torch.Tensor  # (N, K) bool, one coin per label embedder
    flip: torch.Tensor  # (N,) bool, horizontal flip of image inputs

    def to(self, device: torch.device) -> "SampleDraws":
        """All draws on `device`; on CUDA through pinned memory without waiting for the GPU (a
        plain .to(cuda) from pageable memory synchronises the host with the GPU every step)."""
        if device.type != "cuda":
            return self

        def move(x):
            return None if x is None else x.pin_memory().to(device, non_blocking=True)

        return SampleDraws(*(move(getattr(self, f.name)) for f in fields(self)))


def draw_samples(
    *,
    seed: int,
    step: int,
    offset: int,
    count: int,
    shape: tuple[int, ...],
    num_timesteps: int,
    num_embedders: int,
    drop_prob: float,
    latent: bool,
    flip_prob: float,
) -> SampleDraws:
    """Draws for global samples offset..offset+count-1 of `step`, in a fixed order per sample."""
    noise, ts, lat, drops, flips = [], [], [], [], []
    for g in range(offset, offset + count):
        gen = seeded_generator(seed, step, g)
        noise.append(torch.randn(shape, generator=gen))
        ts.append(torch.randint(0, num_timesteps, (1,), generator=gen))
        lat.append(torch.randn(shape, generator=gen) if latent else None)
        drops.append(torch.rand(num_embedders, generator=gen) < drop_prob)
        flips.append(torch.rand(1, generator=gen) < flip_prob)
    return SampleDraws(
        noise=torch.stack(noise),
        t=torch.cat(ts),
        latent_noise=torch.stack(lat) if latent else None,
        label_drop=torch.stack(drops) if num_embedders else torch.zeros(count, 0, dtype=torch.bool),
        flip=torch.cat(flips),
    )


class LabelDropControl:
    """Forward pre-hooks that pass a trainer-drawn force_drop mask to every LabelEmbedder.

    Only active in training mode; eval (EMA, sampling) keeps the embedder's own behaviour."""

    def __init__(self, model: nn.Module):
        self.embedders = [
            m for m in model.modules() if isinstance(m, LabelEmbedder) and m.dropout > 0
        ]
        probs = {m.dropout for m in self.embedders}
        if len(probs) > 1:
            raise ValueError(f"label embedders disagree on dropout probability: {sorted(probs)}")
        self.drop_prob = probs.pop() if probs else 0.0
        # A model may drop the same labels in every embedder (U-shaped `shared_label_drop`):
        # then one coin per sample serves them all.
        self.shared = bool(getattr(model, "shared_label_drop", False))
        self.masks: torch.Tensor | None = None  # (N, K) bool, set before each forward
        self.handles = [
            m.register_forward_pre_hook(self._hook(0 if self.shared else k), with_kwargs=True)
            for k, m in enumerate(self.embedders)
        ]

    def __len__(self) -> int:
        return 1 if self.shared and self.embedders else len(self.embedders)

    def _hook(self, k: int):
        def hook(module, args, kwargs):
            # In training force_drop only ever carries the dropout coins (guidance is eval-only),
            # so the trainer's per-sample mask replaces whatever the model drew itself.
            if not (module.training and self.masks is not None):
                return args, kwargs
            mask = self.masks[:, k]
            if len(args) >= 2:  # forward(y, force_drop) called positionally
                return (args[0], mask, *args[2:]), kwargs
            return args, {**kwargs, "force_drop": mask}

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


#################################################################################
#                                   RNG states                                  #
#################################################################################


def capture_rng() -> dict:
    """Global RNG states as tensors / lists (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
