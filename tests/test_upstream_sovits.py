"""SoVITS parity against upstream's own SynthesizerTrn loaded with the same random weights."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from functools import cache

import pytest
import torch
from torch import nn

from gsv_models.config import SoVITSConfig
from gsv_models.ref_encoder import mean_reference
from gsv_models.sovits import (
    UPSTREAM_ONLY_PREFIXES,
    SoVITSModel,
    fold_weight_norm_state,
    unfold_weight_norm_state,
    weight_norm_prefixes,
)
from gsv_models.spectrogram import linear_spectrogram
from gsv_models.testing.sovits_init import randomize_sovits_, tiny_sovits_config
from gsv_models.version import ModelVersion
from tests.upstream_oracle import import_upstream

pytestmark = pytest.mark.upstream

VERSIONS = [ModelVersion.V1, ModelVersion.V2, ModelVersion.V2PRO, ModelVersion.V2PROPLUS]
REL_TOL = 1e-4
"""Max abs difference allowed, relative to the upstream signal's peak."""

# upstream hard-codes these widths; tiny configs need the matching upstream modules rebuilt
_UPSTREAM_SSL, _UPSTREAM_BINS, _UPSTREAM_CONTENT, _UPSTREAM_MRTE, _UPSTREAM_SV = (
    768,
    1024,
    192,
    512,
    20480,
)


def _full_config(version: ModelVersion) -> SoVITSConfig:
    """Upstream configs/s2*.json for the version."""
    if version is ModelVersion.V2PROPLUS:
        return SoVITSConfig(
            version=version,
            gin_channels=1024,
            upsample_initial_channel=768,
            upsample_kernel_sizes=(20, 16, 8, 2, 2),
        )
    if version is ModelVersion.V2PRO:
        return SoVITSConfig(version=version, gin_channels=1024)
    return SoVITSConfig(version=version, n_symbols=322 if version is ModelVersion.V1 else 732)


def _upstream_net(cfg: SoVITSConfig) -> nn.Module:
    """Upstream SynthesizerTrn as TTS.init_vits_weights builds it, eval mode."""
    models = import_upstream("module.models")
    kwargs = dict(cfg.to_upstream()["model"])
    kwargs.update(semantic_frame_rate="25hz", version=cfg.version.value)
    net = models.SynthesizerTrn(
        cfg.filter_length // 2 + 1,
        cfg.segment_size // cfg.hop_length,
        n_speakers=300,
        **kwargs,
    )
    _fit_hardcoded_widths(net, cfg)
    return net.eval()


def _fit_hardcoded_widths(net: nn.Module, cfg: SoVITSConfig) -> None:
    """Rebuild (with upstream's own classes) the modules whose widths upstream hard-codes."""
    if cfg.ssl_dim != _UPSTREAM_SSL or cfg.codebook_size != _UPSTREAM_BINS:
        quantize = import_upstream("module.quantize")
        net.ssl_proj = nn.Conv1d(cfg.ssl_dim, cfg.ssl_dim, 2, stride=2)
        net.quantizer = quantize.ResidualVectorQuantizer(
            dimension=cfg.ssl_dim, n_q=1, bins=cfg.codebook_size
        )
        net.enc_p.ssl_proj = nn.Conv1d(cfg.ssl_dim, cfg.hidden_channels, 1)
    if cfg.hidden_channels != _UPSTREAM_CONTENT or cfg.mrte_hidden != _UPSTREAM_MRTE:
        mrte = import_upstream("module.mrte_model")
        net.enc_p.mrte = mrte.MRTE(
            content_enc_channels=cfg.hidden_channels,
            hidden_size=cfg.mrte_hidden,
            out_channels=cfg.hidden_channels,
        )
    if cfg.version.is_pro and cfg.sv_dim != _UPSTREAM_SV:
        net.sv_emb = nn.Linear(cfg.sv_dim, cfg.gin_channels)
    if cfg.version.is_pro and cfg.mrte_hidden != _UPSTREAM_MRTE:
        net.ge_to512 = nn.Linear(cfg.gin_channels, cfg.mrte_hidden)


@dataclass
class Pair:
    cfg: SoVITSConfig
    ours: SoVITSModel
    theirs: nn.Module


