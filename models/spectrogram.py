"""Linear magnitude spectrogram of the reference audio, as SoVITS reads it (torch reference)."""

from __future__ import annotations

import torch


def normalize_peak(audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Scale rows whose peak exceeds 1 down by ``min(2, peak)``; other rows are unchanged.

    Mirrors the reference loading of upstream ``GPT_SoVITS/TTS_infer_pack/TTS.py``
    (``_get_ref_spec``). ``audio`` is ``[B, N]``; ``lengths`` excludes right padding from the peak.
    """
    mag = audio.abs()
    if lengths is not None:
        valid = torch.arange(audio.shape[1], device=audio.device)[None, :] < lengths[:, None]
        mag = mag * valid
    peak = mag.amax(dim=1, keepdim=True)  # (B, 1)
    scale = torch.where(peak > 1, peak.clamp(max=2.0), torch.ones_like(peak))
    return audio / scale


def linear_spectrogram(
    audio: torch.Tensor,
    lengths: torch.Tensor | None = None,
    n_fft: int = 2048,
    hop_length: int = 640,
    win_length: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude STFT identical to upstream ``module/mel_processing.py::spectrogram_torch``.

    Reflect-pads ``(n_fft − hop)/2`` samples per side, then a periodic Hann STFT with
    ``center=False`` and ``sqrt(re² + im² + 1e-8)`` (no log).

    Args:
        audio: ``[B, N]`` float waveform at the SoVITS sample rate, rows right-padded.
        lengths: valid samples per row (``[B]``); None means every row is ``N`` long. Each row
            is reflect-padded at its own end, so its frames equal those of the row alone.
        n_fft: FFT size (``filter_length``).
        hop_length: hop in samples.
        win_length: window length.

    Returns:
        ``(spec [B, n_fft//2 + 1, F], frame_lengths [B])``; frames past a row's length are
        garbage and must be masked with ``frame_lengths``.

    Raises:
        ValueError: if a row is not longer than the reflect padding.
    """
    b, n = audio.shape
    pad = (n_fft - hop_length) // 2
    if lengths is None:
        lengths = torch.full((b,), n, dtype=torch.long, device=audio.device)
    if bool((lengths <= pad).any()):
        raise ValueError(f"reference audio must be longer than {pad} samples")
    # per-row reflect padding as a gather: index |p| at the start, 2(L-1) - p past the end
    pos = torch.arange(n + 2 * pad, device=audio.device) - pad  # (N + 2·pad,)
    last = (lengths - 1)[:, None]  # (B, 1)
    idx = pos.abs()[None, :].expand(b, -1)
    idx = torch.where(idx > last, 2 * last - idx, idx).clamp(0, n - 1)  # (B, N + 2·pad)
    padded = torch.gather(audio, 1, idx)
    window = torch.hann_window(win_length, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(
        padded,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-8)  # (B, bins, F)
    frame_lengths = (lengths + 2 * pad - n_fft) // hop_length + 1
    return spec, frame_lengths
