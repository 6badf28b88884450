"""A loaded voice bundle: its GPT decoder, acoustic stage, support graphs and text frontend.

A :class:`VoiceModel` only loads and prepares; it runs nothing by itself. The engine drives it,
and the engine's thread rule (see ``gsv_runtime.engine``) says which thread may call what: the
frontend thread calls :meth:`VoiceModel.voice` and :meth:`VoiceModel.frontend` (support graphs,
SoVITS prompt/reference graphs), the model's GPT thread owns ``t2s``, the acoustic thread owns
``acoustic``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gsv_runtime.acoustic import AcousticStage, load_acoustic
from gsv_runtime.audio import load_reference
from gsv_runtime.audio_features import linear_spectrogram
from gsv_runtime.backends import BackendName, RunnerOptions, available_backends
from gsv_runtime.bundle import Bundle
from gsv_runtime.config import RuntimeConfig, SynthesisConfig
from gsv_runtime.errors import BundleError, InputError
from gsv_runtime.gpt.t2s import load_t2s
from gsv_runtime.variants import choose_backends, choose_precisions, parse_backend
from gsv_runtime.voice import Voice

_LOGGER = logging.getLogger(__name__)

WARM_UP_CHARS = 200
"""How much of a warm-up text is prepared: enough to meet its first languages."""

HUBERT_PAD_SECONDS = 0.3
"""Upstream appends int(sovits_rate × 0.3) zeros to the 16 kHz reference (0.6 s at 16 kHz)."""


@dataclass(frozen=True)
class SegmentInput:
    """One text segment ready for the GPT: its phone ids and phone-level BERT features."""

    text: str
    phones: np.ndarray
    bert: np.ndarray


@dataclass(frozen=True)
class StageThreads:
    """Intra-op threads per stage; None lets the backend use every core."""

    gpt: int | None = None
    acoustic: int | None = None
    frontend: int | None = None


class VoiceModel:
    """A voice bundle (and, when needed, its support bundle) compiled on a backend per stage."""

    def __init__(
        self,
        bundle: Bundle,
        runtime: RuntimeConfig | None = None,
        support: Any = None,
        g2pw_dir: str | Path | None = None,
        threads: StageThreads | None = None,
        warm_up: tuple[str, str] | None = None,
    ) -> None:
        """Compile the voice's graphs.

        Args:
            bundle: a voice bundle.
            runtime: backend, device, threads, precision.
            support: a ``SupportModels``, a support bundle path, or None to use the path the
                voice bundle names (it is opened lazily, only when HuBERT/BERT/SV is needed).
            g2pw_dir: local G2PWModel folder for Chinese polyphones (optional).
            threads: per-stage threads (default: ``runtime.threads`` for every stage).
            warm_up: (text, language) of a likely first request: its text frontend and BERT
                graph are prepared in a thread while the voice's graphs compile (a new
                process spends 1-3 s building dictionaries and loading BERT). A failure there
                is only logged; the request meets it again and reports it. Leave it None when
                ``support`` is a ``SupportModels`` a running engine also uses (its graphs are
                not thread-safe).

        Raises:
            BundleError, BackendError: the bundle or backend cannot run here.
        """
        if bundle.manifest.kind != "voice":
            raise BundleError(f"{bundle.root}: a {bundle.manifest.kind} bundle is not a voice")
        self.bundle = bundle
        self.runtime = runtime or RuntimeConfig()
        self._backend_request = parse_backend(self.runtime.backend)
        self.backends: dict[str, BackendName] = choose_backends(  # type: ignore[assignment]
            bundle,
            self.runtime.backend,
            self.runtime.precision,
            available_backends(),
            self.runtime.device,
        )
        """The backend each stage runs (``support`` joins when the support bundle opens)."""
        base = self.runtime.threads
        self.threads = threads or StageThreads(base, base, base)
        cache = Path(self.runtime.cache_dir) if self.runtime.cache_dir else None
        base_options = RunnerOptions(self.runtime.device, self.threads.frontend, cache_dir=cache)
        self.options = base_options
        precision = self.runtime.precision
        self.precisions = choose_precisions(bundle, self.backends, precision, self.runtime.device)
        """The variant each stage runs (see ``gsv_runtime.variants``)."""
        self._support = support
        if hasattr(support, "backend"):  # an opened SupportModels
            self.backends["support"] = support.backend
        manifest = bundle.manifest
        self.sample_rate = int(manifest.audio["sample_rate"])
        self.ref_sample_rate = int(manifest.audio.get("ref_sample_rate", self.sample_rate))
        """Rate the reference spectrogram (``ge``) reads; v3/v4 output at 24/48 kHz."""
        self.symbols_version = str(manifest.text.get("symbols_version", "v2"))
        self.is_pro = "sv" in manifest.support.get("graphs", [])
        self.bert_dim = int(manifest.text.get("bert_dim", 1024))
        self.g2pw = self._load_g2pw(g2pw_dir) if g2pw_dir is not None else None
        """g2pW polyphone predictor for Chinese (None: pypinyin decides)."""
        warming = None
        if warm_up is not None:
            warming = threading.Thread(
                target=self._warm_up, args=warm_up, name="gsv-warm-up", daemon=True
            )
            warming.start()
        try:
            self.t2s = load_t2s(
                bundle,
                self.backends["gpt"],
                replace(base_options, threads=self.threads.gpt),
                self.precisions["gpt"],
            )
            self.acoustic: AcousticStage = load_acoustic(
                bundle,
                self.backends["acoustic"],
                replace(base_options, threads=self.threads.acoustic),
                self.precisions["acoustic"],
            )
        finally:
            if warming is not None:  # the support graphs are the frontend thread's once built
                warming.join()

    def _warm_up(self, text: str, lang: str) -> None:
        try:
            self.frontend(text[:WARM_UP_CHARS], lang, SynthesisConfig())
        except Exception:  # reported by the real request, in its context
            _LOGGER.debug("warm-up of %r failed", lang, exc_info=True)

    @property
    def backend(self) -> str:
        """The backend name, or per stage (``gpt=onnxruntime,acoustic=openvino``) when the
        stages run on different ones."""
        names = set(self.backends.values())
        if len(names) == 1:
            return names.pop()
        return ",".join(f"{stage}={name}" for stage, name in self.backends.items())

    @property
    def sovits(self) -> Any:
        """The acoustic stage (named for the v1–v2ProPlus family)."""
        return self.acoustic

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
        if self._support:
            root = Path(path)
        elif not isinstance(path, str) or Path(path).is_absolute():
            # a relative path may lead to a sibling tree; it must hold a support bundle
            raise BundleError(f"{self.bundle.root}: support.path must be relative: {path!r}")
        else:
            root = self.bundle.root / path
        support = SupportModels.load(
            root, self._backend_request["support"], self.options, self.runtime.precision
        )
        if "bert" in support.bundle.manifest.graphs and support.bert_dim != self.bert_dim:
            raise BundleError(
                f"{root}: its BERT gives {support.bert_dim}-d features, the voice expects "
                f"{self.bert_dim}"
            )
        self._support = support
        self.backends["support"] = support.backend
        return self._support

    def _load_g2pw(self, folder: str | Path) -> Any:
        """g2pW with the folder's tokenizer.json, else the support bundle's BERT tokenizer."""
        from gsv_runtime.text import load_g2pw

        own = Path(folder) / "tokenizer.json"
        return load_g2pw(folder, None if own.is_file() else self.support.tokenizer_path)

    # --------------------------------------------------------------------------- voices

    def voice(
        self,
        ref_audio: str | Path,
        prompt_text: str = "",
        prompt_lang: str = "zh",
        *,
        aux_ref_audio_paths: Any = (),
        check_duration: bool = True,
    ) -> Voice:
        """Prepare a reference: prompt tokens (HuBERT), ge (+ SV on Pro), prompt phones/BERT.

        Raises:
            InputError: unreadable/silent/too short or long audio, bad prompt text or language.
        """
        ref = load_reference(ref_audio, self.ref_sample_rate, check_duration)
        pad = np.zeros(int(self.ref_sample_rate * HUBERT_PAD_SECONDS), dtype=np.float32)
        ssl = self.support.hubert_features(np.concatenate([ref.wav16k, pad]))
        tokens = self.sovits.prompt_codes(ssl)[0]
        ge = [self._ge(ref.wav_model)]
        for aux in aux_ref_audio_paths:
            ge.append(self._ge(load_reference(aux, self.ref_sample_rate, check_duration).wav_model))
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
            ref_mel=self._ref_mel(ref),
        )

    def _ref_mel(self, ref: Any) -> np.ndarray | None:
        """The reference mel a family's acoustic stage continues (v3/v4), else None."""
        reference_mel = getattr(self.acoustic, "reference_mel", None)
        return None if reference_mel is None else reference_mel(ref.mono, ref.source_rate)

    def saved_voice(self, name: str) -> Voice:
        """A voice stored in the bundle by ``gsv voice add``."""
        return Voice.load(self.bundle.root, name)

    def extra_references(self, paths: Any, check_duration: bool = True) -> np.ndarray:
        """``ge`` rows of auxiliary reference clips, [R, gin, 1]."""
        return np.concatenate(
            [
                self._ge(load_reference(p, self.ref_sample_rate, check_duration).wav_model)
                for p in paths
            ],
            axis=0,
        )

    def _ge(self, wav_model: np.ndarray) -> np.ndarray:
        spec = linear_spectrogram(wav_model)
        sv = self.support.speaker_vector(wav_model) if self.is_pro else None
        return self.sovits.reference(spec, sv=sv)

    def resolve_voice(
        self,
        voice: Voice | str | None,
        ref_audio: str | Path | None,
        prompt_text: str,
        prompt_lang: str,
        config: SynthesisConfig,
        check_duration: bool = True,
    ) -> Voice:
        """The request's voice: given, saved in the bundle by name, or made from ``ref_audio``
        (auxiliary references averaged in).

        Raises:
            InputError: no voice and no reference, or a prompt missing when it is needed.
        """
        if isinstance(voice, str):
            voice = self.saved_voice(voice)
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
            extra = self.extra_references(config.aux_ref_audio_paths, check_duration)
            voice = voice.with_extra_references(extra)
        if not config.ref_free and voice.prompt_phones.size == 0:
            raise InputError("prompt_text is required unless ref_free=True")
        return voice

    # --------------------------------------------------------------------------- text

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

    def frontend(
        self, text: str, lang: str, config: SynthesisConfig
    ) -> tuple[list[SegmentInput], dict[str, Any]]:
        """Text → segments (phone ids, BERT features) and the frontend's metadata (polyphone
        source, POS tagger, user dictionary)."""
        from gsv_runtime.text import phonemize

        result = phonemize(
            text,
            lang,
            self.symbols_version,
            split_method=config.text_split_method,
            g2pw=self.g2pw,
        )
        return [self._segment_input(s) for s in result.segments], dict(result.metadata)
