"""Audio in and out: read any libsndfile format, mono, resample as upstream does, int16, WAV.

Upstream reads a reference twice (``GPT_SoVITS/TTS_infer_pack/TTS.py``): with
``librosa.load(sr=16000)`` (mono mean, soxr HQ resampling) for HuBERT, and with torchaudio
(mean of two channels, sinc resampling) at the SoVITS rate for the spectrogram. We do the same
with ``soxr`` and :func:`gsv_runtime.audio_features.sinc_resample`.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from gsv_runtime.audio_features import sinc_resample
from gsv_runtime.errors import InputError, first_line

_UMASK: Final = os.umask(0o022)
os.umask(_UMASK)
SSL_SAMPLE_RATE: Final = 16000
REF_MIN_SECONDS: Final = 3.0
REF_MAX_SECONDS: Final = 10.0
"""Upstream refuses references outside 3–10 s, judged on the 16 kHz signal (48,000–160,000)."""
SILENCE_PEAK: Final = 1e-4
"""A reference whose peak stays below this (−80 dBFS) is treated as silent."""
MAX_AUDIO_SECONDS: Final = 60.0
"""Longest clip read at all (checked from the header, before decoding)."""
MAX_CHANNELS: Final = 8
MAX_SAMPLE_RATE: Final = 384_000


def read_audio(path: str | Path, max_seconds: float = MAX_AUDIO_SECONDS) -> tuple[np.ndarray, int]:
    """Samples ``[frames, channels]`` float32 and the sample rate of any libsndfile file.

    Duration, channels and rate are checked from the header before anything is decoded, and
    decoding stops at ``max_seconds`` (a header may lie), so a small file cannot make a large
    allocation.

    Raises:
        InputError: missing, unreadable, empty, too long, too many channels, an absurd rate, or
            non-finite samples.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file")
    try:
        with sf.SoundFile(str(path)) as f:
            sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            if not 0 < sr <= MAX_SAMPLE_RATE or not 0 < channels <= MAX_CHANNELS:
                raise InputError(
                    f"{path}: {channels} channels at {sr} Hz is outside what a reference can be "
                    f"(≤ {MAX_CHANNELS} channels, ≤ {MAX_SAMPLE_RATE} Hz)"
                )
            limit = int(max_seconds * sr)
            if frames > limit:
                raise InputError(
                    f"{path}: {frames / sr:.1f} s of audio; at most {max_seconds:g} s is read"
                )
            data = f.read(limit + 1, dtype="float32", always_2d=True)
    except InputError:
        raise
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError
        raise InputError(f"{path}: cannot read audio ({first_line(exc)})") from None
    if data.size == 0:
        raise InputError(f"{path}: the audio file holds no samples")
    if len(data) > limit:
        raise InputError(f"{path}: more than {max_seconds:g} s of audio")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the audio holds NaN or infinite samples")
    return data, sr


def resample_hq(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    """soxr HQ resampling of a mono signal (what ``librosa.load(sr=...)`` does by default)."""
    import soxr

    if sr == target:
        return wav.astype(np.float32, copy=False)
    return soxr.resample(wav, sr, target, quality="HQ").astype(np.float32, copy=False)


@dataclass(frozen=True)
class ReferenceAudio:
    """A reference clip prepared for both of upstream's reading paths."""

    wav16k: np.ndarray
    """Mono 16 kHz (librosa-style) for HuBERT; the caller appends upstream's 0.6 s of zeros."""
    wav_model: np.ndarray
    """Mono at the SoVITS rate (torchaudio-style), peak-limited as upstream: ÷ min(2, peak)."""
    seconds: float
    mono: np.ndarray | None = None
    """The file's mono samples at ``source_rate``, untouched (v3/v4 reference mel input)."""
    source_rate: int = 0


def load_reference(
    path: str | Path, model_rate: int = 32000, check_duration: bool = True
) -> ReferenceAudio:
    """Read a reference clip; refuse silence and, unless told otherwise, lengths outside 3–10 s.

    Raises:
        InputError: unreadable, empty, silent, or too short/long a reference.
    """
    data, sr = read_audio(path)
    mono = data.mean(axis=1).astype(np.float32)
    if float(np.abs(mono).max()) < SILENCE_PEAK:
        raise InputError(f"{path}: the reference audio is silent")
    wav16k = resample_hq(mono, sr, SSL_SAMPLE_RATE)
    seconds = wav16k.shape[0] / SSL_SAMPLE_RATE
    lo, hi = REF_MIN_SECONDS * SSL_SAMPLE_RATE, REF_MAX_SECONDS * SSL_SAMPLE_RATE
    if check_duration and not lo <= wav16k.shape[0] <= hi:
        raise InputError(
            f"{path}: reference audio is {seconds:.2f} s; it must be 3–10 s long "
            "(upstream's rule; pass check_duration=False / --any-length to override)"
        )
    # torchaudio path: only a 2-channel file is averaged there; we average any channel count
    wav_model = sinc_resample(mono, sr, model_rate) if sr != model_rate else mono
    peak = float(np.abs(wav_model).max())
    if peak > 1.0:
        wav_model = wav_model / min(2.0, peak)
    return ReferenceAudio(wav16k, wav_model.astype(np.float32), seconds, mono, int(sr))


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] → int16 as upstream (×32768, truncated), but clipped where upstream wraps.

    Upstream's ``(audio * 32768).astype(int16)`` turns a sample of exactly +1.0 (every
    peak-normalised fragment has one) into −32768, a click; we clip it to 32767 instead.
    """
    return np.clip(audio * 32768.0, -32768, 32767).astype(np.int16)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete 16-bit PCM WAV file in memory."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write a WAV atomically (temporary file + rename); ``-`` writes to standard output.

    Raises:
        InputError: the destination cannot be written.
    """
    data = wav_bytes(samples, sample_rate)
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a written WAV is a normal file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
