"""Non-degenerate random v3/v4 SoVITS models and v4 vocoders, in upstream's on-disk formats.

Scheme: the SoVITS side (text encoder, reference encoder, codebook, ``wns1``) gets the VITS init
of :mod:`gsv_models.testing.sovits_init`; DiT linears are variance-preserving, LayerNorms and
GRNs get random affine parameters around their identity (upstream's zero-initialised GRN would
be a no-op and hide a wrong axis), and the AdaLN modulations a small gain so that the residual
stream stays bounded over 22 blocks. Three calibrations on a fixed random probe: ``ge`` to unit
spread, the content features to unit RMS and the velocity at t = 0 to unit RMS. Calibration
factors are rounded to two significant digits so that float noise between machines does not
change the weights. LoRA fine-tunes are made as upstream's trainer would leave them: new
reference encoder, bridge, ``wns1`` and mel head, plus rank-r factors on every attention
projection (B non-zero, unlike peft's initial state).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Final, Literal

import torch
from torch import nn

from gsv_models.checkpoint_v3 import save_sovits_v3
from gsv_models.config import SoVITSConfig
from gsv_models.dit import GRN, DiTConfig
from gsv_models.lora import TRAINED_PREFIXES, lora_file_state
from gsv_models.sovits import unfold_weight_norm_state
from gsv_models.sovits_v3 import FEATURE_UPSAMPLE, SoVITSV3Config, SoVITSV3Model
from gsv_models.spectrogram import linear_spectrogram
from gsv_models.testing.sovits_init import _init_module, _randn, _round2
from gsv_models.version import ModelVersion
from gsv_models.vocoder_v4 import V4VocoderConfig, build_v4_vocoder

Size = Literal["tiny", "full"]

LORA_B_STD: Final = 0.2
"""Scale of ``B @ A`` relative to the weight it is added to (about 20 %)."""
_GAINS: Final[tuple[tuple[str, float], ...]] = (
    (r"\.attn_norm\.linear$", 0.3),
    (r"\.norm_out\.linear$", 0.3),
    (r"^cfm\.estimator\.transformer_blocks\.\d+\.ff\.ff\.2$", 0.5),
    (r"^cfm\.estimator\.transformer_blocks\.\d+\.attn\.to_out\.0$", 0.5),
)
_PROBE_CODES: Final = 16
_PROBE_PHONES: Final = 10


def v3_config(version: ModelVersion, size: Size) -> SoVITSV3Config:
    """Upstream's v3/v4/v5 shape (configs/s2.json + the widths ``SynthesizerTrnV3`` hard-codes), or
    a shrunk one of the same architecture for fast tests (the 100 mel bins, 1024 codes, 732
    symbols and 704 reference bins stay).

    Raises:
        ValueError: for a version other than v3/v4/v5.
    """
    if version not in FEATURE_UPSAMPLE:
        raise ValueError(f"CFM SoVITS configs exist for v3, v4 and v5; got {version.value}")
    step = not version.is_v5  # v5's DiT has no step embedding
    if size == "full":
        return SoVITSV3Config(
            sovits=SoVITSConfig(version=version), dit=DiTConfig(step_embedding=step)
        )
    sovits = SoVITSConfig(
        version=version,
        inter_channels=32,
        hidden_channels=32,
        filter_channels=64,
        n_layers=2,
        gin_channels=32,
        ssl_dim=64,
        mrte_hidden=32,
    )
    dit = DiTConfig(
        dim=64, depth=2, heads=4, dim_head=16, text_dim=48, conv_layers=2, step_embedding=step
    )
    return SoVITSV3Config(sovits=sovits, feature_dim=48, wn_layers=3, dit=dit)


def _gain(name: str) -> float:
    for pattern, gain in _GAINS:
        if re.search(pattern, name):
            return gain
    return 1.0


def _init(name: str, module: nn.Module, gen: torch.Generator) -> None:
    if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        module.weight.copy_(1 + 0.1 * _randn(module.weight.shape, gen))
        module.bias.copy_(0.1 * _randn(module.bias.shape, gen))
    elif isinstance(module, GRN):
        module.gamma.copy_(0.3 * _randn(module.gamma.shape, gen))
        module.beta.copy_(0.1 * _randn(module.beta.shape, gen))
    else:
        _init_module(name, module, gen)
        if isinstance(module, nn.Linear) and name.startswith("cfm."):
            module.weight.mul_(_gain(name))


def _probe(model: SoVITSV3Model, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A fixed random utterance: reference spectrogram (tones + noise), codes, phones."""
    s = model.cfg.sovits
    n = int(1.2 * s.sampling_rate)
    t = torch.arange(n, dtype=torch.float32) / s.sampling_rate
    f0 = 110.0 + 110.0 * torch.rand((), generator=gen).item()
    audio = sum(torch.sin(2 * math.pi * f0 * h * t) / h for h in range(1, 9))
    audio = 0.1 * audio + 0.01 * _randn((n,), gen)
    spec, _ = linear_spectrogram(audio[None], None, s.filter_length, s.hop_length, s.win_length)
    return {
        "spec": spec,
        "codes": torch.randint(0, s.codebook_size, (1, _PROBE_CODES), generator=gen),
        "phones": torch.randint(0, s.n_symbols, (1, _PROBE_PHONES), generator=gen),
    }


