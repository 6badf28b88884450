"""What a client asks the engine for, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from gsv_runtime.config import SynthesisConfig
from gsv_runtime.errors import InputError

if TYPE_CHECKING:
    from gsv_runtime.voice import Voice

StreamMode = Literal["segment", "token"]
STREAM_MODES: Final = ("segment", "token")


@dataclass(frozen=True)
class SynthesisRequest:
    """One utterance to synthesize: text, voice, options and how to stream it.

    The voice is a prepared :class:`~gsv_runtime.voice.Voice`, the name of a voice saved in the
    model's bundle, or None with ``ref_audio`` (+ ``prompt_text``/``prompt_lang``) to prepare
    one from a reference clip.
    """

    text: str
    lang: str
    voice: Voice | str | None = None
    ref_audio: str | Path | None = None
    prompt_text: str = ""
    prompt_lang: str = "zh"
    model: str | None = None
    """Which loaded model (voice bundle) runs it; None: the engine's only/default model."""
    config: SynthesisConfig = field(default_factory=SynthesisConfig)
    stream: StreamMode = "segment"
    """``segment``: one chunk per text segment; ``token``: chunks as tokens arrive (upstream
    streaming_mode 2/3: overlapping token windows, cross-faded)."""
    timeout: float | None = None
    """Seconds from submission after which the request fails with RequestTimeoutError."""
    check_duration: bool = True
    """Apply upstream's 3–10 s rule to reference clips."""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InputError(f"text must be a string, got {type(self.text).__name__}")
        if self.stream not in STREAM_MODES:
            raise InputError(f"stream must be one of {', '.join(STREAM_MODES)}: {self.stream!r}")
        if self.timeout is not None and not (0 < self.timeout < float("inf")):
            raise InputError(f"timeout must be a positive number of seconds, got {self.timeout}")
        self.config.validate()

    @classmethod
    def from_options(
        cls,
        text: str,
        lang: str,
        voice: Voice | str | None = None,
        *,
        ref_audio: str | Path | None = None,
        prompt_text: str = "",
        prompt_lang: str = "zh",
        model: str | None = None,
        stream: StreamMode = "segment",
        timeout: float | None = None,
        check_duration: bool = True,
        **options: Any,
    ) -> SynthesisRequest:
        """Build from upstream-named keyword options (see :class:`SynthesisConfig`).

        Raises:
            InputError: an unknown option or an out-of-range value.
        """
        return cls(
            text,
            lang,
            voice,
            ref_audio,
            prompt_text,
            prompt_lang,
            model,
            SynthesisConfig.from_options(**options),
            stream,
            timeout,
            check_duration,
        )


@dataclass(frozen=True)
class AudioChunk:
    """A piece of a request's audio, in order: a whole segment, or a token-streaming window."""

    samples: np.ndarray
    """int16 mono (a segment's last chunk carries its fragment gap)."""
    sample_rate: int
    index: int
    """Segment index."""
    text: str
    tokens: int
    """Semantic tokens this chunk covers."""
    last: bool = True
    """The segment's final chunk."""


@dataclass
class AudioResult:
    """A finished synthesis: int16 samples, rate, and what it took."""

    samples: np.ndarray
    sample_rate: int
    timings: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Audio duration."""
        return len(self.samples) / self.sample_rate
