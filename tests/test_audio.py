"""Reference audio reading (formats, rates, channels, rules) and WAV output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gsv_runtime.audio import load_reference, read_audio, to_int16, write_wav
from gsv_runtime.errors import InputError


def _tone(seconds: float, sr: int, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = amp * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return np.stack([mono * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "subtype", "suffix"),
    [
        ("WAV", "PCM_16", ".wav"),
        ("FLAC", "PCM_16", ".flac"),
        ("OGG", "VORBIS", ".ogg"),
        ("MP3", "MPEG_LAYER_III", ".mp3"),
    ],
)
def test_formats_rates_and_channels(tmp_path: Path, fmt: str, subtype: str, suffix: str) -> None:
    path = tmp_path / f"ref{suffix}"
    sf.write(path, _tone(5.0, 44100, channels=2), 44100, format=fmt, subtype=subtype)
    ref = load_reference(path)
    assert abs(ref.seconds - 5.0) < 0.06
    assert ref.wav16k.ndim == 1 and abs(len(ref.wav16k) - 80000) < 1000
    assert abs(len(ref.wav_model) - 160000) < 3000
    assert 0.1 < np.abs(ref.wav_model).max() <= 1.0


def test_same_rate_needs_no_resampling(tmp_path: Path) -> None:
    path = tmp_path / "ref.wav"
    sf.write(path, _tone(4.0, 32000), 32000, subtype="FLOAT")
    ref = load_reference(path)
    np.testing.assert_array_equal(ref.wav_model, _tone(4.0, 32000)[:, 0])


def test_loud_reference_is_limited_as_upstream(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    sf.write(path, _tone(4.0, 32000, amp=1.5), 32000, subtype="FLOAT")
    ref = load_reference(path)
    peak = np.abs(_tone(4.0, 32000, amp=1.5)).max()
    np.testing.assert_allclose(np.abs(ref.wav_model).max(), peak / min(2.0, peak), rtol=1e-6)


@pytest.mark.parametrize("seconds", [2.5, 10.5])
def test_duration_rule(tmp_path: Path, seconds: float) -> None:
    path = tmp_path / "ref.wav"
    sf.write(path, _tone(seconds, 16000), 16000)
    with pytest.raises(InputError, match="must be 3–10 s long"):
        load_reference(path)
    assert abs(load_reference(path, check_duration=False).seconds - seconds) < 0.01


def test_silent_empty_unreadable_missing(tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((48000, 1), np.float32), 16000)
    with pytest.raises(InputError, match="silent"):
        load_reference(silent)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(InputError, match="no samples"):
        read_audio(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF????WAVEnot really")
    with pytest.raises(InputError, match="cannot read audio"):
        read_audio(junk)
    with pytest.raises(InputError, match="no such audio file"):
        read_audio(tmp_path / "nope.wav")


def test_int16_clips_instead_of_wrapping() -> None:
    out = to_int16(np.array([1.0, -1.0, 0.5, -0.5, 1.2], dtype=np.float32))
    assert out.tolist() == [32767, -32768, 16384, -16384, 32767]


def test_write_wav_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    write_wav(path, to_int16(_tone(1.0, 32000)[:, 0]), 32000)
    data, sr = sf.read(path, dtype="int16")
    assert sr == 32000 and len(data) == 32000
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    with pytest.raises(InputError, match="cannot write"):
        write_wav(tmp_path / "no-such-dir" / "x.wav", data, 32000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_spectrogram_floor_is_upstreams_epsilon() -> None:
    """Silence gives sqrt(1e-8) in every bin, as upstream's spectrogram_torch."""
    from gsv_runtime.audio_features import linear_spectrogram

    spec = linear_spectrogram(np.zeros(32000, np.float32))
    np.testing.assert_allclose(spec, 1e-4, rtol=1e-3)
