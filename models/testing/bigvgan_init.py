"""Non-degenerate random BigVGAN-v2 vocoders in upstream's on-disk form (tests, demos, benchmarks).

Scheme: variance-preserving normal conv weights (``gain / sqrt(fan_in)``, transposed convs by
their per-output fan-in), small random biases, residual branches (``convs2``) at a small gain so
that 3 pairs × 3 blocks × 6 stages neither explode nor vanish, and SnakeBeta log-α/log-β drawn
around 0 (α, β ≈ 1, as upstream initialises them, with spread so channels differ). Then, on a
fixed speech-like log-mel probe, ``conv_pre`` and every up-sampling conv are rescaled in order to
unit output RMS (the log-mel's large negative mean would otherwise saturate the first stage's
snakes), and ``conv_post`` is made DC-free (snakes feed it a positive mean) and scaled to an
output RMS of :data:`TARGET_OUTPUT_RMS`, far from the final clamp. Calibration factors are
rounded to two significant digits so that tiny float differences between machines do not change
the weights.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Final, Literal

import torch
from torch import nn

from gsv_models.bigvgan import (
    CONFIG_FILE,
    FULL_CONFIG,
    WEIGHTS_FILE,
    BigVGAN,
    BigVGANConfig,
    SnakeBeta,
    to_upstream_state,
)

Size = Literal["tiny", "full"]

TARGET_OUTPUT_RMS: Final = 0.15
"""RMS of the waveform on the probe; other mels land within a small factor, unclipped."""
BIAS_STD: Final = 0.05
LOG_SNAKE_STD: Final = 0.3
PROBE_FRAMES: Final = 16
_GAINS: Final[tuple[tuple[str, float], ...]] = ((r"^resblocks\.\d+\.convs2\.\d+$", 0.3),)


class _ProbeDoneError(Exception):
    """Raised by a probe hook once it has what it needs (skips the rest of the forward)."""


def tiny_bigvgan_config() -> BigVGANConfig:
    """The real 24 kHz / 100-band / 256× layout, with 128 instead of 1536 initial channels.

    Keeps every stage, kernel and dilation (so lengths, paddings and the receptive field are the
    real ones); widths run 64 → 2 instead of 768 → 24.
    """
    return replace(FULL_CONFIG, upsample_initial_channel=128)


def bigvgan_config(size: Size) -> BigVGANConfig:
    """Full (nvidia/bigvgan_v2_24khz_100band_256x) or tiny config."""
    return FULL_CONFIG if size == "full" else tiny_bigvgan_config()


def probe_mel(num_mels: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """Speech-like log-mel ``[1, num_mels, frames]``: a sloped spectrum around −6 that moves."""
    slope = torch.linspace(-2.0, -9.0, num_mels)[:, None]  # louder low bands
    envelope = 1.5 * torch.randn(1, frames, generator=generator)  # loudness per frame
    detail = 1.0 * torch.randn(num_mels, frames, generator=generator)
    return (slope + envelope + detail).clamp(-11.5, 2.0)[None]


def _round2(x: float) -> float:
    return float(f"{x:.2g}")


def _gain(name: str) -> float:
    for pattern, gain in _GAINS:
        if re.match(pattern, name):
            return gain
    return 1.0


def _init_module(name: str, module: nn.Module, gen: torch.Generator) -> None:
    if isinstance(module, nn.ConvTranspose1d):
        c_in, _, k = module.weight.shape
        fan_in = c_in * k / module.stride[0]  # taps that reach one output sample
    elif isinstance(module, nn.Conv1d):
        fan_in = module.weight[0].numel()
    elif isinstance(module, SnakeBeta):
        module.alpha.copy_(LOG_SNAKE_STD * torch.randn(module.alpha.shape, generator=gen))
        module.beta.copy_(LOG_SNAKE_STD * torch.randn(module.beta.shape, generator=gen))
        return
    else:
        return
    std = _gain(name) / math.sqrt(fan_in)
    module.weight.copy_(std * torch.randn(module.weight.shape, generator=gen))
    if module.bias is not None:
        module.bias.copy_(BIAS_STD * torch.randn(module.bias.shape, generator=gen))


def _input_of(model: BigVGAN, module: nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """What ``module`` receives when the model runs on ``mel`` (the forward stops there)."""
    captured: list[torch.Tensor] = []

    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])
        raise _ProbeDoneError

    handle = module.register_forward_pre_hook(hook)
    try:
        model(mel)
    except _ProbeDoneError:
        pass
    finally:
        handle.remove()
    return captured[0]


def _calibrate(model: BigVGAN, mel: torch.Tensor) -> None:
    # stage by stage, so each conv is rescaled on what its calibrated predecessors feed it
    for conv in [model.conv_pre, *(up[0] for up in model.ups)]:
        out = conv(_input_of(model, conv, mel))
        if conv is model.conv_pre:  # the probe's per-band offsets would dominate: centre
            conv.bias.sub_(torch.tensor([_round2(float(m)) for m in out.mean(dim=(0, 2))]))
            out = conv(_input_of(model, conv, mel))
        scale = _round2(1.0 / float(out.pow(2).mean().sqrt()))
        conv.weight.mul_(scale)
        conv.bias.mul_(scale)
    post = model.conv_post
    x = _input_of(model, post, mel)  # (1, C, S)
    means = torch.tensor([_round2(float(v)) for v in x.mean(dim=(0, 2))])  # (C,)
    taps = post.weight.shape[-1]
    dc_gain = float(post.weight[0].sum(-1) @ means)  # output DC per unit of channel means
    post.weight[0].sub_(_round2(dc_gain / max(float(means @ means), 1e-12)) * means[:, None] / taps)
    if post.bias is not None:
        post.bias.zero_()
    out = post(x)
    post.weight.mul_(_round2(TARGET_OUTPUT_RMS / float(out.pow(2).mean().sqrt())))


@torch.no_grad()
def randomize_bigvgan_(model: BigVGAN, generator: torch.Generator) -> None:
    """Fill every parameter of ``model`` from ``generator`` and calibrate it, in place.

    The anti-alias filters are left as designed. Deterministic for a given generator state;
    works for full and tiny configs.
    """
    for name, module in model.named_modules():
        _init_module(name, module, generator)
    model.eval()
    _calibrate(model, probe_mel(model.cfg.num_mels, PROBE_FRAMES, generator))


def random_bigvgan(cfg: BigVGANConfig, seed: int) -> BigVGAN:
    """A BigVGAN with non-degenerate random weights, eval mode."""
    model = BigVGAN(cfg)
    randomize_bigvgan_(model, torch.Generator().manual_seed(seed))
    return model.eval()


def save_bigvgan_dir(model: BigVGAN, out_dir: str | Path, weight_norm: bool = True) -> Path:
    """Write ``config.json`` + ``bigvgan_generator.pt`` as upstream's ``_save_pretrained`` does.

    Args:
        model: the network to save.
        out_dir: the folder (created if needed).
        weight_norm: store ``weight_g``/``weight_v`` pairs (the published form); False stores
            the folded weights, which upstream's ``from_pretrained`` also accepts.

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = to_upstream_state(model) if weight_norm else model.state_dict()
    state = {k: v.contiguous() for k, v in state.items()}
    torch.save({"generator": state}, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=4), encoding="utf-8")
    return out


def make_bigvgan_dir(
    out_dir: str | Path, size: Size = "tiny", seed: int = 0, weight_norm: bool = True
) -> Path:
    """A random BigVGAN model folder in upstream's format; returns ``out_dir``."""
    return save_bigvgan_dir(random_bigvgan(bigvgan_config(size), seed), out_dir, weight_norm)