@cache
def _pair(version: ModelVersion, size: str) -> Pair:
    torch.set_num_threads(2)
    cfg = tiny_sovits_config(version) if size == "tiny" else _full_config(version)
    ours = SoVITSModel(cfg)
    randomize_sovits_(ours, torch.Generator().manual_seed(1234))
    ours.eval()
    theirs = _upstream_net(cfg)
    state = unfold_weight_norm_state(ours.state_dict(), weight_norm_prefixes(cfg))
    result = theirs.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys
    assert all(k.startswith(UPSTREAM_ONLY_PREFIXES) for k in result.missing_keys)
    # reload ours from the g/v pairs, as from a checkpoint: the folded weights are then exactly
    # those upstream recomputes in every forward (fold∘unfold is only exact to ~1 ulp)
    ours.load_state_dict(fold_weight_norm_state(state, weight_norm_prefixes(cfg)), strict=True)
    return Pair(cfg, ours, theirs)


def _inputs(cfg: SoVITSConfig, seed: int, n_codes: int = 20, n_phones: int = 14) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = int(1.3 * cfg.sampling_rate)
    audio = 0.2 * torch.randn(1, n, generator=g)
    spec, _ = linear_spectrogram(audio, None, cfg.filter_length, cfg.hop_length, cfg.win_length)
    return {
        "ssl": torch.randn(1, cfg.ssl_dim, 2 * n_codes + 1, generator=g),
        "codes": torch.randint(0, cfg.codebook_size, (1, n_codes), generator=g),
        "phones": torch.randint(0, cfg.n_symbols, (1, n_phones), generator=g),
        "spec": spec,
        "sv": torch.randn(1, cfg.sv_dim, generator=g).abs() if cfg.version.is_pro else None,
    }


def _rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)


CASES = [(v, "tiny") for v in VERSIONS] + [
    pytest.param(ModelVersion.V2PROPLUS, "full", marks=pytest.mark.slow)
]


@pytest.mark.parametrize(("version", "size"), CASES)
def test_weight_norm_prefixes_match_upstream(version: ModelVersion, size: str) -> None:
    pair = _pair(version, size)
    normed = {k[: -len(".weight_g")] for k in pair.theirs.state_dict() if k.endswith(".weight_g")}
    normed = {k for k in normed if not k.startswith(UPSTREAM_ONLY_PREFIXES)}
    assert normed == set(weight_norm_prefixes(pair.cfg))


@pytest.mark.parametrize(("version", "size"), CASES)
def test_extract_latent_identical(version: ModelVersion, size: str) -> None:
    pair = _pair(version, size)
    x = _inputs(pair.cfg, 1)
    with torch.no_grad():
        theirs = pair.theirs.extract_latent(x["ssl"])[:, 0]  # (B, n_q, T) → (B, T)
    ours = pair.ours.extract_latent(x["ssl"])
    assert torch.equal(ours, theirs)
    assert ours.unique().numel() > 0.6 * ours.numel()


def _upstream_ge(net: nn.Module, cfg: SoVITSConfig, spec: torch.Tensor, sv) -> torch.Tensor:
    """ge as upstream SynthesizerTrn.decode computes it for one reference."""
    mask = torch.ones(1, 1, spec.shape[2])
    ge = net.ref_enc(spec[:, : cfg.ref_channels] * mask, mask)
    if cfg.version.is_pro:
        ge = net.prelu(ge + net.sv_emb(sv).unsqueeze(-1))
    return ge


@pytest.mark.parametrize(("version", "size"), CASES)
def test_reference_embedding(version: ModelVersion, size: str) -> None:
    pair = _pair(version, size)
    x = _inputs(pair.cfg, 2)
    with torch.no_grad():
        theirs = _upstream_ge(pair.theirs, pair.cfg, x["spec"], x["sv"])
    ours = pair.ours.reference_embedding(x["spec"], None, x["sv"])
    assert _rel_diff(ours, theirs) < 1e-5