def _calibrate(model: SoVITSV3Model, gen: torch.Generator) -> None:
    probe = _probe(model, gen)
    fc = model.ref_enc.fc.fc
    scale = _round2(1.0 / float(model.reference_embedding(probe["spec"]).std()))
    fc.weight.mul_(scale)
    fc.bias.mul_(scale)
    ge = model.reference_embedding(probe["spec"])
    lengths = (torch.tensor([_PROBE_CODES]), torch.tensor([_PROBE_PHONES]))
    args = (probe["codes"], lengths[0], probe["phones"], lengths[1], ge)
    fea, _ = model.decode_features(*args)
    scale = _round2(1.0 / float(fea.pow(2).mean().sqrt()))
    model.wns1.proj.weight.mul_(scale)
    model.wns1.proj.bias.mul_(scale)
    fea, _ = model.decode_features(*args)
    dit = model.cfm.estimator
    x = _randn((1, dit.cfg.mel_dim, fea.shape[2]), gen)
    b = torch.zeros(1)
    v = dit(x, torch.zeros_like(x), fea, b, b + 1 / 32)
    scale = _round2(1.0 / float(v.pow(2).mean().sqrt()))
    dit.proj_out.weight.mul_(scale)
    dit.proj_out.bias.mul_(scale)


@torch.no_grad()
def randomize_v3_(
    model: SoVITSV3Model, generator: torch.Generator, only: tuple[str, ...] = ()
) -> None:
    """Fill the parameters of ``model`` from ``generator`` and calibrate it, in place.

    ``only`` (key prefixes) re-draws just those modules and skips the calibration, as a LoRA
    fine-tune changes them. The rotary frequencies keep their fixed values.
    """
    for name, module in model.named_modules():
        if not only or (name + ".").startswith(only):
            _init(name, module, generator)
    model.eval()
    if not only:
        _calibrate(model, generator)


def random_v3(cfg: SoVITSV3Config, seed: int) -> SoVITSV3Model:
    """A v3/v4 SoVITS with non-degenerate random weights, eval mode."""
    model = SoVITSV3Model(cfg)
    randomize_v3_(model, torch.Generator().manual_seed(seed))
    return model.eval()


