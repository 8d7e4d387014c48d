"""EMA of the weights (DiT recipe): an exact copy at start, then after each optimiser step
ema = decay * ema + (1 - decay) * model, decay 0.9999 (udit.paper.recipe)."""

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """Exact copy of the model, frozen and in eval mode (DiT: update_ema(decay=0))."""
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model over parameters; buffers are copied.

    Multi-tensor ops (one kernel launch per op for all tensors on CUDA, instead of two per
    parameter); the same mul-then-add as the per-parameter loop, so the same numbers (not lerp,
    which rounds differently)."""
    ema_params, params = _paired(ema.named_parameters(), model.named_parameters())
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, [p.detach() for p in params], alpha=1 - decay)
    ema_buffers, buffers = _paired(ema.named_buffers(), model.named_buffers())
    if ema_buffers:
        torch._foreach_copy_(ema_buffers, buffers)


def _paired(ema_named, model_named) -> tuple[list, list]:
    """Tensors of the EMA copy and the model, matched by name (same order after deepcopy)."""
    ema_named = dict(ema_named)
    pairs = [(ema_named[name], t) for name, t in model_named]
    return [e for e, _ in pairs], [t for _, t in pairs]
