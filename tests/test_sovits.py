"""SoVITS synthesizer: shapes, weight norm, batching, speed, random init (tiny, no upstream)."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gsv_models.config import SoVITSConfig
from gsv_models.modules import fold_weight_norm, unfold_weight_norm
from gsv_models.ref_encoder import mean_reference
from gsv_models.sovits import (
    SoVITSModel,
    _stretch,
    fold_weight_norm_state,
    unfold_weight_norm_state,
    weight_norm_prefixes,
)
from gsv_models.spectrogram import linear_spectrogram, normalize_peak
from gsv_models.testing import sovits_config
from gsv_models.testing.sovits_init import randomize_sovits_, tiny_sovits_config
from gsv_models.version import ModelVersion
from tests.conftest import VERSIONS

KEYS_FILE = Path(__file__).parent / "data" / "upstream_keys.json"


@cache
def _model(version: str, seed: int = 0) -> SoVITSModel:
    model = SoVITSModel(tiny_sovits_config(ModelVersion.parse(version)))
    randomize_sovits_(model, torch.Generator().manual_seed(seed))
    return model.eval()


def _reference(cfg: SoVITSConfig, seed: int, seconds: float = 1.2) -> dict:
    g = torch.Generator().manual_seed(seed)
    audio = 0.2 * torch.randn(1, int(seconds * cfg.sampling_rate), generator=g)
    spec, frames = linear_spectrogram(audio)
    sv = torch.randn(1, cfg.sv_dim, generator=g).abs() if cfg.version.is_pro else None
    return {"spec": spec, "lengths": frames, "sv": sv}


def _pad_stack(rows: list[torch.Tensor], value: int | float = 0) -> torch.Tensor:
    """Right-pad tensors ``[..., T_i]`` to a batch ``[B, ..., max T]``."""
    t = max(r.shape[-1] for r in rows)
    return torch.stack([F.pad(r, (0, t - r.shape[-1]), value=value) for r in rows])


# --- weight norm -----------------------------------------------------------------------------


@pytest.mark.parametrize("transposed", [False, True])
def test_fold_weight_norm_is_torch_legacy_weight_norm(transposed: bool) -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(6, 4, 5, 2) if transposed else nn.Conv1d(6, 4, 5)
    conv = torch.nn.utils.weight_norm(conv)  # legacy API, as upstream
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)
    conv(torch.randn(1, 6, 9))  # the pre-forward hook recomputes .weight
    assert conv.weight_g.shape[0] == 6 if transposed else 4  # dim 0: in-channels if transposed
    assert torch.equal(fold_weight_norm(conv.weight_g, conv.weight_v), conv.weight)
    g, v = unfold_weight_norm(conv.weight.detach())
    assert torch.allclose(fold_weight_norm(g, v), conv.weight, rtol=1e-6, atol=0)
    assert fold_weight_norm(g.half(), v.half()).dtype == torch.float32


def test_weight_norm_state_round_trip() -> None:
    model = _model("v2")
    prefixes = weight_norm_prefixes(model.cfg)
    assert prefixes == model.weight_norm_prefixes()
    assert "dec.ups.0" in prefixes and "flow.flows.0.enc.cond_layer" in prefixes
    assert not any(p.startswith(("enc_p", "ref_enc", "dec.conv_", "dec.cond")) for p in prefixes)
    ours = model.state_dict()
    theirs = unfold_weight_norm_state(ours, prefixes)
    keys = list(theirs)
    i = keys.index("dec.ups.0.bias")
    assert keys[i : i + 3] == ["dec.ups.0.bias", "dec.ups.0.weight_g", "dec.ups.0.weight_v"]
    assert theirs["dec.ups.0.weight_g"].shape == (model.dec.ups[0].in_channels, 1, 1)
    back = fold_weight_norm_state(theirs, prefixes)
    assert set(back) == set(ours)
    for key, value in ours.items():
        assert torch.allclose(back[key], value, rtol=1e-6, atol=1e-7), key
    SoVITSModel(model.cfg).load_state_dict(back, strict=True)
    with pytest.raises(KeyError):
        fold_weight_norm_state({"x.weight": torch.ones(1)}, ["dec.ups.0"])


@pytest.mark.parametrize("version", VERSIONS)
def test_full_config_keys_match_upstream_checkpoints(version: str) -> None:
    """Upstream key/shape lists recorded by tests/data/record_upstream_keys.py (no enc_q)."""
    expected = json.loads(KEYS_FILE.read_text())[f"sovits_{version}"]
    cfg = sovits_config(ModelVersion.parse(version), "full")
    with torch.device("meta"):
        model = SoVITSModel(cfg)
    state = unfold_weight_norm_state(model.state_dict(), weight_norm_prefixes(cfg))
    assert {k: list(v.shape) for k, v in state.items()} == expected


# --- shapes and API --------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_shapes(version: str) -> None:
    model = _model(version)
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    codes = model.extract_latent(torch.randn(2, cfg.ssl_dim, 41, generator=g))
    assert codes.shape == (2, 20) and codes.dtype == torch.int64
    ref = _reference(cfg, 2)
    ge = model.reference_embedding(ref["spec"], ref["lengths"], ref["sv"])
    assert ge.shape == (1, cfg.gin_channels, 1)
    assert model.text_condition(ge).shape == (1, cfg.mrte_hidden, 1)
    phones = torch.randint(0, cfg.n_symbols, (2, 9), generator=g)
    wav, lengths = model.decode(
        codes, torch.tensor([20, 20]), phones, torch.tensor([9, 9]), ge.expand(2, -1, -1)
    )
    assert wav.shape == (2, 1, 20 * cfg.samples_per_token)
    assert lengths.tolist() == [20 * cfg.samples_per_token] * 2


@pytest.mark.parametrize("speed", [0.8, 1.0, 1.25, 1.7])
def test_speed_lengths(speed: float) -> None:
    model = _model("v2")
    cfg = model.cfg
    ref = _reference(cfg, 3)
    ge = model.reference_embedding(ref["spec"], ref["lengths"])
    codes = torch.randint(0, 1024, (1, 17), generator=torch.Generator().manual_seed(3))
    wav, lengths = model.decode(
        codes, torch.tensor([17]), codes % 100, torch.tensor([17]), ge, 0.0, speed=speed
    )
    frames = 34 if speed == 1 else int(34 / speed) + 1  # upstream: int(L / speed) + 1
    assert int(model.frame_lengths(torch.tensor([17]), speed)[0]) == frames
    assert wav.shape[-1] == int(lengths[0]) == frames * cfg.hop_length


@pytest.mark.parametrize(("t_in", "speed"), [(40, 1.25), (333, 0.5), (1000, 0.7), (517, 1.33)])
def test_stretch_equals_linear_interpolate(t_in: int, speed: float) -> None:
    y = torch.randn(1, 16, t_in, generator=torch.Generator().manual_seed(t_in))
    ref = F.interpolate(y, size=int(t_in / speed) + 1, mode="linear")
    assert (_stretch(y, torch.tensor([t_in]), speed) - ref).abs().max() <= 5e-7


def test_errors() -> None:
    pro, v2 = _model("v2Pro"), _model("v2")
    ref = _reference(pro.cfg, 4)
    with pytest.raises(ValueError, match="sv"):
        pro.reference_embedding(ref["spec"], ref["lengths"])
    with pytest.raises(ValueError, match="sv"):
        v2.reference_embedding(ref["spec"], ref["lengths"], torch.ones(1, 128))
    ge = v2.reference_embedding(ref["spec"], ref["lengths"])
    codes = torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="noise"):
        v2.decode(codes, torch.tensor([5]), codes, torch.tensor([5]), ge, noise=torch.ones(1, 3))
    with pytest.raises(ValueError, match="mrte_hidden"):
        SoVITSModel(SoVITSConfig(gin_channels=256))


# --- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize("speed", [1.0, 1.25])
@pytest.mark.parametrize("version", ["v2", "v2ProPlus"])
def test_batch_rows_equal_single_rows(version: str, speed: float) -> None:
    """Right-padded rows of different lengths decode as each row alone (masks everywhere)."""
    model = _model(version)
    cfg = model.cfg
    g = torch.Generator().manual_seed(5)
    n_codes, n_phones = [23, 9, 16], [11, 4, 15]
    codes = [torch.randint(0, cfg.codebook_size, (n,), generator=g) for n in n_codes]
    phones = [torch.randint(0, cfg.n_symbols, (n,), generator=g) for n in n_phones]
    refs = [_reference(cfg, 10 + i, 0.8 + 0.3 * i) for i in range(3)]
    ges = [model.reference_embedding(r["spec"], r["lengths"], r["sv"]) for r in refs]
    code_len, phone_len = torch.tensor(n_codes), torch.tensor(n_phones)
    frames = model.frame_lengths(code_len, speed)
    noise = torch.randn(3, cfg.inter_channels, int(frames.max()), generator=g)
    wav, lengths = model.decode(
        _pad_stack(codes, 7),
        code_len,
        _pad_stack(phones, 3),
        phone_len,
        torch.cat(ges),
        noise_scale=torch.tensor([0.5, 0.3, 0.7]),
        noise=noise,
        speed=speed,
    )
    assert torch.equal(lengths, frames * cfg.hop_length)
    for i in range(3):
        alone, n = model.decode(
            codes[i][None],
            code_len[i : i + 1],
            phones[i][None],
            phone_len[i : i + 1],
            ges[i],
            noise_scale=[0.5, 0.3, 0.7][i],
            noise=noise[i : i + 1, :, : int(frames[i])],
            speed=speed,
        )
        assert alone.shape[-1] == int(n[0]) == int(lengths[i])
        assert (wav[i, :, : int(n[0])] - alone[0]).abs().max() < 1e-5
        assert not wav[i, :, int(n[0]) :].any()


def test_reference_embedding_batch_and_mean() -> None:
    model = _model("v2Pro")
    refs = [_reference(model.cfg, 20 + i, s) for i, s in enumerate([1.0, 1.7, 0.6])]
    singles = [model.reference_embedding(r["spec"], r["lengths"], r["sv"]) for r in refs]
    spec = _pad_stack([r["spec"][0] for r in refs])
    lengths = torch.cat([r["lengths"] for r in refs])
    batch = model.reference_embedding(spec, lengths, torch.cat([r["sv"] for r in refs]))
    assert (batch - torch.cat(singles)).abs().max() < 1e-5
    mean = mean_reference(batch)
    assert mean.shape == (1, model.cfg.gin_channels, 1)
    assert torch.allclose(mean, torch.stack(singles).mean(0), atol=1e-5)


def test_extract_latent_ignores_padding() -> None:
    model = _model("v1")
    g = torch.Generator().manual_seed(6)
    a = torch.randn(1, model.cfg.ssl_dim, 30, generator=g)
    b = torch.randn(1, model.cfg.ssl_dim, 51, generator=g)
    batch = model.extract_latent(torch.cat([F.pad(a, (0, 21)), b]))
    assert torch.equal(batch[0, :15], model.extract_latent(a)[0])
    assert torch.equal(batch[1], model.extract_latent(b)[0])


def test_default_noise_is_randn_like_in_upstream_order() -> None:
    model = _model("v2")
    ref = _reference(model.cfg, 7)
    ge = model.reference_embedding(ref["spec"], ref["lengths"])
    codes = torch.randint(0, 1024, (1, 12), generator=torch.Generator().manual_seed(7))
    args = (codes, torch.tensor([12]), codes % 50, torch.tensor([12]), ge, 0.5)
    torch.manual_seed(11)
    drawn, _ = model.decode(*args)
    torch.manual_seed(11)
    injected, _ = model.decode(*args, noise=torch.randn(1, model.cfg.inter_channels, 24))
    assert torch.equal(drawn, injected)


# --- spectrogram -----------------------------------------------------------------------------


def test_spectrogram_reflect_padding_per_row() -> None:
    g = torch.Generator().manual_seed(8)
    audio = 0.3 * torch.randn(2, 9000, generator=g)
    spec, frames = linear_spectrogram(audio)
    # the same definition written plainly: reflect pad 704, periodic Hann, center=False
    padded = F.pad(audio[:, None], (704, 704), mode="reflect")[:, 0]
    stft = torch.stft(padded, 2048, 640, 2048, torch.hann_window(2048), center=False,
                      return_complex=True)  # fmt: skip
    assert torch.equal(spec, torch.sqrt(torch.view_as_real(stft).pow(2).sum(-1) + 1e-8))
    assert spec.shape == (2, 1025, 14) and frames.tolist() == [14, 14]
    short, short_frames = linear_spectrogram(audio[1:, :5000])
    both, both_frames = linear_spectrogram(audio, torch.tensor([9000, 5000]))
    assert both_frames.tolist() == [14, int(short_frames[0])]
    assert torch.equal(both[1, :, : int(short_frames[0])], short[0])
    with pytest.raises(ValueError, match="longer"):
        linear_spectrogram(audio[:, :700])


def test_normalize_peak() -> None:
    audio = torch.tensor([[0.5, -0.9, 0.0], [1.5, -0.3, 0.0], [-4.0, 1.0, 0.0]])
    out = normalize_peak(audio)
    assert torch.equal(out[0], audio[0])  # peak ≤ 1: untouched
    assert torch.allclose(out[1], audio[1] / 1.5)  # 1 < peak < 2: divide by the peak
    assert torch.allclose(out[2], audio[2] / 2)  # peak ≥ 2: divide by 2
    padded = normalize_peak(torch.tensor([[0.5, 3.0]]), torch.tensor([1]))
    assert torch.equal(padded, torch.tensor([[0.5, 3.0]]))  # padding is not the peak


# --- random init -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_random_init_gives_usable_audio(version: str) -> None:
    model = _model(version)
    cfg = model.cfg
    g = torch.Generator().manual_seed(9)
    codes = model.extract_latent(torch.randn(1, cfg.ssl_dim, 200, generator=g))
    assert codes.unique().numel() > 70  # 100 codes drawn from 1024: spread, not collapsed
    ref = _reference(cfg, 9)
    ge = model.reference_embedding(ref["spec"], ref["lengths"], ref["sv"])
    assert 0.2 < float(ge.std()) < 5
    stage_std: list[float] = []
    hooks = [up.register_forward_hook(lambda m, i, o: stage_std.append(float(o.std())))
             for up in model.dec.ups]  # fmt: skip
    phones = torch.randint(0, cfg.n_symbols, (1, 30), generator=g)
    torch.manual_seed(0)
    try:
        wav, _ = model.decode(codes[:, :50], torch.tensor([50]), phones, torch.tensor([30]), ge)
    finally:
        for h in hooks:
            h.remove()
    w = wav[0, 0]
    rms, peak = float(w.pow(2).mean().sqrt()), float(w.abs().max())
    assert 0.05 < rms < 0.5 and peak < 0.99
    assert abs(float(w.mean())) < 0.05  # no constant offset
    assert float((w.abs() > 0.95).float().mean()) < 1e-3  # no tanh saturation
    assert all(0.3 < s < 5 for s in stage_std), stage_std  # activations neither vanish nor explode
    frames = w.view(-1, cfg.hop_length).pow(2).mean(1).sqrt()
    assert float(frames.min()) > 0.01  # no silent frame


def test_random_init_is_deterministic() -> None:
    a, b = _model("v2Pro", seed=3), SoVITSModel(tiny_sovits_config(ModelVersion.V2PRO))
    randomize_sovits_(b, torch.Generator().manual_seed(3))
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    assert not math.isclose(float(a.dec.conv_post.weight.detach().std()), 0.0)