@torch.no_grad()
def upstream_v3_state(model: SoVITSV3Model, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``model``'s weights as upstream's state dict: weight-norm pairs and a random mel head
    (``linear_mel``, training only) in upstream's key order."""
    state = unfold_weight_norm_state(model.state_dict(), model.weight_norm_prefixes())
    head = nn.Conv1d(model.cfg.feature_dim, model.cfg.dit.mel_dim, 1)
    _init_module("linear_mel", head, gen)
    # upstream's WN registers cond_layer after its layer lists, ours before
    cond = {k: v for k, v in state.items() if k.startswith("wns1.enc.cond_layer.")}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("wns1.proj.") and not cond.keys() <= out.keys():
            out.update(cond)
        if key.startswith("cfm.") and "linear_mel.weight" not in out:
            out["linear_mel.weight"], out["linear_mel.bias"] = head.weight, head.bias
        if key not in cond:
            out[key] = value
    return out


def random_lora_factors(
    model: SoVITSV3Model, rank: int, gen: torch.Generator
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A [r, in], B [out, r])}`` for every attention projection of the DiT."""
    factors = {}
    for name, module in model.named_modules():
        if re.search(r"\.attn\.(to_q|to_k|to_v|to_out\.0)$", name):
            assert isinstance(module, nn.Linear)
            out_f, in_f = module.weight.shape
            a = _randn((rank, in_f), gen) / math.sqrt(in_f)
            b = _randn((out_f, rank), gen) * LORA_B_STD / math.sqrt(rank)
            factors[name] = (a, b)
    return factors


def make_v3_checkpoint(
    version: ModelVersion | str,
    path: str | Path,
    size: Size = "tiny",
    seed: int = 0,
    half: bool = True,
) -> Path:
    """A random full v3/v4/v5 SoVITS ``.pth`` as upstream writes it (``PK``, v5 ``07``/``08``)."""
    version = ModelVersion.parse(version) if isinstance(version, str) else version
    cfg = v3_config(version, size)
    model = random_v3(cfg, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = upstream_v3_state(model, torch.Generator().manual_seed(seed + 1))
    save_sovits_v3(path, cfg, state, half=half)
    return path


def make_v3_lora_checkpoint(
    version: ModelVersion | str,
    path: str | Path,
    base: str | Path,
    size: Size = "tiny",
    seed: int = 0,
    rank: int = 8,
    half: bool = True,
) -> tuple[Path, Path]:
    """A random LoRA fine-tune (tag ``03``/``04``/``07``/``08``) and the full base it extends.

    Returns:
        ``(lora path, base path)``; the base is made with :func:`make_v3_checkpoint` (``seed``).
    """
    version = ModelVersion.parse(version) if isinstance(version, str) else version
    base = make_v3_checkpoint(version, base, size, seed, half)
    cfg = v3_config(version, size)
    tuned = random_v3(cfg, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    randomize_v3_(tuned, gen, only=TRAINED_PREFIXES)
    state = upstream_v3_state(tuned, gen)
    factors = random_lora_factors(tuned, rank, gen)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_sovits_v3(path, cfg, lora_file_state(state, factors), lora_rank=rank, half=half)
    return path, base


def v4_vocoder_config(size: Size) -> V4VocoderConfig:
    """Upstream's v4 vocoder, or the same stages with 64 instead of 512 initial channels."""
    return (
        V4VocoderConfig()
        if size == "full"
        else replace(V4VocoderConfig(), upsample_initial_channel=64)
    )


@torch.no_grad()
def random_v4_vocoder(cfg: V4VocoderConfig, seed: int) -> nn.Module:
    """A v4 vocoder with the VITS decoder's random init, ``conv_post`` scaled to a pre-tanh RMS
    of 0.2 on a random mel (far from tanh saturation)."""
    gen = torch.Generator().manual_seed(seed)
    model = build_v4_vocoder(cfg)
    for name, module in model.named_modules():
        _init_module(f"dec.{name}", module, gen)  # the SoVITS decoder's gains by name
    captured: list[torch.Tensor] = []
    hook = model.conv_post.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(_randn((1, cfg.mel_dim, 12), gen))
    finally:
        hook.remove()
    scale = _round2(0.2 / float(captured[0].pow(2).mean().sqrt()))
    model.conv_post.weight.mul_(scale)
    model.conv_post.bias.mul_(scale)
    return model.eval()


def make_v4_vocoder(
    path: str | Path, size: Size = "tiny", seed: int = 0, half: bool = False
) -> Path:
    """A random ``vocoder.pth``: the plain state dict of fused weights upstream loads."""
    model = random_v4_vocoder(v4_vocoder_config(size), seed)
    state = {k: (v.half() if half else v).contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
