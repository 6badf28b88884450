"""Torch reference features of the speaker-verification path: sinc resampler and Kaldi fbank.

What upstream computes for v2Pro/v2ProPlus (``TTS_infer_pack/TTS.py::_get_ref_spec`` and
``inference_webui.py::get_spepc``): the reference file is loaded as float in [-1, 1], two
channels are averaged, it is resampled to the SoVITS rate (32 kHz) with
``torchaudio.transforms.Resample(sr, 32000)`` unless already at 32 kHz, and divided by
``min(2, peak)`` when its peak exceeds 1. The linear spectrogram for ``ref_enc`` is taken from
that 32 kHz signal, and the speaker-verification input is ``Resample(32000, 16000)`` of the same
(normalised) signal: the audio is resampled twice. (The spectrogram and the peak normalisation
are in ``gsv_models.spectrogram``.) Both resamplers are torchaudio's defaults
(``sinc_interp_hann``, ``lowpass_filter_width=6``, ``rolloff=0.99``), reproduced by
:func:`resample`. ``GPT_SoVITS/sv.py`` then computes ``kaldi.fbank(wav, num_mel_bins=80,
sample_frequency=16000, dither=0)`` per utterance, i.e. :func:`kaldi_fbank`.

``gsv_runtime.audio_features`` holds numpy twins of these functions for the torch-free runtime.
"""

from __future__ import annotations

import math
from typing import Final

import torch
from torch import Tensor

SV_SAMPLE_RATE: Final = 16000
"""Sample rate of the speaker-verification input."""
NUM_MEL_BINS: Final = 80
FRAME_LENGTH: Final = 400
"""25 ms at 16 kHz."""
FRAME_SHIFT: Final = 160
"""10 ms at 16 kHz."""
FFT_SIZE: Final = 512
"""Frame length rounded up to a power of two (Kaldi ``round_to_power_of_two``)."""
PREEMPHASIS: Final = 0.97
LOW_FREQ: Final = 20.0
POVEY_POWER: Final = 0.85
"""Povey window = symmetric Hann window raised to this power."""
LOG_FLOOR: Final = float(torch.finfo(torch.float32).eps)
"""Mel energies are floored at float32 epsilon before the log."""

LOWPASS_FILTER_WIDTH: Final = 6
ROLLOFF: Final = 0.99


def _mel(freq_hz: Tensor | float) -> Tensor | float:
    """Kaldi's mel scale, 1127 · ln(1 + f / 700)."""
    if isinstance(freq_hz, Tensor):
        return 1127.0 * torch.log1p(freq_hz / 700.0)
    return 1127.0 * math.log1p(freq_hz / 700.0)


def kaldi_mel_banks(
    num_bins: int = NUM_MEL_BINS,
    fft_size: int = FFT_SIZE,
    sample_rate: int = SV_SAMPLE_RATE,
    low_freq: float = LOW_FREQ,
) -> Tensor:
    """Triangular mel filters [num_bins, fft_size // 2 + 1] in float32 (Nyquist column is zero).

    Kaldi's layout (upstream ``GPT_SoVITS/eres2net/kaldi.py::get_mel_banks`` with high_freq at
    Nyquist and no VTLN): ``num_bins + 2`` edges equally spaced in mel between ``low_freq`` and
    Nyquist, triangles evaluated at the mel value of each FFT bin centre. Computed in float64.
    """
    mel_lo = _mel(float(low_freq))
    mel_hi = _mel(sample_rate / 2.0)
    delta = (mel_hi - mel_lo) / (num_bins + 1)
    edges = mel_lo + delta * torch.arange(num_bins + 2, dtype=torch.float64)  # (num_bins + 2,)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bin_mel = _mel(torch.arange(fft_size // 2, dtype=torch.float64) * (sample_rate / fft_size))
    rising = (bin_mel - left) / (center - left)  # (num_bins, fft_size // 2)
    falling = (right - bin_mel) / (right - center)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    banks = torch.cat((banks, banks.new_zeros(num_bins, 1)), dim=1)  # (num_bins, fft_size//2 + 1)
    return banks.to(torch.float32)


def povey_window(length: int = FRAME_LENGTH) -> Tensor:
    """Symmetric Hann window to the power 0.85, float32 [length]."""
    n = torch.arange(length, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2.0 * math.pi * n / (length - 1))
    return hann.pow(POVEY_POWER).to(torch.float32)


