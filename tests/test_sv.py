"""Speaker encoder (ERes2NetV2) and host-side audio features: numpy twins vs torch references."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from gsv_models import fbank as torch_features
from gsv_models.spectrogram import linear_spectrogram as torch_spectrogram
from gsv_models.sv import ERes2NetV2
from gsv_models.testing.sv_init import randomize_sv_, tiny_sv_kwargs
from gsv_runtime import audio_features as np_features
from gsv_runtime.errors import InputError


def _rel(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of the reference ``b``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _speechlike(n: int, sr: int, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonics plus noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = 140.0 + 20.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t) ** 2
    wav = 0.25 * envelope * voiced + 0.02 * rng.standard_normal(n)
    return wav.astype(np.float32)


@pytest.fixture(scope="module")
def tiny_sv() -> ERes2NetV2:
    model = ERes2NetV2(**tiny_sv_kwargs())
    randomize_sv_(model, torch.Generator().manual_seed(0))
    return model


# --- numpy features vs torch references ------------------------------------------------------


@pytest.mark.parametrize("n", [32000 * 3 + 17, 705 + 1, 2048])
def test_linear_spectrogram_matches_torch(n: int) -> None:
    wav = _speechlike(n, 32000)
    ours = np_features.linear_spectrogram(wav)
    ref = torch_spectrogram(torch.from_numpy(wav)[None])[0][0].numpy()
    assert ours.shape == ref.shape == (1025, 1 + (n + 2 * 704 - 2048) // 640)
    assert ours.dtype == np.float32
    assert _rel(ours, ref) <= 1e-5


def test_linear_spectrogram_batched() -> None:
    wavs = np.stack([_speechlike(40000, 32000, seed) for seed in range(3)])
    batched = np_features.linear_spectrogram(wavs)
    assert batched.shape == (3, 1025, 62)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], np_features.linear_spectrogram(wavs[i]))
    ref = torch_spectrogram(torch.from_numpy(wavs))[0].numpy()
    assert _rel(batched, ref) <= 1e-5


@pytest.mark.parametrize("n", [16000 * 4 + 123, 400, 561])
def test_kaldi_fbank_matches_torch(n: int) -> None:
    wav = _speechlike(n, 16000, seed=1)
    ours = np_features.kaldi_fbank(wav)
    ref = torch_features.kaldi_fbank(torch.from_numpy(wav)).numpy()
    assert ours.shape == ref.shape == (1 + (n - 400) // 160, 80)
    assert ours.dtype == np.float32
    assert _rel(ours, ref) <= 1e-4


def test_kaldi_fbank_batched_and_silence() -> None:
    wavs = np.stack([_speechlike(8000, 16000, 2), np.zeros(8000, np.float32)])
    feats = np_features.kaldi_fbank(wavs)
    assert feats.shape == (2, 48, 80)
    np.testing.assert_array_equal(feats[0], np_features.kaldi_fbank(wavs[0]))
    # digital silence hits the float32-epsilon floor in every bin
    np.testing.assert_allclose(feats[1], np.log(np.finfo(np.float32).eps), rtol=1e-6)
    ref = torch_features.kaldi_fbank(torch.from_numpy(wavs)).numpy()
    assert _rel(feats, ref) <= 1e-4


@pytest.mark.parametrize(
    ("orig", "new"), [(32000, 16000), (48000, 32000), (44100, 32000), (22050, 32000)]
)
def test_sinc_resample_matches_torch(orig: int, new: int) -> None:
    wav = _speechlike(orig + 321, orig, seed=3)
    ours = np_features.sinc_resample(wav, orig, new)
    ref = torch_features.resample(torch.from_numpy(wav), orig, new).numpy()
    assert ours.shape == ref.shape == (math.ceil((orig + 321) * new / orig),)
    assert _rel(ours, ref) <= 1e-5
    batched = np_features.sinc_resample(np.stack([wav, wav]), orig, new)
    np.testing.assert_allclose(batched[1], ours, rtol=0, atol=1e-7)


@pytest.mark.parametrize(("orig", "new"), [(32000, 16000), (48000, 32000)])
def test_sinc_resample_is_the_documented_interpolation(orig: int, new: int) -> None:
    """y[m] = Σ_i x[i]·h(i/o − m/n) with torchaudio's Hann-windowed sinc h (direct sum)."""
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    c = 0.99 * min(o, n)
    x = np.random.default_rng(4).standard_normal(301)
    y = torch_features.resample(torch.from_numpy(x.astype(np.float32)), orig, new).numpy()
    for m in (0, 1, 2, 57, 100, len(y) - 1):
        t = np.clip(c * (np.arange(len(x)) / o - m / n), -6, 6)
        h = (c / o) * np.sinc(t) * np.cos(np.pi * t / 12) ** 2
        assert abs(float(x @ h) - y[m]) < 1e-5


