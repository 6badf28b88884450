"""Synthesizer: text + voice → audio, through the stages frontend → GPT → SoVITS.

The stages are public (:meth:`Synthesizer.frontend`, :meth:`~Synthesizer.semantic_tokens`,
:meth:`~Synthesizer.vocode`) so tests, benchmarks and a batching server can drive one stage at a
time; all per-request state lives in arguments and return values, never in the object, so one
Synthesizer serves many threads. Mirrors upstream ``GPT_SoVITS/TTS_infer_pack/TTS.py`` (``run``)
in sequential mode: each segment is decoded by SoVITS on its own (upstream's parallel mode
concatenates a bucket's segments before SoVITS, which changes the audio slightly).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gsv_runtime.acoustic.sovits import SoVITSStage
from gsv_runtime.audio import load_reference, to_int16
from gsv_runtime.audio_features import linear_spectrogram
from gsv_runtime.backends import BackendName, RunnerOptions, available_backends
from gsv_runtime.bundle import Bundle
from gsv_runtime.config import RuntimeConfig, SynthesisConfig
from gsv_runtime.errors import BackendError, BundleError, InputError
from gsv_runtime.gpt.decode import DecodeRow, decode
from gsv_runtime.gpt.t2s import load_t2s
from gsv_runtime.voice import Voice

_LOGGER = logging.getLogger(__name__)

HUBERT_PAD_SECONDS = 0.3
"""Upstream appends int(sovits_rate × 0.3) zeros to the 16 kHz reference (0.6 s at 16 kHz)."""


@dataclass(frozen=True)
class SegmentInput:
    """One text segment ready for the GPT: its phone ids and phone-level BERT features."""

    text: str
    phones: np.ndarray
    bert: np.ndarray


@dataclass(frozen=True)
class AudioChunk:
    """One segment's audio (with its trailing fragment gap), as streaming yields it."""

    samples: np.ndarray
    """int16 mono."""
    sample_rate: int
    index: int
    text: str
    tokens: int


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


def resolve_backend(requested: str, bundle: Bundle) -> BackendName:
    """``auto`` → onnxruntime when the bundle has ONNX graphs and it is installed, else OpenVINO.

    Raises:
        BackendError: nothing installed can run the bundle.
    """
    formats = {v.format for spec in bundle.manifest.graphs.values() for v in spec.variants}
    installed = available_backends()
    if requested != "auto":
        if requested not in ("onnxruntime", "openvino"):
            raise BackendError(
                f"unknown backend {requested!r}; accepted: auto, onnxruntime, openvino"
            )
        if requested not in installed:
            raise BackendError(f"backend {requested} is not installed (pip install {requested})")
        return requested  # type: ignore[return-value]
    for backend, fmt in (("onnxruntime", "onnx"), ("openvino", "openvino")):
        if backend in installed and fmt in formats:
            return backend  # type: ignore[return-value]
    raise BackendError(
        f"no installed backend can run {bundle.root} (installed: {installed or 'none'}; "
        f"bundle formats: {sorted(formats)})"
    )


def _precision_for(bundle: Bundle, graph: str, backend: str, precision: str) -> str:
    fmt = "onnx" if backend == "onnxruntime" else "openvino"
    if bundle.graph(graph).variant(fmt, precision) is not None:  # type: ignore[arg-type]
        return precision
    _LOGGER.info("%s has no %s %s variant; using fp32", graph, backend, precision)
    return "fp32"