@pytest.mark.parametrize("speed", [1.0, 1.25])
@pytest.mark.parametrize(("version", "size"), CASES)
def test_decode_matches_upstream(version: ModelVersion, size: str, speed: float) -> None:
    pair = _pair(version, size)
    x = _inputs(pair.cfg, 3)
    n_codes, n_phones = x["codes"].shape[1], x["phones"].shape[1]
    ge = pair.ours.reference_embedding(x["spec"], None, x["sv"])

    def ours(noise_scale: float, noise=None) -> torch.Tensor:
        wav, lengths = pair.ours.decode(
            x["codes"],
            torch.tensor([n_codes]),
            x["phones"],
            torch.tensor([n_phones]),
            ge,
            noise_scale=noise_scale,
            noise=noise,
            speed=speed,
        )
        assert int(lengths[0]) == wav.shape[-1]
        return wav

    def theirs(noise_scale: float) -> torch.Tensor:
        return pair.theirs.decode(
            x["codes"][None], x["phones"], x["spec"], noise_scale, speed, sv_emb=x["sv"]
        )

    ref = theirs(0.0)
    assert _rel_diff(ours(0.0), ref) <= REL_TOL
    # default noise: same seed → same draw as upstream's randn_like
    torch.manual_seed(7)
    ref = theirs(0.5)
    torch.manual_seed(7)
    assert _rel_diff(ours(0.5), ref) <= REL_TOL
    # injected noise
    frames = int(pair.ours.frame_lengths(torch.tensor([n_codes]), speed)[0])
    torch.manual_seed(8)
    noise = torch.randn(1, pair.cfg.inter_channels, frames)
    torch.manual_seed(8)
    ref = theirs(0.8)
    assert _rel_diff(ours(0.8, noise), ref) <= REL_TOL


@pytest.mark.parametrize("version", VERSIONS)
def test_multi_reference_mean(version: ModelVersion) -> None:
    pair = _pair(version, "tiny")
    a, b = _inputs(pair.cfg, 4), _inputs(pair.cfg, 5)
    specs = [a["spec"], b["spec"][:, :, :-7]]
    svs = torch.cat([a["sv"], b["sv"]]) if version.is_pro else None
    n_codes, n_phones = a["codes"].shape[1], a["phones"].shape[1]
    ref = pair.theirs.decode(
        a["codes"][None],
        a["phones"],
        specs,
        0.0,
        1,
        sv_emb=svs[:, None] if svs is not None else None,
    )
    # both references in one padded batch
    lengths = torch.tensor([s.shape[2] for s in specs])
    batch = torch.zeros(2, specs[0].shape[1], int(lengths.max()))
    for i, s in enumerate(specs):
        batch[i, :, : s.shape[2]] = s[0]
    ge = mean_reference(pair.ours.reference_embedding(batch, lengths, svs))
    wav, _ = pair.ours.decode(
        a["codes"], torch.tensor([n_codes]), a["phones"], torch.tensor([n_phones]), ge, 0.0
    )
    assert _rel_diff(wav, ref) <= REL_TOL


def test_spectrogram_matches_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("librosa") is None:
        # mel_processing imports librosa.filters.mel at import time; spectrogram_torch never
        # calls it, so a stand-in for the duration of this test is enough
        filters = types.ModuleType("librosa.filters")
        filters.mel = None  # type: ignore[attr-defined]
        stub = types.ModuleType("librosa")
        stub.filters = filters  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "librosa", stub)
        monkeypatch.setitem(sys.modules, "librosa.filters", filters)
    mel = import_upstream("module.mel_processing")
    g = torch.Generator().manual_seed(0)
    audio = 0.3 * torch.randn(2, 20000, generator=g)
    theirs = mel.spectrogram_torch(audio, 2048, 32000, 640, 2048, center=False)
    ours, frames = linear_spectrogram(audio)
    assert torch.equal(ours, theirs)
    assert frames.tolist() == [theirs.shape[2]] * 2
    # a shorter row padded in a batch equals that row alone
    alone = mel.spectrogram_torch(audio[1:, :13000], 2048, 32000, 640, 2048, center=False)
    both, frames = linear_spectrogram(audio, torch.tensor([20000, 13000]))
    assert int(frames[1]) == alone.shape[2]
    assert torch.equal(both[1:, :, : alone.shape[2]], alone)
