"""Random but well-conditioned weights for the ERes2NetV2 speaker encoder, for tests and export."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gsv_models.sv import ERes2NetV2


def tiny_sv_kwargs() -> dict[str, Any]:
    """Constructor arguments of a small ERes2NetV2 that keeps every structural feature.

    Two blocks in stages 1 and 3 (so blocks with and without a projection shortcut occur, for
    both block kinds), four channel groups (three chained fusions), expansion 2 instead of 4;
    ``embed_dim`` is 8 · 8 · 2 · 10 = 1280.
    """
    return {
        "m_channels": 8,
        "num_blocks": (2, 1, 2, 1),
        "feat_dim": 80,
        "embedding_size": 16,
        "base_width": 24,
        "scale": 4,
        "expansion": 2,
    }


def _fbank_like(generator: torch.Generator, batch: int, frames: int, feat_dim: int) -> Tensor:
    """Random features with the rough range of speech log-mel fbank (about −15 … 5)."""
    base = torch.randn(batch, 1, feat_dim, generator=generator) * 2.0 - 6.0
    return base + 2.0 * torch.randn(batch, frames, feat_dim, generator=generator)


@torch.no_grad()
def randomize_sv_(model: ERes2NetV2, generator: torch.Generator) -> None:
    """Give ``model`` random weights whose activations stay O(1) through every block.

    Convolutions and the linear head get He-normal weights, biases small normals. BatchNorm
    affine parameters are drawn around (1, 0), and the running statistics are then set to the
    actual per-channel mean and variance that each BatchNorm sees on a batch of random
    fbank-like features (calibrated in forward order), so the whole network is normalised like a
    trained one: the embedding is finite, far from zero and changes with the input. The
    calibration pass runs in float64, so the statistics round to the same float32 values on any
    CPU (in float32 they followed the CPU's convolution kernels: an AMX Xeon wrote another file
    than the AVX-512 EPYC the recorded upstream outputs were made on).

    Args:
        model: The encoder to overwrite in place.
        generator: Source of all randomness (the result depends on nothing else).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.05, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.uniform_(0.6, 1.2, generator=generator)
            module.bias.normal_(0.0, 0.1, generator=generator)

    def calibrate(module: nn.BatchNorm2d, args: tuple[Tensor, ...]) -> None:
        x = args[0]  # (B, C, F, T)
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False) + 1e-3)
        module.num_batches_tracked.fill_(1)

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [bn.register_forward_pre_hook(calibrate) for bn in bns]
    model.double()  # float32 → float64 → float32 is exact for the weights
    try:
        model.embed(_fbank_like(generator, 2, 64, model.feat_dim).double())
    finally:
        for handle in handles:
            handle.remove()
        model.float()