class Synthesizer:
    """A loaded voice bundle (and, when needed, its support bundle) on one backend."""

    def __init__(
        self,
        bundle: Bundle,
        runtime: RuntimeConfig | None = None,
        support: Any = None,
        g2pw_dir: str | Path | None = None,
    ) -> None:
        """Compile the voice's graphs.

        Args:
            bundle: a voice bundle.
            runtime: backend, device, threads, precision.
            support: a ``SupportModels``, a support bundle path, or None to use the path the
                voice bundle names (it is opened lazily, only when HuBERT/BERT/SV is needed).
            g2pw_dir: local G2PWModel folder for Chinese polyphones (optional).

        Raises:
            BundleError, BackendError: the bundle or backend cannot run here.
        """
        if bundle.manifest.kind != "voice":
            raise BundleError(f"{bundle.root}: a {bundle.manifest.kind} bundle is not a voice")
        self.bundle = bundle
        self.runtime = runtime or RuntimeConfig()
        self.backend = resolve_backend(self.runtime.backend, bundle)
        self.options = RunnerOptions(device=self.runtime.device, threads=self.runtime.threads)
        precision = self.runtime.precision
        gpt_graph = "t2s_prefill" if self.backend == "onnxruntime" else "t2s_decoder"
        self.t2s = load_t2s(
            bundle,
            self.backend,
            self.options,
            _precision_for(bundle, gpt_graph, self.backend, precision),
        )
        self.sovits = SoVITSStage.from_bundle(
            bundle,
            self.backend,
            self.options,
            _precision_for(bundle, "sovits_decoder", self.backend, precision),
        )
        self._support = support
        manifest = bundle.manifest
        self.sample_rate = int(manifest.audio["sample_rate"])
        self.symbols_version = str(manifest.text.get("symbols_version", "v2"))
        self.is_pro = "sv" in manifest.support.get("graphs", [])
        self.bert_dim = int(manifest.text.get("bert_dim", 1024))
        self.g2pw = self._load_g2pw(g2pw_dir) if g2pw_dir is not None else None
        """g2pW polyphone predictor for Chinese (None: pypinyin decides)."""

    @classmethod
    def load(
        cls,
        voice_dir: str | Path,
        backend: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "fp32",
        support: str | Path | None = None,
        g2pw_dir: str | Path | None = None,
    ) -> Synthesizer:
        """Open a voice bundle directory (see :class:`Synthesizer`)."""
        runtime = RuntimeConfig(
            backend=backend, device=device, threads=threads, precision=precision
        )
        return cls(Bundle.load(voice_dir), runtime, support, g2pw_dir)

    # --------------------------------------------------------------------------- support

    @property
    def support(self) -> Any:
        """HuBERT/BERT/SV graphs, opened on first use.

        Raises:
            BundleError: the voice names no support bundle and none was given.
        """
        from gsv_runtime.support import SupportModels

        if isinstance(self._support, SupportModels):
            return self._support
        path = self._support or self.bundle.manifest.support.get("path")
        if path is None:
            raise BundleError(
                f"{self.bundle.root}: this step needs the support bundle (HuBERT/BERT/SV); "
                "pass support=... or export the voice with --support"
            )
        root = Path(path) if self._support else self.bundle.root / str(path)
        support = SupportModels.load(root, self.backend, self.options)
        if "bert" in support.bundle.manifest.graphs and support.bert_dim != self.bert_dim:
            raise BundleError(
                f"{root}: its BERT gives {support.bert_dim}-d features, the voice expects "
                f"{self.bert_dim}"
            )
        self._support = support
        return self._support

    # --------------------------------------------------------------------------- voices

    def voice(
        self,
        ref_audio: str | Path,
        prompt_text: str = "",
        prompt_lang: str = "zh",
        *,
        aux_ref_audio_paths: Sequence[str | Path] = (),
        check_duration: bool = True,
    ) -> Voice:
        """Prepare a reference: prompt tokens (HuBERT), ge (+ SV on Pro), prompt phones/BERT.

        Raises:
            InputError: unreadable/silent/too short or long audio, bad prompt text or language.
        """
        ref = load_reference(ref_audio, self.sample_rate, check_duration)
        pad = np.zeros(int(self.sample_rate * HUBERT_PAD_SECONDS), dtype=np.float32)
        ssl = self.support.hubert_features(np.concatenate([ref.wav16k, pad]))
        tokens = self.sovits.prompt_codes(ssl)[0]
        ge = [self._ge(ref.wav_model)]
        for aux in aux_ref_audio_paths:
            ge.append(self._ge(load_reference(aux, self.sample_rate, check_duration).wav_model))
        if prompt_text.strip():
            from gsv_runtime.text import phonemize_prompt

            segment = phonemize_prompt(
                prompt_text, prompt_lang, self.symbols_version, g2pw=self.g2pw
            )
            prompt = self._segment_input(segment)
            phones, bert = prompt.phones, prompt.bert
        else:
            phones, bert = np.zeros(0, np.int64), np.zeros((0, self.bert_dim), np.float32)
        return Voice(
            prompt_tokens=np.asarray(tokens, dtype=np.int64),
            prompt_phones=phones,
            prompt_bert=bert,
            ge=np.concatenate(ge, axis=0),
            prompt_text=prompt_text,
            prompt_lang=prompt_lang,
            symbols_version=self.symbols_version,
        )

    def saved_voice(self, name: str) -> Voice:
        """A voice stored in the bundle by ``gsv voice add``."""
        return Voice.load(self.bundle.root, name)

    def _ge(self, wav_model: np.ndarray) -> np.ndarray:
        spec = linear_spectrogram(wav_model)
        sv = self.support.speaker_vector(wav_model) if self.is_pro else None
        return self.sovits.reference(spec, sv=sv)

    def _load_g2pw(self, folder: str | Path) -> Any:
        """g2pW with the folder's tokenizer.json, else the support bundle's BERT tokenizer."""
        from gsv_runtime.text import load_g2pw

        own = Path(folder) / "tokenizer.json"
        return load_g2pw(folder, None if own.is_file() else self.support.tokenizer_path)

    # --------------------------------------------------------------------------- stages

    def _segment_input(self, segment: Any) -> SegmentInput:
        feats = []
        for piece in segment.pieces:
            if piece.needs_bert:
                feats.append(self.support.bert_features(piece.norm_text, list(piece.word2ph)))
            else:
                feats.append(np.zeros((len(piece.phones), self.bert_dim), dtype=np.float32))
        bert = np.concatenate(feats, axis=0) if feats else np.zeros((0, self.bert_dim), np.float32)
        phones = np.asarray(segment.phone_ids, dtype=np.int64)
        return SegmentInput(segment.text, phones, bert.astype(np.float32))

    def frontend(self, text: str, lang: str, config: SynthesisConfig) -> list[SegmentInput]:
        """Text → segments with phone ids and BERT features (zeros for non-Chinese runs)."""
        return self._frontend(text, lang, config)[0]

    def _frontend(
        self, text: str, lang: str, config: SynthesisConfig
    ) -> tuple[list[SegmentInput], dict[str, Any]]:
        """Segments and the frontend's metadata (polyphone source, POS tagger, user dictionary)."""
        from gsv_runtime.text import phonemize

        result = phonemize(
            text,
            lang,
            self.symbols_version,
            split_method=config.text_split_method,
            g2pw=self.g2pw,
        )
        return [self._segment_input(s) for s in result.segments], dict(result.metadata)

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
        sampling = config.sampling(self.bundle.manifest.sampling)
        return decode(
            self.t2s.session(),
            rows,
            sampling,
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
        rng: np.random.Generator,
    ) -> list[np.ndarray]:
        """SoVITS: each segment's tokens + phones + the voice's ge → float32 waveforms."""
        keep = [i for i, t in enumerate(tokens) if len(t)]
        if not keep:
            return [np.zeros(0, np.float32) for _ in tokens]
        wavs = self.sovits.decode(
            [tokens[i] for i in keep],
            [segments[i].phones for i in keep],
            voice.mean_ge,
            noise_scale=config.resolved_noise_scale(self.bundle.manifest.sampling),
            speed=config.speed_factor,
            rng=rng,
        )
        out = [np.zeros(0, np.float32) for _ in tokens]
        for i, wav in zip(keep, wavs, strict=True):
            out[i] = wav
        return out

    # --------------------------------------------------------------------------- requests

    def _request(
        self,
        voice: Voice | None,
        ref_audio: str | Path | None,
        prompt_text: str,
        prompt_lang: str,
        options: dict[str, Any],
    ) -> tuple[Voice, SynthesisConfig]:
        check_duration = options.pop("check_duration", True)
        config = SynthesisConfig.from_options(**options)
        if voice is None:
            if ref_audio is None:
                raise InputError("give a voice, or ref_audio with its prompt_text")
            voice = self.voice(
                ref_audio,
                "" if config.ref_free else prompt_text,
                prompt_lang,
                aux_ref_audio_paths=config.aux_ref_audio_paths,
                check_duration=check_duration,
            )
        elif config.aux_ref_audio_paths:
            extra = [
                self._ge(load_reference(p, self.sample_rate, check_duration).wav_model)
                for p in config.aux_ref_audio_paths
            ]
            voice = voice.with_extra_references(np.concatenate(extra, axis=0))
        if not config.ref_free and voice.prompt_phones.size == 0:
            raise InputError("prompt_text is required unless ref_free=True")
        return voice, config

    def stream(
        self,
        text: str,
        lang: str,
        voice: Voice | None = None,
        *,
        ref_audio: str | Path | None = None,
        prompt_text: str = "",
        prompt_lang: str = "zh",
        report: dict[str, Any] | None = None,
        **options: Any,
    ) -> Iterator[AudioChunk]:
        """Each segment's audio (int16, with its fragment gap), yielded as soon as it is ready.

        The request is checked and the text split before this returns, so bad input raises
        here rather than at the first ``next()``. Options take upstream's names (see
        :class:`SynthesisConfig`), plus ``check_duration``. ``report``, if given, receives the
        seed used, the number of ``segments``, per-stage ``timings`` (seconds) and the frontend's
        ``text`` metadata (e.g. ``zh_polyphones``: "g2pw" or "pypinyin").

        Raises:
            InputError: bad text, language, option or reference.
        """
        t0 = time.perf_counter()
        voice, config = self._request(voice, ref_audio, prompt_text, prompt_lang, dict(options))
        seed = config.seed if config.seed >= 0 else secrets.randbits(31)
        t1 = time.perf_counter()
        segments, text_metadata = self._frontend(text, lang, config)
        stats = {
            "reference": t1 - t0,
            "frontend": time.perf_counter() - t1,
            "t2s": 0.0,
            "sovits": 0.0,
        }
        if report is not None:
            report.update(seed=seed, segments=len(segments), timings=stats, text=text_metadata)
        return self._chunks(segments, voice, config, seed, stats)

    def _chunks(
        self,
        segments: Sequence[SegmentInput],
        voice: Voice,
        config: SynthesisConfig,
        seed: int,
        stats: dict[str, float],
    ) -> Iterator[AudioChunk]:
        gap = np.zeros(int(self.sample_rate * config.fragment_interval), dtype=np.float32)
        for start in range(0, len(segments), config.batch_size):
            batch = segments[start : start + config.batch_size]
            rngs = [np.random.default_rng([seed, 0, start + i]) for i in range(len(batch))]
            t2 = time.perf_counter()
            tokens = self.semantic_tokens(batch, voice, config, rngs)
            t3 = time.perf_counter()
            noise_rng = np.random.default_rng([seed, 1, start])
            wavs = self.vocode(tokens, batch, voice, config, noise_rng)
            stats["t2s"] += t3 - t2
            stats["sovits"] += time.perf_counter() - t3
            for i, (seg, tok, wav) in enumerate(zip(batch, tokens, wavs, strict=True)):
                peak = float(np.abs(wav).max()) if wav.size else 0.0
                if peak > 1.0:
                    wav = wav / peak
                samples = to_int16(np.concatenate([wav, gap]))
                yield AudioChunk(samples, self.sample_rate, start + i, seg.text, len(tok))

    def synthesize(
        self,
        text: str,
        lang: str,
        voice: Voice | None = None,
        *,
        ref_audio: str | Path | None = None,
        prompt_text: str = "",
        prompt_lang: str = "zh",
        **options: Any,
    ) -> AudioResult:
        """Speak ``text`` in ``voice`` (or a reference given as a file); int16 at the model rate.

        Raises:
            InputError: bad text, language, option or reference.
        """
        start = time.perf_counter()
        report: dict[str, Any] = {}
        chunks = list(
            self.stream(
                text,
                lang,
                voice,
                ref_audio=ref_audio,
                prompt_text=prompt_text,
                prompt_lang=prompt_lang,
                report=report,
                **options,
            )
        )
        timings = dict(report["timings"], total=time.perf_counter() - start)
        samples = np.concatenate([c.samples for c in chunks])
        segments = [{"text": c.text, "tokens": c.tokens} for c in chunks]
        metadata = {"seed": report["seed"], "segments": segments, "text": report["text"]}
        return AudioResult(samples, self.sample_rate, timings, metadata)
