"""Non-degenerate random weights and tiny configs for the SoVITS synthesizer (tests, demos).

Scheme: variance-preserving normal weights (``gain / sqrt(fan_in)``, transposed convs by their
per-output fan-in), small random biases, role-specific gains where a plain init would make the
network degenerate (residual branches of the HiFiGAN blocks, the flow's mean nets, the prior's
log-std), a codebook of equal-norm random directions (so nearest-code search spreads over the
whole codebook) and two calibrations on a fixed random probe: the reference encoder's output
layer is scaled to a unit-spread ``ge``, and ``dec.conv_post`` is made DC-free (the final leaky
ReLU feeds it a positive mean) and scaled to a pre-tanh RMS of :data:`TARGET_PRE_TANH_RMS`,
which keeps the audio far from silence, from a constant offset and from tanh clipping.
Calibration factors are rounded to two significant digits so that tiny float differences
between machines do not change the weights.
"""

from __future__ import annotations

import math
import re
from typing import Final

import torch
from torch import nn

from gsv_models.config import SoVITSConfig
from gsv_models.modules import ChannelLayerNorm, EuclideanCodebook, RelativeMultiHeadAttention
from gsv_models.spectrogram import linear_spectrogram
from gsv_models.version import ModelVersion

TARGET_PRE_TANH_RMS: Final = 0.2
"""RMS of ``conv_post``'s output on the probe; other inputs land within about 0.5–2.5× of it,
still far below tanh saturation (the output stays near-linear)."""
BIAS_STD: Final = 0.05
_LRELU_GAIN: Final = math.sqrt(2.0 / (1.0 + 0.1**2))

_GAINS: Final[tuple[tuple[str, float], ...]] = (
    (r"^dec\.resblocks\.\d+\.convs1\.\d+$", _LRELU_GAIN),
    # residual branches: small, so 3 pairs × 3 blocks × stages neither explode nor vanish
    (r"^dec\.resblocks\.\d+\.convs2\.\d+$", 0.3 * _LRELU_GAIN),
    (r"^dec\.resblocks\.\d+\.convs\.\d+$", 0.3 * _LRELU_GAIN),
    (r"^dec\.ups\.\d+$", _LRELU_GAIN),
    (r"^flow\.flows\.\d+\.post$", 0.3),
    (r"^flow\.flows\.\d+\.enc\.cond_layer$", 0.5),
)


def tiny_sovits_config(version: ModelVersion) -> SoVITSConfig:
    """A small config of the real architecture for ``version`` (fast tests).

    Keeps the 32 kHz rate, 640-sample hop (upsample rates 10·8·8), the 1024-code codebook
    (semantic ids up to the GPT's EOS 1024), the real symbol tables and the reference encoder
    widths that upstream hard-codes. Ratios follow the full configs: ``gin == mrte_hidden`` on
    v1/v2 (MRTE adds ``ge`` itself), ``gin == 2 · mrte_hidden`` on Pro (``ge_to512``), and
    v2ProPlus keeps its larger first kernel (20) and a 1.5× wider decoder.

    Raises:
        ValueError: for v3/v4, which this synthesizer does not cover.
    """
    if version not in (
        ModelVersion.V1,
        ModelVersion.V2,
        ModelVersion.V2PRO,
        ModelVersion.V2PROPLUS,
    ):
        raise ValueError(f"SoVITS (VITS) configs exist for v1, v2, v2Pro, v2ProPlus; got {version}")
    plus = version is ModelVersion.V2PROPLUS
    return SoVITSConfig(
        version=version,
        n_symbols=322 if version is ModelVersion.V1 else 732,
        inter_channels=32,
        hidden_channels=32,
        filter_channels=64,
        n_heads=2,
        n_layers=2,
        kernel_size=3,
        resblock="1",
        resblock_kernel_sizes=(3, 7, 11),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        upsample_rates=(10, 8, 8),
        upsample_initial_channel=48 if plus else 32,
        upsample_kernel_sizes=(20 if plus else 16, 16, 16),
        gin_channels=64 if version.is_pro else 32,
        ssl_dim=64,
        codebook_size=1024,
        mrte_hidden=32,
        sv_dim=128,
    )


