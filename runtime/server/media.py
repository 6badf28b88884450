"""Audio bodies for HTTP: whole files in every format an installed library can encode, and
streams (WAV with the 0xFFFFFFFF "unknown length" sizes players accept, or raw PCM).

wav, raw/pcm, flac, ogg (Vorbis), opus (Ogg Opus) and mp3 come from libsndfile through
soundfile; aac (ADTS) from PyAV when it is installed (``gsv-rt[server]`` brings it).
"""

from __future__ import annotations

import io
import struct
from typing import Any, Final

import numpy as np

from gsv_runtime.errors import InputError

SOUNDFILE_FORMATS: Final = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
CONTENT_TYPES: Final = {
    "wav": "audio/wav",
    "raw": "audio/pcm",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "mp3": "audio/mpeg",
    "aac": "audio/aac",
}
STREAMABLE: Final = ("wav", "raw", "pcm", "mp3", "opus", "aac")
"""Formats sent chunk by chunk. ogg (Vorbis) is not: the Vorbis encoder in PyAV's ffmpeg is
experimental; nor flac: a FLAC stream header needs the total length."""
_PYAV: Final = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac")}
OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)


def check_format(media: str) -> str:
    """``media`` if this server can encode it.

    Raises:
        InputError: an unknown format, or aac without PyAV.
    """
    if media not in CONTENT_TYPES:
        raise InputError(
            f"media type {media!r} is not supported; use one of {sorted(CONTENT_TYPES)}"
        )
    if media == "aac":
        try:
            import av  # noqa: F401
        except ImportError:
            raise InputError("aac needs PyAV (pip install 'gsv-rt[server]')") from None
    return media


def encode(samples: np.ndarray, rate: int, media: str) -> bytes:
    """A complete file of int16 mono ``samples``."""
    check_format(media)
    if media in ("raw", "pcm"):
        return np.asarray(samples, "<i2").tobytes()
    if media == "aac":
        return _aac(samples, rate)
    import soundfile as sf

    if media == "opus" and rate not in OPUS_RATES:  # Opus runs at 48 kHz and its divisors
        samples, rate = _resample(samples, rate, 48000), 48000
    fmt, subtype = SOUNDFILE_FORMATS[media]
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    import soxr

    out = soxr.resample(samples.astype(np.float32) / 32768.0, rate, target)
    return np.clip(out * 32768.0, -32768, 32767).astype(np.int16)


def _aac(samples: np.ndarray, rate: int) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.asarray(samples, np.int16)[None], format="s16", layout="mono"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


class _Sink:
    """A write-only file for PyAV: a stream cannot seek back to patch headers."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class StreamEncoder:
    """Encodes int16 mono chunks as they come: ``feed`` and ``close`` return the bytes ready.

    wav: a header with unknown sizes, then PCM; raw/pcm: PCM; mp3, opus (Ogg, 48 kHz, pages of
    0.1 s) and aac (ADTS): PyAV.
    """

    def __init__(self, media: str, rate: int) -> None:
        check_format(media)
        if media not in STREAMABLE:
            raise InputError(f"{media} cannot be streamed; stream wav, raw, mp3, opus or aac")
        self.media, self.rate = media, rate
        self._header = wav_stream_header(rate) if media == "wav" else b""
        self._container: Any = None
        if media in _PYAV:
            import av

            fmt, codec = _PYAV[media]
            self._sink = _Sink()
            options = {"page_duration": "100000"} if fmt == "ogg" else {}
            self._container = av.open(self._sink, "w", format=fmt, options=options)
            out_rate = 48000 if media == "opus" else rate
            self._stream = self._container.add_stream(codec, rate=out_rate)
            self._stream.layout = "mono"
            self._resampler = av.AudioResampler(
                format=self._stream.format.name, layout="mono", rate=out_rate
            )

    def feed(self, samples: np.ndarray) -> bytes:
        head, self._header = self._header, b""
        if self._container is None:
            return head + np.asarray(samples, "<i2").tobytes()
        import av

        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, np.int16)[None], format="s16", layout="mono"
        )
        frame.sample_rate = self.rate
        self._encode(self._resampler.resample(frame))
        return self._sink.take()

    def close(self) -> bytes:
        head, self._header = self._header, b""
        if self._container is None:
            return head
        self._encode(self._resampler.resample(None))
        self._encode([None])
        self._container.close()
        return self._sink.take()

    def _encode(self, frames: Any) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)


def wav_stream_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose RIFF and data sizes are 0xFFFFFFFF (length unknown)."""
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )
