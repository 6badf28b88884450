"""Host-side audio features in numpy: linear spectrogram, Kaldi fbank, torchaudio-style resampler.

These are the torch-free twins of ``gsv_models.spectrogram`` and ``gsv_models.fbank`` (the latter
documents what upstream does with a reference clip). The reference path of a v2Pro/v2ProPlus
voice is::

    wav32k = sinc_resample(wav, sr, 32000)            # torchaudio Resample, only if sr != 32000
    wav32k /= min(2, peak) when peak > 1
    spec = linear_spectrogram(wav32k)                  # → ref_enc
    fbank = kaldi_fbank(sinc_resample(wav32k, 32000, 16000))   # → speaker encoder (sv_fbank)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from gsv_runtime.errors import InputError

SV_SAMPLE_RATE: Final = 16000
SOVITS_SAMPLE_RATE: Final = 32000
NUM_MEL_BINS: Final = 80
FRAME_LENGTH: Final = 400
FRAME_SHIFT: Final = 160
FFT_SIZE: Final = 512
PREEMPHASIS: Final = 0.97
LOW_FREQ: Final = 20.0
POVEY_POWER: Final = 0.85
LOG_FLOOR: Final = float(np.finfo(np.float32).eps)
SPEC_EPS: Final = 1e-8
"""Added to the power before the square root in the linear spectrogram (upstream's 1e-8)."""


def _as_float32(wav: np.ndarray, name: str = "wav") -> np.ndarray:
    arr = np.asarray(wav)
    if arr.ndim not in (1, 2):
        raise InputError(f"{name} must be [N] or [B, N], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{name} must be floating point in [-1, 1], got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _frames(x: np.ndarray, length: int, shift: int) -> np.ndarray:
    """Read-only view [..., 1 + (N − length) // shift, length] of frames that fit entirely."""
    return sliding_window_view(x, length, axis=-1)[..., ::shift, :]


@lru_cache(maxsize=8)
def _hann_periodic(win: int, n_fft: int) -> np.ndarray:
    n = np.arange(win, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win)
    left = (n_fft - win) // 2  # torch.stft centres a shorter window inside the FFT frame
    out = np.zeros(n_fft, dtype=np.float32)
    out[left : left + win] = w
    out.flags.writeable = False
    return out


def linear_spectrogram(
    wav: np.ndarray, n_fft: int = 2048, hop: int = 640, win: int = 2048
) -> np.ndarray:
    """Magnitude spectrogram of upstream ``module/mel_processing.py::spectrogram_torch``.

    Reflect padding of ``(n_fft − hop) // 2`` samples on each side (no edge repeat), frames
    without centring, periodic Hann window, one-sided FFT, ``sqrt(re² + im² + 1e-8)``, no log.

    Args:
        wav: Float waveform [N] or [B, N] (32 kHz, in [-1, 1]).
        n_fft: FFT size (2048 for every upstream version).
        hop: Frame shift (640 at 32 kHz).
        win: Hann window length, ≤ n_fft.

    Returns:
        float32 [..., n_fft // 2 + 1, frames], frames = 1 + (N + 2·pad − n_fft) // hop.

    Raises:
        InputError: Bad shape or dtype, or a waveform not longer than the padding.
    """
    x = _as_float32(wav)
    pad = (n_fft - hop) // 2
    if x.shape[-1] <= pad:
        raise InputError(f"wav needs more than {pad} samples, got {x.shape[-1]}")
    if not 0 < win <= n_fft:
        raise InputError(f"win must be in [1, n_fft={n_fft}], got {win}")
    widths = [(0, 0)] * (x.ndim - 1) + [(pad, pad)]
    x = np.pad(x, widths, mode="reflect")
    frames = _frames(x, n_fft, hop) * _hann_periodic(win, n_fft)  # (..., T, n_fft)
    spec = _rfft32(frames)  # (..., T, n_fft // 2 + 1)
    mag = np.sqrt(spec.real * spec.real + spec.imag * spec.imag + np.float32(SPEC_EPS))
    return np.ascontiguousarray(np.swapaxes(mag, -1, -2))


def _rfft32(frames: np.ndarray, n: int | None = None) -> np.ndarray:
    """complex64 rfft over the last axis: numpy 2 keeps float32 input in single precision,
    numpy 1 computes in double and would make every feature float64."""
    return np.fft.rfft(frames, n=n, axis=-1).astype(np.complex64, copy=False)


def _mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


@lru_cache(maxsize=4)
def kaldi_mel_banks(
    num_bins: int = NUM_MEL_BINS,
    fft_size: int = FFT_SIZE,
    sample_rate: int = SV_SAMPLE_RATE,
    low_freq: float = LOW_FREQ,
) -> np.ndarray:
    """Kaldi triangular mel filters, float32 [num_bins, fft_size // 2 + 1] (read-only).

    ``num_bins + 2`` edges equally spaced on the mel scale 1127·ln(1 + f/700) from ``low_freq``
    to Nyquist; each FFT bin centre gets ``max(0, min(rising, falling))``; the Nyquist column is
    zero. Upstream: ``GPT_SoVITS/eres2net/kaldi.py::get_mel_banks`` (no VTLN).
    """
    mel_lo, mel_hi = float(_mel(low_freq)), float(_mel(sample_rate / 2.0))
    edges = mel_lo + (mel_hi - mel_lo) / (num_bins + 1) * np.arange(num_bins + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bin_mel = _mel(np.arange(fft_size // 2) * (sample_rate / fft_size))[None, :]
    tri = np.minimum((bin_mel - left) / (center - left), (right - bin_mel) / (right - center))
    banks = np.zeros((num_bins, fft_size // 2 + 1), dtype=np.float32)
    banks[:, :-1] = np.maximum(tri, 0.0)
    banks.flags.writeable = False
    return banks


@lru_cache(maxsize=1)
def _povey_window() -> np.ndarray:
    n = np.arange(FRAME_LENGTH, dtype=np.float64)
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / (FRAME_LENGTH - 1))) ** POVEY_POWER
    w = w.astype(np.float32)
    w.flags.writeable = False
    return w


def kaldi_fbank(wav16k: np.ndarray) -> np.ndarray:
    """80-bin log-mel fbank of 16 kHz audio, as upstream's speaker-verification input.

    Kaldi ``compute-fbank-feats`` with upstream ``GPT_SoVITS/sv.py``'s options: 25 ms / 10 ms
    frames that fit entirely, DC removal per frame, pre-emphasis 0.97, Povey window, FFT 512,
    power spectrum, mel bins 20 Hz – 8 kHz, natural log floored at float32 epsilon, no dither,
    no energy, no mean normalisation.

    Args:
        wav16k: Float waveform in [-1, 1] (not int16-scaled), [N] or [B, N], N ≥ 400.

    Returns:
        float32 [frames, 80] or [B, frames, 80], frames = 1 + (N − 400) // 160.

    Raises:
        InputError: Bad shape or dtype, or fewer than 400 samples.
    """
    x = _as_float32(wav16k, "wav16k")
    if x.shape[-1] < FRAME_LENGTH:
        raise InputError(f"wav16k needs at least {FRAME_LENGTH} samples, got {x.shape[-1]}")
    frames = _frames(x, FRAME_LENGTH, FRAME_SHIFT)  # (..., M, 400)
    frames = frames - frames.mean(axis=-1, keepdims=True, dtype=np.float32)
    emph = np.empty_like(frames)
    emph[..., 1:] = frames[..., 1:] - np.float32(PREEMPHASIS) * frames[..., :-1]
    emph[..., 0] = frames[..., 0] - np.float32(PREEMPHASIS) * frames[..., 0]
    emph *= _povey_window()
    spec = _rfft32(emph, FFT_SIZE)  # (..., M, 257)
    power = spec.real * spec.real + spec.imag * spec.imag
    mel = power @ kaldi_mel_banks().T  # (..., M, 80)
    return np.log(np.maximum(mel, np.float32(LOG_FLOOR)))


@lru_cache(maxsize=8)
def sinc_resample_kernel(orig_sr: int, new_sr: int) -> tuple[np.ndarray, int, int]:
    """Polyphase kernel of torchaudio's default resampler ("sinc_interp_hann", width 6, 0.99).

    Same formula as ``gsv_models.fbank.sinc_resample_kernel``: with reduced rates ``o, n``,
    cutoff ``c = 0.99·min(o, n)``, ``width = ceil(6·o / c)``, phase ``j`` and tap ``k``:
    ``t = clamp(c·((k − width)/o − j/n), ±6)``, ``h = (c/o)·sinc(πt)·cos²(πt/12)``.

    Returns:
        (kernel float32 [2·width + o, n] read-only, width, o): taps × phases, ready for a matmul.
    """
    lowpass, rolloff = 6, 0.99
    g = math.gcd(orig_sr, new_sr)
    o, n = orig_sr // g, new_sr // g
    cutoff = min(o, n) * rolloff
    width = math.ceil(lowpass * o / cutoff)
    taps = np.arange(-width, width + o, dtype=np.float64) / o  # (K,)
    # torchaudio forms j / n in float32 before mixing it with the float64 taps
    phase = (np.arange(n, dtype=np.float32) / np.float32(n)).astype(np.float64)  # (n,)
    t = np.clip((taps[:, None] - phase[None, :]) * cutoff, -lowpass, lowpass)  # (K, n)
    window = np.cos(t * math.pi / lowpass / 2) ** 2
    t = t * math.pi
    safe = np.where(t == 0, 1.0, t)
    sinc = np.where(t == 0, 1.0, np.sin(safe) / safe)
    kernel = (sinc * window * (cutoff / o)).astype(np.float32)
    kernel.flags.writeable = False
    return kernel, width, o


def sinc_resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample like ``torchaudio.transforms.Resample(orig_sr, new_sr)`` (upstream's resampler).

    Args:
        wav: Float waveform [N] or [B, N].
        orig_sr: Its sample rate in Hz (integer).
        new_sr: The wanted rate in Hz (integer).

    Returns:
        float32 [..., ceil(N · new_sr / orig_sr)]; the input (as float32) when the rates match.

    Raises:
        InputError: Bad shape, dtype or rates.
    """
    x = _as_float32(wav)
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise InputError(f"sample rates must be positive integers, got {orig_sr} and {new_sr}")
    if orig_sr == new_sr:
        return x
    kernel, width, o = sinc_resample_kernel(int(orig_sr), int(new_sr))
    length = x.shape[-1]
    widths = [(0, 0)] * (x.ndim - 1) + [(width, width + o)]
    frames = _frames(np.pad(x, widths), kernel.shape[0], o)  # (..., N // o + 1, K)
    y = frames @ kernel  # (..., N // o + 1, n): phases of each input block side by side
    y = y.reshape(*x.shape[:-1], -1)
    out_len = -(-length * int(new_sr) // int(orig_sr))
    return np.ascontiguousarray(y[..., :out_len])


def sv_fbank(wav32k: np.ndarray) -> np.ndarray:
    """Speaker-encoder input from the (peak-normalised) 32 kHz reference, as upstream does.

    ``kaldi_fbank(sinc_resample(wav32k, 32000, 16000))``.
    """
    return kaldi_fbank(sinc_resample(wav32k, SOVITS_SAMPLE_RATE, SV_SAMPLE_RATE))


MEL_LOG_FLOOR: Final = 1e-5
"""Floor of the mel energies before the natural log (upstream ``spectral_normalize_torch``)."""
_SLANEY_LINEAR_HZ: Final = 200.0 / 3
"""Slaney mel scale: one mel per 66.7 Hz below :data:`_SLANEY_LOG_HZ` ..."""
_SLANEY_LOG_HZ: Final = 1000.0
_SLANEY_LOG_STEP: Final = math.log(6.4) / 27.0
"""... and logarithmic above it (27 mels per factor 6.4)."""


def _hz_to_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _SLANEY_LINEAR_HZ
    log_mel0 = _SLANEY_LOG_HZ / _SLANEY_LINEAR_HZ
    above = hz >= _SLANEY_LOG_HZ
    safe = np.where(above, hz, _SLANEY_LOG_HZ)
    return np.where(above, log_mel0 + np.log(safe / _SLANEY_LOG_HZ) / _SLANEY_LOG_STEP, mel)


def _slaney_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_mel0 = _SLANEY_LOG_HZ / _SLANEY_LINEAR_HZ
    hz = mel * _SLANEY_LINEAR_HZ
    return np.where(
        mel >= log_mel0, _SLANEY_LOG_HZ * np.exp(_SLANEY_LOG_STEP * (mel - log_mel0)), hz
    )


@lru_cache(maxsize=8)
def slaney_mel_banks(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Area-normalised triangular mel filters on the Slaney scale, float32 [n_mels, n_fft/2+1].

    What ``librosa.filters.mel(sr=..., n_fft=..., n_mels=..., fmin=..., fmax=...)`` returns with
    its defaults (``htk=False``, ``norm="slaney"``), which upstream's ``mel_spectrogram_torch``
    (``module/mel_processing.py``) uses for the v3/v4 reference mel: ``n_mels + 2`` edges evenly
    spaced in mel from ``fmin`` to ``fmax`` (Nyquist when None), each filter ``max(0,
    min(rising, falling))`` over the FFT bin frequencies, scaled by ``2 / (right − left)`` Hz.
    Computed in float64 with librosa's two float32 roundings (upstream pins librosa 0.10.2);
    returned read-only.
    """
    top = sample_rate / 2.0 if fmax is None else float(fmax)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # (bins,) librosa ≥ 0.10's bin centres
    edges = _slaney_to_hz(np.linspace(_hz_to_slaney(fmin), _hz_to_slaney(top), n_mels + 2))
    widths = np.diff(edges)  # (n_mels + 1,)
    ramps = edges[:, None] - freqs[None, :]  # (n_mels + 2, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # librosa stores the triangles in float32, then scales them in float64 and rounds again
    banks = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    out = (banks * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)
    out.flags.writeable = False
    return out


def log_mel_spectrogram(
    wav: np.ndarray,
    sample_rate: int,
    n_fft: int,
    hop: int,
    win: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Natural-log Slaney mel spectrogram of upstream ``mel_spectrogram_torch`` (center=False).

    :func:`linear_spectrogram` (reflect pad ``(n_fft − hop) // 2``, periodic Hann,
    ``sqrt(power + 1e-8)``), then :func:`slaney_mel_banks` and ``log(max(mel, 1e-5))``. The
    v3 reference mel is ``(24000, 1024, 256, 1024, 100)``, v4's ``(32000, 1280, 320, 1280,
    100)`` (upstream ``TTS_infer_pack/TTS.py::mel_fn`` / ``mel_fn_v4``).

    Returns:
        float32 [..., n_mels, frames].

    Raises:
        InputError: as :func:`linear_spectrogram`.
    """
    spec = linear_spectrogram(wav, n_fft, hop, win)  # (..., bins, T)
    mel = np.matmul(slaney_mel_banks(int(sample_rate), int(n_fft), int(n_mels), fmin, fmax), spec)
    return np.log(np.maximum(mel, np.float32(MEL_LOG_FLOOR))).astype(np.float32, copy=False)