def randomize_sovits_(model: nn.Module, generator: torch.Generator) -> None:
    """Fill every parameter and buffer of a ``SoVITSModel`` from ``generator``, in place.

    Deterministic for a given generator state; works for full and tiny configs.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            _init_module(name, module, generator)
        _init_prior_proj(model.enc_p.proj, model.cfg.inter_channels, generator)
        model.eval()
        _calibrate(model, generator)


def _randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator)


def _gain(name: str) -> float:
    for pattern, gain in _GAINS:
        if re.match(pattern, name):
            return gain
    return 1.0


def _init_module(name: str, module: nn.Module, gen: torch.Generator) -> None:
    if isinstance(module, nn.ConvTranspose1d):
        c_in, _, k = module.weight.shape
        fan_in = c_in * k / module.stride[0]  # taps that reach one output sample
        module.weight.copy_(_randn(module.weight.shape, gen) * _gain(name) / math.sqrt(fan_in))
    elif isinstance(module, (nn.Conv1d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(_randn(module.weight.shape, gen) * _gain(name) / math.sqrt(fan_in))
    elif isinstance(module, nn.Embedding):
        module.weight.copy_(_randn(module.weight.shape, gen))
    elif isinstance(module, ChannelLayerNorm):
        module.gamma.copy_(1 + 0.1 * _randn(module.gamma.shape, gen))
        module.beta.copy_(0.1 * _randn(module.beta.shape, gen))
    elif isinstance(module, nn.PReLU):
        module.weight.copy_(0.25 + 0.05 * _randn(module.weight.shape, gen))
    elif isinstance(module, RelativeMultiHeadAttention) and module.window_size is not None:
        std = module.k_channels**-0.5
        module.emb_rel_k.copy_(_randn(module.emb_rel_k.shape, gen) * std)
        module.emb_rel_v.copy_(_randn(module.emb_rel_v.shape, gen) * std)
    elif isinstance(module, EuclideanCodebook):
        _init_codebook(module, gen)
    bias = getattr(module, "bias", None)
    if isinstance(bias, nn.Parameter) and not isinstance(module, ChannelLayerNorm):
        bias.copy_(BIAS_STD * _randn(bias.shape, gen))


def _init_codebook(codebook: EuclideanCodebook, gen: torch.Generator) -> None:
    """Equal-norm random codes: nearest-code search is then an argmax over directions."""
    k, d = codebook.embed.shape
    embed = _randn((k, d), gen)
    embed = embed / embed.norm(dim=1, keepdim=True) * math.sqrt(d)  # unit per-dim scale
    codebook.embed.copy_(embed)
    codebook.embed_avg.copy_(embed)
    codebook.cluster_size.copy_(1 + torch.rand((k,), generator=gen))
    codebook.inited.fill_(1.0)


def _init_prior_proj(proj: nn.Conv1d, inter: int, gen: torch.Generator) -> None:
    """Prior log-std around −1 with little spread: noise of scale ≈ 0.37 · noise_scale."""
    fan_in = proj.weight.shape[1]
    proj.weight[inter:].copy_(0.1 * _randn(proj.weight[inter:].shape, gen) / math.sqrt(fan_in))
    proj.bias[inter:].copy_(-1.0 + 0.1 * _randn((inter,), gen))


def _round2(x: float) -> float:
    return float(f"{x:.2g}")


def _probe(model: nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A fixed random utterance: reference audio (tones + noise), codes, phones, noise, sv."""
    cfg: SoVITSConfig = model.cfg
    sr, n = cfg.sampling_rate, int(1.5 * cfg.sampling_rate)
    t = torch.arange(n, dtype=torch.float32) / sr
    f0 = 110.0 + 110.0 * torch.rand((), generator=gen).item()
    audio = sum(torch.sin(2 * math.pi * f0 * h * t) / h for h in range(1, 9))
    audio = 0.1 * audio + 0.01 * _randn((n,), gen)
    spec, spec_len = linear_spectrogram(
        audio[None], None, cfg.filter_length, cfg.hop_length, cfg.win_length
    )
    n_codes, n_phones = 24, 12
    return {
        "spec": spec,
        "spec_lengths": spec_len,
        "sv": _randn((1, cfg.sv_dim), gen).abs() if model.is_pro else None,
        "codes": torch.randint(0, cfg.codebook_size, (1, n_codes), generator=gen),
        "phones": torch.randint(0, cfg.n_symbols, (1, n_phones), generator=gen),
        "noise": _randn((1, cfg.inter_channels, 2 * n_codes), gen),
    }


def _calibrate(model: nn.Module, gen: torch.Generator) -> None:
    probe = _probe(model, gen)
    # 1. unit-spread reference vector (before the SV fusion of Pro versions)
    ge_raw = model.ref_enc(probe["spec"][:, : model.cfg.ref_channels], probe["spec_lengths"])
    scale = _round2(1.0 / float(ge_raw.std()))
    model.ref_enc.fc.fc.weight.mul_(scale)
    model.ref_enc.fc.fc.bias.mul_(scale)
    # 2. decoder output: remove the DC that the final leaky ReLU's positive mean feeds into
    #    conv_post, then scale conv_post (no bias) to the target pre-tanh RMS
    ge = model.reference_embedding(probe["spec"], probe["spec_lengths"], probe["sv"])
    captured: list[torch.Tensor] = []
    hook = model.dec.conv_post.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    try:
        n_codes, n_phones = probe["codes"].shape[1], probe["phones"].shape[1]
        model.decode(
            probe["codes"],
            torch.tensor([n_codes]),
            probe["phones"],
            torch.tensor([n_phones]),
            ge,
            noise_scale=0.5,
            noise=probe["noise"],
        )
    finally:
        hook.remove()
    x = captured[0]  # (1, C, S): conv_post's input
    conv = model.dec.conv_post
    means = torch.tensor([_round2(float(v)) for v in x.mean(dim=(0, 2))])  # (C,)
    taps = conv.weight.shape[-1]
    dc_gain = float(conv.weight[0].sum(-1) @ means)  # DC out per unit of channel means
    alpha = _round2(dc_gain / max(float(means @ means), 1e-12))
    conv.weight[0].sub_(alpha * means[:, None] / taps)  # now Σ_c,k w·mean_c ≈ 0
    out = conv(x)
    conv.weight.mul_(_round2(TARGET_PRE_TANH_RMS / float(out.pow(2).mean().sqrt())))