def test_sinc_resample_keeps_a_passband_tone() -> None:
    t32 = np.arange(32000) / 32000
    y = np_features.sinc_resample(np.sin(2 * np.pi * 1000 * t32).astype(np.float32), 32000, 16000)
    expected = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(y[50:-50] - expected[50:-50]).max() < 1e-3
    same = np_features.sinc_resample(y, 16000, 16000)
    np.testing.assert_array_equal(same, y)


def test_sv_fbank_chain() -> None:
    wav32k = _speechlike(32000 * 2, 32000, seed=5)
    ours = np_features.sv_fbank(wav32k)
    ref = torch_features.kaldi_fbank(
        torch_features.resample(torch.from_numpy(wav32k), 32000, 16000)
    )
    assert ours.shape == (198, 80)
    assert _rel(ours, ref.numpy()) <= 1e-4


def test_feature_input_errors() -> None:
    with pytest.raises(InputError, match="at least 400"):
        np_features.kaldi_fbank(np.zeros(399, np.float32))
    with pytest.raises(InputError, match="floating"):
        np_features.kaldi_fbank(np.zeros(800, np.int16))
    with pytest.raises(InputError, match=r"\[N\] or \[B, N\]"):
        np_features.linear_spectrogram(np.zeros((1, 1, 4000), np.float32))
    with pytest.raises(InputError, match="more than 704"):
        np_features.linear_spectrogram(np.zeros(704, np.float32))
    with pytest.raises(InputError, match="positive integers"):
        np_features.sinc_resample(np.zeros(100, np.float32), 0, 16000)
    with pytest.raises(ValueError, match="at least 400"):
        torch_features.kaldi_fbank(torch.zeros(10))


def test_audio_features_do_not_import_torch() -> None:
    code = "import sys, gsv_runtime.audio_features; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- the encoder -------------------------------------------------------------------------------


def test_full_model_state_dict_keys() -> None:
    """Keys of upstream ERes2NetV2(baseWidth=24, scale=4, expansion=4), i.e. the pretrained file."""
    sd = ERes2NetV2().state_dict()
    assert len(sd) == 1001
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 157
    shapes = {
        "conv1.weight": (64, 1, 3, 3),
        "layer1.0.conv1.weight": (96, 64, 1, 1),
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer3.0.fuse_models.0.local_att.0.weight": (24, 192, 1, 1),
        "layer4.2.convs.3.weight": (192, 192, 3, 3),
        "layer3_ds.weight": (2048, 1024, 3, 3),
        "fuse34.local_att.0.weight": (512, 4096, 1, 1),
        "fuse34.local_att.4.running_var": (2048,),
        "seg_1.weight": (192, 40960),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.1.shortcut.0.weight" not in sd
    assert ERes2NetV2().embed_dim == 20480


def test_tiny_embed_shapes_and_batch_independence(tiny_sv: ERes2NetV2) -> None:
    assert tiny_sv.embed_dim == 1280
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 97, 80, generator=gen) * 2 - 6
    with torch.no_grad():
        emb = tiny_sv.embed(feats)
        one = tiny_sv.embed(feats[1:2])
        short = tiny_sv.embed(feats[:, :9])
    assert emb.shape == (3, 1280) and short.shape == (3, 1280)
    torch.testing.assert_close(emb[1:2], one, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, T, 80\]"):
        tiny_sv.embed(feats.transpose(1, 2))


def test_embedding_is_non_degenerate(tiny_sv: ERes2NetV2) -> None:
    wavs = [_speechlike(24000, 16000, seed) for seed in (10, 11)]
    feats = torch.from_numpy(np.stack([np_features.kaldi_fbank(w) for w in wavs]))
    tiny_sv.train()  # BatchNorm keeps eval semantics whatever the mode
    with torch.no_grad():
        emb = tiny_sv.embed(feats)
    tiny_sv.eval()
    assert torch.isfinite(emb).all()
    assert 0.05 < emb.abs().mean() < 20
    assert (emb[0] - emb[1]).norm() > 0.05 * emb[0].norm()
    with torch.no_grad():
        again = tiny_sv.embed(feats)
    torch.testing.assert_close(emb, again)


def test_randomize_is_deterministic() -> None:
    a, b = ERes2NetV2(**tiny_sv_kwargs()), ERes2NetV2(**tiny_sv_kwargs())
    randomize_sv_(a, torch.Generator().manual_seed(7))
    randomize_sv_(b, torch.Generator().manual_seed(7))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb), ka