def kaldi_fbank(wav: Tensor) -> Tensor:
    """Log-mel filterbank of 16 kHz audio, as upstream's SV path computes it.

    Equivalent to upstream ``kaldi.fbank(wav[None], num_mel_bins=80, sample_frequency=16000,
    dither=0)`` (``GPT_SoVITS/sv.py``): 25 ms / 10 ms frames that fit entirely (snip_edges),
    per-frame DC removal, pre-emphasis 0.97 (first sample against itself), Povey window, zero
    padding to 512, power spectrum, 80 mel bins from 20 Hz to 8 kHz, natural log floored at
    float32 epsilon, no energy column, no mean normalisation.

    Args:
        wav: Float waveform in [-1, 1] (not int16-scaled), [N] or [B, N], N ≥ 400.

    Returns:
        [frames, 80] or [B, frames, 80] float32, frames = 1 + (N − 400) // 160.

    Raises:
        ValueError: Fewer than 400 samples or more than two dimensions.
    """
    if wav.dim() not in (1, 2):
        raise ValueError(f"wav must be [N] or [B, N], got shape {list(wav.shape)}")
    if wav.shape[-1] < FRAME_LENGTH:
        raise ValueError(f"wav needs at least {FRAME_LENGTH} samples, got {wav.shape[-1]}")
    frames = wav.to(torch.float32).unfold(-1, FRAME_LENGTH, FRAME_SHIFT)  # (..., M, 400)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)
    frames = (frames - PREEMPHASIS * previous) * povey_window().to(frames.device)
    power = torch.fft.rfft(frames, n=FFT_SIZE).abs().pow(2.0)  # (..., M, 257)
    banks = kaldi_mel_banks().to(frames.device)  # (80, 257)
    return torch.clamp(power @ banks.T, min=LOG_FLOOR).log()  # (..., M, 80)


def sinc_resample_kernel(
    orig_sr: int,
    new_sr: int,
    lowpass_filter_width: int = LOWPASS_FILTER_WIDTH,
    rolloff: float = ROLLOFF,
) -> tuple[Tensor, int]:
    """Polyphase filter of torchaudio's default resampler ("sinc_interp_hann").

    With ``o = orig_sr / g`` and ``n = new_sr / g`` (``g`` their gcd), the cutoff is
    ``c = min(o, n) · rolloff`` (in units of the reduced rates) and ``width = ceil(L · o / c)``,
    ``L = lowpass_filter_width``. Output phase ``j`` (0 ≤ j < n) uses taps ``k`` in
    ``[0, 2·width + o)`` with ``t = c · ((k − width) / o − j / n)`` clamped to ±L:
    ``h[j, k] = (c / o) · sinc(π t) · cos²(π t / (2L))``. Computed in float64 (with ``j / n``
    rounded to float32, as torchaudio does) and returned as float32 [n, 1, 2·width + o].

    Returns:
        (kernel, width): the conv1d weight and the zero padding placed before the signal.
    """
    g = math.gcd(int(orig_sr), int(new_sr))
    o, n = int(orig_sr) // g, int(new_sr) // g
    cutoff = min(o, n) * rolloff
    width = math.ceil(lowpass_filter_width * o / cutoff)
    taps = torch.arange(-width, width + o, dtype=torch.float64) / o  # (K,)
    phase = (torch.arange(n, dtype=torch.float32) / n).to(torch.float64)  # (n,)
    t = (taps[None, :] - phase[:, None]) * cutoff  # (n, K)
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = sinc * window * (cutoff / o)
    return kernel.to(torch.float32)[:, None, :], width


def resample(wav: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Band-limited resampling equal to ``torchaudio.transforms.Resample(orig_sr, new_sr)``.

    Zero-pads ``width`` samples before and ``width + o`` after the signal, applies the kernel of
    :func:`sinc_resample_kernel` with stride ``o`` (one output per phase) and keeps the first
    ``ceil(N · new_sr / orig_sr)`` samples.

    Args:
        wav: Float waveform [..., N].
        orig_sr: Its sample rate (an integer number of Hz).
        new_sr: The wanted sample rate.

    Returns:
        [..., ceil(N · new_sr / orig_sr)], same dtype; ``wav`` itself when the rates are equal.

    Raises:
        ValueError: A non-positive rate, or a non-floating waveform.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} and {new_sr}")
    if not wav.is_floating_point():
        raise ValueError(f"wav must be a floating-point tensor, got {wav.dtype}")
    if orig_sr == new_sr:
        return wav
    kernel, width = sinc_resample_kernel(orig_sr, new_sr)
    g = math.gcd(int(orig_sr), int(new_sr))
    o, n = int(orig_sr) // g, int(new_sr) // g
    lead, length = wav.shape[:-1], wav.shape[-1]
    x = torch.nn.functional.pad(wav.reshape(-1, 1, length), (width, width + o))  # (B, 1, N')
    y = torch.nn.functional.conv1d(x, kernel.to(wav), stride=o)  # (B, n, N // o + 1)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # (B, n · (N // o + 1)), phases interleaved
    out_len = -(-length * n // o)
    return y[:, :out_len].reshape(*lead, out_len)
