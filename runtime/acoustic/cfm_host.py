"""Host-side parts of the CFM stage (v3/v4/v5): manifest parameters, sampler settings, the
length arithmetic of upstream's ``decode_encp`` and the SOLA join of parallel chunking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from gsv_runtime.errors import BundleError, InputError

CFG_THRESHOLD: Final = 1e-5
"""Guidance runs only for ``cfg_rate`` above this (upstream's test)."""
OVERLAP_FRAMES: Final = 12
"""Parallel chunking: mel frames consecutive windows share (upstream ``overlapped_len``)."""
SOLA_SEARCH: Final = 320
"""Parallel chunking: samples the SOLA join searches for the best alignment."""


@dataclass(frozen=True)
class CfmParams:
    """What the host needs besides the graphs; the manifest's ``audio`` section holds it."""

    sample_rate: int
    """Output rate of the vocoder (24000 v3, 48000 v4)."""
    hop: int
    """Waveform samples per mel frame (256 v3, 480 v4)."""
    feature_upsample: float
    """Mel frames per 50 Hz content frame (1.875 v3, 2 v4)."""
    mask_frames_per_code: float
    """Upstream's ``wns1`` mask length per 25 Hz code (3.875 v3, 4 v4)."""
    mel: dict[str, Any]
    """Reference mel: sample_rate, n_fft, hop, win, n_mels, fmin, fmax."""
    spec_min: float = -12.0
    spec_max: float = 2.0
    t_ref: int = 468
    t_chunk: int = 934
    steps: int = 32
    temperature: float = 1.0
    cfg_rate: float = 0.0
    cfg_drops_text: bool = True
    allowed_steps: tuple[int, ...] | None = None
    """Step counts the model accepts (v5: 4, 8, 16, 32); None: any in [1, 1000]."""
    max_cfg_rate: float | None = None
    """Largest guidance rate (v5: 2); None: no bound."""
    tail_frames: int = 0
    """Chunking policy. 0: upstream's v3/v4 sequential chunks, each prompted by the previous
    chunk's output. > 0: v5's ``synthesize_v5_mel``, each chunk after the first prompted by
    the reference with its last ``min(tail_frames, R)`` frames replaced by the end of the
    previous chunk."""
    max_target_frames: int = 0
    """v5: most target frames per chunk (640); 0: ``t_chunk`` minus the prompt only."""

    @classmethod
    def from_audio(cls, audio: Mapping[str, Any], where: str = "bundle") -> CfmParams:
        """Read the manifest's ``audio`` section.

        Raises:
            BundleError: a value is missing or of the wrong type.
        """
        try:
            cfm = dict(audio["cfm"])
            return cls(
                sample_rate=int(audio["sample_rate"]),
                hop=int(audio["samples_per_frame"]),
                feature_upsample=float(cfm["feature_upsample"]),
                mask_frames_per_code=float(cfm["mask_frames_per_code"]),
                mel=dict(audio["mel"]),
                spec_min=float(cfm["spec_min"]),
                spec_max=float(cfm["spec_max"]),
                t_ref=int(cfm["t_ref"]),
                t_chunk=int(cfm["t_chunk"]),
                steps=int(cfm["steps"]),
                temperature=float(cfm["temperature"]),
                cfg_rate=float(cfm["cfg_rate"]),
                cfg_drops_text=bool(cfm["cfg_drops_text"]),
                allowed_steps=(
                    tuple(int(n) for n in cfm["allowed_steps"])
                    if cfm.get("allowed_steps") is not None
                    else None
                ),
                max_cfg_rate=(
                    float(cfm["max_cfg_rate"]) if cfm.get("max_cfg_rate") is not None else None
                ),
                tail_frames=int(cfm.get("tail_frames", 0)),
                max_target_frames=int(cfm.get("max_target_frames", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: the CFM audio section is incomplete ({exc!r})") from None

    def normalize(self, mel: np.ndarray) -> np.ndarray:
        """Log-mel → [-1, 1] (upstream ``norm_spec``)."""
        return (mel - self.spec_min) / (self.spec_max - self.spec_min) * 2 - 1

    def denormalize(self, mel: np.ndarray) -> np.ndarray:
        """[-1, 1] → log-mel (upstream ``denorm_spec``)."""
        return (mel + 1) / 2 * (self.spec_max - self.spec_min) + self.spec_min


def stretched_frames(code_lengths: Sequence[int], speeds: Sequence[float]) -> np.ndarray:
    """50 Hz content frames per row after the speed change: ``2·n``, else ``int(2n/s) + 1``."""
    return np.array(
        [
            2 * int(n) if s == 1 else int(2 * int(n) / s) + 1
            for n, s in zip(code_lengths, speeds, strict=True)
        ],
        dtype=np.int64,
    )


def feature_frames(frames50: np.ndarray, upsample: float) -> np.ndarray:
    """Mel-rate frames the nearest up-sampling yields: ``floor(frames · upsample)``."""
    return np.array([int(int(f) * upsample) for f in frames50], dtype=np.int64)


def feature_lengths(
    code_lengths: Sequence[int], speeds: Sequence[float], upsample: float, mask_ratio: float
) -> np.ndarray:
    """Valid (unmasked) mel-rate frames per row, as ``SoVITSV3Model.feature_lengths``.

    ``min(frames, floor(n · mask_ratio / speed) (+1 when speed ≠ 1))`` in Python float64, as
    upstream computes the mask length in ``decode_encp``.
    """
    frames = feature_frames(stretched_frames(code_lengths, speeds), upsample)
    masked = [
        int(int(n) * mask_ratio / s) + (0 if s == 1 else 1)
        for n, s in zip(code_lengths, speeds, strict=True)
    ]
    return np.minimum(frames, np.array(masked, dtype=np.int64))


@dataclass(frozen=True)
class Sampler:
    """Euler steps, start-noise temperature and guidance of one synthesis."""

    steps: int = 32
    temperature: float = 1.0
    cfg_rate: float = 0.0
    cfg_drops_text: bool = True
    allowed_steps: tuple[int, ...] | None = None
    """Step counts the model accepts (v5: 4, 8, 16, 32); None: any in [1, 1000]."""
    max_cfg_rate: float | None = None
    """Largest guidance rate (v5: 2); None: no bound."""

    def validate(self) -> None:
        """Raise InputError naming the field that is out of range."""
        allowed = self.allowed_steps
        if not isinstance(self.steps, (int, np.integer)) or not 1 <= self.steps <= 1000:
            raise InputError(f"sample_steps must be an integer in [1, 1000], got {self.steps!r}")
        if allowed is not None and self.steps not in allowed:
            raise InputError(
                f"sample_steps must be one of {', '.join(map(str, allowed))} for this model, "
                f"got {self.steps}"
            )
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"temperature must be finite and > 0, got {self.temperature}")
        top = self.max_cfg_rate
        if not (np.isfinite(self.cfg_rate) and self.cfg_rate >= 0) or (
            top is not None and self.cfg_rate > top
        ):
            bound = f"in [0, {top:g}]" if top is not None else ">= 0"
            raise InputError(f"cfg_rate must be finite and {bound}, got {self.cfg_rate}")


def sola_join(
    fragments: Sequence[np.ndarray], overlap: int, search: int = SOLA_SEARCH
) -> np.ndarray:
    """Join waveform pieces that overlap by ``overlap`` samples (upstream ``TTS.sola_algorithm``).

    For each junction the next piece is shifted by the offset (within ``search`` samples) where
    its start correlates best, normalised by its energy, with the end of the current piece;
    the overlap is cross-faded with the halves of a periodic Hann window of ``2·overlap``.
    """
    pieces = [np.asarray(f, dtype=np.float32) for f in fragments]
    n = np.arange(2 * overlap, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / (2 * overlap))).astype(np.float32)
    for i in range(len(pieces) - 1):
        f1, f2 = pieces[i], pieces[i + 1]
        w1, w2 = f1[-overlap:], f2[: overlap + search]
        corr = np.correlate(w2, w1, mode="valid")
        energy = np.correlate(w2 * w2, np.ones_like(w1), mode="valid") + np.float32(1e-8)
        shift = int(np.argmax(corr / np.sqrt(energy)))
        pieces[i] = f1[:-overlap]
        joined = f2[shift:].copy()
        joined[:overlap] = window[:overlap] * joined[:overlap] + window[overlap:] * f1[-overlap:]
        pieces[i + 1] = joined
    return np.concatenate(pieces)
