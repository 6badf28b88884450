"""Synthesizer: the single-voice Python API, a thin client of the serving engine.

``Synthesizer.load(dir)`` compiles one voice bundle (a :class:`VoiceModel`) and runs every
request through an :class:`~gsv_runtime.engine.Engine` that holds it, so many threads can call
:meth:`Synthesizer.synthesize` at once and their requests batch together. The stage methods
(:meth:`~Synthesizer.frontend`, :meth:`~Synthesizer.semantic_tokens`, :meth:`~Synthesizer.vocode`)
drive one stage directly for tests and benchmarks; they bypass the engine (see its thread rule).
Mirrors upstream ``GPT_SoVITS/TTS_infer_pack/TTS.py`` (``run``) in sequential mode: each segment
is decoded by SoVITS on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gsv_runtime.acoustic import NoiseSource, VocodeJob
from gsv_runtime.bundle import Bundle
from gsv_runtime.config import RuntimeConfig, SynthesisConfig
from gsv_runtime.engine import (
    AudioChunk,
    AudioResult,
    Engine,
    EngineConfig,
    RequestHandle,
    SegmentInput,
    StageThreads,
    SynthesisRequest,
    VoiceModel,
)
from gsv_runtime.gpt.decode import DecodeRow, decode
from gsv_runtime.voice import Voice

__all__ = [
    "AudioChunk",
    "AudioResult",
    "SegmentInput",
    "Synthesizer",
]


class Synthesizer:
    """One loaded voice bundle and the engine that runs its requests."""

    def __init__(
        self,
        bundle: Bundle,
        runtime: RuntimeConfig | None = None,
        support: Any = None,
        g2pw_dir: str | Path | None = None,
        *,
        threads: StageThreads | None = None,
        engine: EngineConfig | None = None,
        warm_up: tuple[str, str] | None = None,
    ) -> None:
        """Compile the voice's graphs (see :class:`VoiceModel`, also for ``warm_up``); the
        engine starts on the first request.

        Raises:
            BundleError, BackendError: the bundle or backend cannot run here.
        """
        self.model = VoiceModel(bundle, runtime, support, g2pw_dir, threads, warm_up)
        self.engine = Engine({"default": self.model}, engine)

    @classmethod
    def load(
        cls,
        voice_dir: str | Path,
        backend: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "auto",
        support: str | Path | None = None,
        g2pw_dir: str | Path | None = None,
        engine: EngineConfig | None = None,
        warm_up: tuple[str, str] | None = None,
    ) -> Synthesizer:
        """Open a voice bundle directory (see :class:`Synthesizer`)."""
        runtime = RuntimeConfig(
            backend=backend, device=device, threads=threads, precision=precision
        )
        return cls(
            Bundle.load(voice_dir), runtime, support, g2pw_dir, engine=engine, warm_up=warm_up
        )

    def close(self) -> None:
        """Stop the engine's threads (requests in flight fail with RequestCancelledError)."""
        self.engine.close()

    # ------------------------------------------------------------------ the model's facts

    @property
    def bundle(self) -> Bundle:
        return self.model.bundle

    @property
    def runtime(self) -> RuntimeConfig:
        return self.model.runtime

    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def is_pro(self) -> bool:
        return self.model.is_pro

    @property
    def t2s(self) -> Any:
        return self.model.t2s

    @property
    def sovits(self) -> Any:
        return self.model.acoustic

    @property
    def support(self) -> Any:
        return self.model.support

    @property
    def g2pw(self) -> Any:
        return self.model.g2pw

    # ------------------------------------------------------------------ voices

    def voice(
        self,
        ref_audio: str | Path,
        prompt_text: str = "",
        prompt_lang: str = "zh",
        *,
        aux_ref_audio_paths: Sequence[str | Path] = (),
        check_duration: bool = True,
    ) -> Voice:
        """Prepare a reference (see :meth:`VoiceModel.voice`)."""
        return self.model.voice(
            ref_audio,
            prompt_text,
            prompt_lang,
            aux_ref_audio_paths=aux_ref_audio_paths,
            check_duration=check_duration,
        )

    def saved_voice(self, name: str) -> Voice:
        """A voice stored in the bundle by ``gsv voice add``."""
        return self.model.saved_voice(name)

    # ------------------------------------------------------------------ stages (direct)

    def frontend(self, text: str, lang: str, config: SynthesisConfig) -> list[SegmentInput]:
        """Text → segments with phone ids and BERT features (zeros for non-Chinese runs)."""
        return self.model.frontend(text, lang, config)[0]

    def semantic_tokens(
        self,
        segments: Sequence[SegmentInput],
        voice: Voice | None,
        config: SynthesisConfig,
        rngs: Sequence[np.random.Generator],
    ) -> list[np.ndarray]:
        """Decode a batch of segments together; ``voice=None`` or ``ref_free`` skips the prompt."""
        ref_free = config.ref_free or voice is None
        rows = []
        for seg in segments:
            if ref_free:
                rows.append(DecodeRow(seg.phones, seg.bert, np.zeros(0, np.int64)))
            else:
                assert voice is not None
                rows.append(
                    DecodeRow(
                        np.concatenate([voice.prompt_phones, seg.phones]),
                        np.concatenate([voice.prompt_bert, seg.bert], axis=0),
                        voice.prompt_tokens,
                    )
                )
        return decode(
            self.model.t2s.session(),
            rows,
            config.sampling(self.bundle.manifest.sampling),
            rngs,
            max_steps=config.max_steps,
            fixed_length=config.fixed_length,
        )

    def vocode(
        self,
        tokens: Sequence[np.ndarray],
        segments: Sequence[SegmentInput],
        voice: Voice,
        config: SynthesisConfig,
        seed: int = 0,
    ) -> list[np.ndarray]:
        """The acoustic stage: each segment's tokens + phones + the voice → float32 waveforms,
        with the prior noise the engine would use for ``seed`` (segment i: key [seed, 1, i])."""
        noise_scale = config.resolved_noise_scale(self.bundle.manifest.sampling)
        jobs = [
            VocodeJob(
                t, s.phones, voice, NoiseSource([seed, 1, i]), config.speed_factor, noise_scale
            )
            for i, (t, s) in enumerate(zip(tokens, segments, strict=True))
        ]
        keep = [i for i, t in enumerate(tokens) if len(t)]
        out = [np.zeros(0, np.float32) for _ in tokens]
        for i, wav in zip(keep, self.model.acoustic.vocode([jobs[i] for i in keep]), strict=True):
            out[i] = wav
        return out

    # ------------------------------------------------------------------ requests

    def submit(
        self,
        text: str,
        lang: str,
        voice: Voice | str | None = None,
        *,
        ref_audio: str | Path | None = None,
        prompt_text: str = "",
        prompt_lang: str = "zh",
        stream: str = "segment",
        timeout: float | None = None,
        **options: Any,
    ) -> RequestHandle:
        """Queue one request on the engine; options take upstream's names (see
        :class:`SynthesisConfig`), plus ``check_duration``.

        Raises:
            InputError: a bad option. EngineBusyError: the queue is full.
        """
        request = SynthesisRequest.from_options(
            text,
            lang,
            voice,
            ref_audio=ref_audio,
            prompt_text=prompt_text,
            prompt_lang=prompt_lang,
            stream=stream,  # type: ignore[arg-type]
            timeout=timeout,
            **options,
        )
        return self.engine.submit(request)

    def stream(
        self,
        text: str,
        lang: str,
        voice: Voice | str | None = None,
        *,
        report: dict[str, Any] | None = None,
        **options: Any,
    ) -> Iterator[AudioChunk]:
        """Audio chunks (int16, each segment's last with its fragment gap) as they are ready.

        The request is checked, the voice prepared and the text split before this returns, so
        bad input raises here rather than at the first ``next()``. ``stream="token"`` yields
        chunks while a segment is still decoding. ``report``, if given, receives the seed used,
        the number of ``segments``, per-stage ``timings`` (seconds, filled in as the request
        runs) and the frontend's ``text`` metadata.

        Raises:
            InputError: bad text, language, option or reference.
        """
        handle = self.submit(text, lang, voice, **options)
        handle.wait_started()
        if report is not None:
            report.update(
                seed=handle.metadata["seed"],
                segments=len(handle.metadata["segments"]),
                timings=handle.timings,
                text=handle.metadata["text"],
            )
        return iter(handle)

    def synthesize(
        self, text: str, lang: str, voice: Voice | str | None = None, **options: Any
    ) -> AudioResult:
        """Speak ``text`` in ``voice`` (or a reference given as ``ref_audio``); int16 at the
        model rate. Takes the keyword options of :meth:`submit`.

        Raises:
            InputError: bad text, language, option or reference.
        """
        start = time.perf_counter()
        result = self.submit(text, lang, voice, **options).result()
        result.timings["total"] = time.perf_counter() - start
        return result

    def synthesize_many(
        self, requests: Iterable[SynthesisRequest], ordered: bool = True
    ) -> Iterator[tuple[int, Any]]:
        """Many requests through the engine; ``(index, AudioResult or the error)`` in input
        order, or as they finish (``ordered=False``)."""
        return self.engine.submit_many(requests, ordered)
