"""Mandarin G2P: normalised text → opencpop initial/final phones and word2ph (v1 and v2).

Mirrors upstream ``GPT_SoVITS/text/chinese.py`` (v1) and ``chinese2.py`` (v2): jieba POS cut, tone
sandhi pre-merge, pypinyin initials/TONE3 finals per word (or g2pW polyphone predictions when a
G2PWModel folder is given, v2 only), tone sandhi, erhua tone (v2 only), then each syllable maps to
two phones (initial, final+tone) and each punctuation mark to one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, Final, Protocol

from gsv_runtime.config import default_cache_dir
from gsv_runtime.errors import InputError
from gsv_runtime.text.normalize import normalize_zh_clauses
from gsv_runtime.text.symbols import PUNCTUATION, SYMBOLS_V1
from gsv_runtime.text.zh_dict import DictionaryIndex, build_index, index_path
from gsv_runtime.text.zh_sandhi import ToneSandhi

_LOGGER = logging.getLogger(__name__)

_PUNCT_CLASS: Final = "".join(re.escape(p) for p in PUNCTUATION)
_REP_MAP: Final = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "...": "…", "$": ".", "/": ",", "—": "-", "~": "…", "～": "…",
}  # fmt: skip
_RE_REP: Final = re.compile("|".join(re.escape(k) for k in _REP_MAP))
_RE_NOT_KEPT: Final = re.compile(rf"[^\u4e00-\u9fa5{_PUNCT_CLASS}]+")
_RE_PUNCT_RUN: Final = re.compile(rf"([{_PUNCT_CLASS}])([{_PUNCT_CLASS}])+")
_RE_SENTENCE: Final = re.compile(rf"(?<=[{_PUNCT_CLASS}])\s*")
_RE_LATIN: Final = re.compile(r"[a-zA-Z]+")

_MUST_ERHUA: Final = frozenset(
    ["小院儿", "胡同儿", "范儿", "老汉儿", "撒欢儿", "寻老礼儿", "妥妥儿", "媳妇儿"]
)
_NOT_ERHUA: Final = frozenset(
    [
        "虐儿",
        "为儿",
        "护儿",
        "瞒儿",
        "救儿",
        "替儿",
        "有儿",
        "一儿",
        "我儿",
        "俺儿",
        "妻儿",
        "拐儿",
        "聋儿",
        "乞儿",
        "患儿",
        "幼儿",
        "孤儿",
        "婴儿",
        "婴幼儿",
        "连体儿",
        "脑瘫儿",
        "流浪儿",
        "体弱儿",
        "混血儿",
        "蜜雪儿",
        "舫儿",
        "祖儿",
        "美儿",
        "应采儿",
        "可儿",
        "侄儿",
        "孙儿",
        "侄孙儿",
        "女儿",
        "男儿",
        "红孩儿",
        "花儿",
        "虫儿",
        "马儿",
        "鸟儿",
        "猪儿",
        "猫儿",
        "狗儿",
        "少儿",
    ]
)

_INITIALS: Final = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j",
                    "q", "x", "r", "z", "c", "s", "y", "w")  # fmt: skip
_ZERO_INITIAL: Final = {"a": "AA", "e": "EE", "o": "OO"}
_SYMBOLS: Final = frozenset(SYMBOLS_V1)
# Readings without a standard final (syllabic nasals, ê): upstream crashes on them.
_ODD_READINGS: Final = {"m": "mu", "n": "en", "ng": "en", "hm": "hen", "hng": "heng", "ê": "ei"}


class PolyphonePredictor(Protocol):
    """A g2pW-style predictor of pinyin readings (upstream ``text/g2pw``), used for v2 only."""

    def predict(self, sentences: list[str]) -> list[list[str]]:
        """TONE3 pinyin (neutral tone 5) per character of each sentence."""

    def initials_finals(self, word: str, readings: list[str]) -> tuple[list[str], list[str]]:
        """pypinyin initials and TONE3 finals of a word from its predicted readings."""


def replace_punctuation(text: str) -> str:
    """Map CJK punctuation to the phone set; drop everything but CJK ideographs and ``!?…,.-``."""
    text = text.replace("嗯", "恩").replace("呣", "母")
    text = _RE_REP.sub(lambda m: _REP_MAP[m.group()], text)
    return _RE_NOT_KEPT.sub("", text)


def collapse_punctuation(text: str) -> str:
    """Keep only the first of a run of punctuation marks (``"!?…"`` → ``"!"``)."""
    return _RE_PUNCT_RUN.sub(r"\1", text)


def text_normalize(text: str) -> str:
    """Upstream ``chinese2.text_normalize``: verbalise, map punctuation, keep CJK + ``!?…,.-``."""
    out = "".join(replace_punctuation(s) for s in normalize_zh_clauses(text))
    return collapse_punctuation(out)


def opencpop_phones(pinyin: str) -> tuple[str, str] | None:
    """Split a toneless pinyin syllable into opencpop-strict (initial, final), None if invalid.

    Equivalent to upstream's ``opencpop-strict.txt`` table (tests compare every row).
    """
    for ini in _INITIALS:
        if pinyin.startswith(ini) and len(pinyin) > len(ini):
            rest = pinyin[len(ini) :]
            if rest == "i" and ini in ("zh", "ch", "sh", "r"):
                rest = "ir"
            elif rest == "i" and ini in ("z", "c", "s"):
                rest = "i0"
            elif ini in ("j", "q", "x", "y") and rest.startswith("u"):
                rest = "v" + rest[1:]
            if ini == "y":
                rest = {"an": "En", "e": "E"}.get(rest, rest)
            return ini, rest
    if pinyin[:1] in _ZERO_INITIAL:
        return _ZERO_INITIAL[pinyin[0]], pinyin
    return None


def _syllable_phones(initial: str, final: str) -> list[str]:
    """(pypinyin initial, TONE3 final) → [initial phone, final phone] (upstream ``_g2p`` tail)."""
    if not final or final[-1] not in "12345":
        return _odd_syllable(initial + final)
    body, tone = final[:-1], final[-1]
    if initial:
        body = {"uei": "ui", "iou": "iu", "uen": "un"}.get(body, body)
        pinyin = initial + body
    else:
        pinyin = {"ing": "ying", "i": "yi", "in": "yin", "u": "wu"}.get(body, "")
        if not pinyin:
            lead = {"v": "yu", "e": "e", "i": "y", "u": "w"}.get(body[:1])
            pinyin = lead + body[1:] if lead is not None else body
    split = opencpop_phones(pinyin)
    if split is None or split[1] + tone not in _SYMBOLS:
        return _odd_syllable(pinyin + tone)
    return [split[0], split[1] + tone]


def _odd_syllable(reading: str) -> list[str]:
    """Phones for readings upstream cannot map (it raises): nearest standard syllable, else UNK."""
    tone = reading[-1] if reading[-1:] in tuple("12345") else "5"
    base = _ODD_READINGS.get(reading.rstrip("12345"))
    split = opencpop_phones(base) if base else None
    if split is None:
        return ["UNK", "UNK"]
    return [split[0], split[1] + tone]


def _merge_erhua(initials: list[str], finals: list[str], word: str, pos: str) -> list[str]:
    """v2 erhua: a final 儿 takes the tone of the syllable before it (upstream ``_merge_erhua``)."""
    if finals and word[len(finals) - 1 : len(finals)] == "儿" and finals[-1] == "er1":
        finals[-1] = "er2"
    if word not in _MUST_ERHUA and (word in _NOT_ERHUA or pos in {"a", "j", "nr"}):
        return finals
    if len(finals) != len(word):
        return finals
    out: list[str] = []
    for i, phn in enumerate(finals):
        if (
            i == len(finals) - 1
            and word[i] == "儿"
            and phn in {"er2", "er5"}
            and word[-2:] not in _NOT_ERHUA
            and out
        ):
            phn = "er" + out[-1][-1]
        out.append(phn)
    return out


class _Jieba:
    """A private jieba tokenizer (the global one may carry a user's custom words), reading its
    dictionary from the on-disk index of :mod:`~gsv_runtime.text.zh_dict` where it can."""

    _lock = threading.Lock()
    _instance: _Jieba | None = None

    def __init__(self) -> None:
        import jieba
        import jieba.posseg

        jieba.setLogLevel(logging.ERROR)
        self.tokenizer = jieba.Tokenizer()
        index = _dictionary_index(self.tokenizer)
        if index is None:
            self.tokenizer.initialize()
            self.pos = jieba.posseg.POSTokenizer(self.tokenizer)
            return
        self.tokenizer.FREQ, self.tokenizer.total = index.freq, index.total
        self.tokenizer.initialized = True
        # what POSTokenizer.__init__ sets, without reading the dictionary text again
        self.pos = jieba.posseg.POSTokenizer.__new__(jieba.posseg.POSTokenizer)
        self.pos.tokenizer, self.pos.word_tag_tab = self.tokenizer, index.tags

    @classmethod
    def get(cls) -> _Jieba:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance


def _dictionary_index(tokenizer: Any) -> DictionaryIndex | None:
    """The index of ``tokenizer``'s (default) dictionary in the compiled cache folder, built on
    first use; None without a cache folder or when it cannot be written or read."""
    import jieba
    import jieba.posseg

    cache = default_cache_dir()
    if cache is None:
        return None
    path = index_path(Path(cache), Path(jieba.__file__).with_name("dict.txt"), jieba.__version__)
    try:
        if not path.exists():
            freq, total = tokenizer.gen_pfdict(tokenizer.get_dict_file())
            tagger = jieba.posseg.POSTokenizer.__new__(jieba.posseg.POSTokenizer)
            tagger.load_word_tag(tokenizer.get_dict_file())
            build_index(path, freq, total, tagger.word_tag_tab)
        return DictionaryIndex.open(path)
    except (OSError, sqlite3.Error):
        _LOGGER.debug("no jieba dictionary index at %s", path, exc_info=True)
        return None


@functools.lru_cache(maxsize=1)
def _pinyin_funcs() -> tuple[Any, Any]:
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("Chinese text needs the [zh] extra: pip install 'gsv-rt[zh]'") from exc

    def initials(word: str) -> list[str]:
        return list(lazy_pinyin(word, neutral_tone_with_five=True, style=Style.INITIALS))

    def finals(word: str) -> list[str]:
        return list(lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3))

    return initials, finals


class ChineseG2P:
    """Mandarin G2P for one symbol version.

    Args:
        version: "v1" (pypinyin, no erhua) or "v2" (erhua; g2pW polyphones when ``g2pw`` is set).
        g2pw: an optional loaded g2pW predictor (v2 only).
    """

    def __init__(self, version: str = "v2", g2pw: PolyphonePredictor | None = None) -> None:
        self.version = "v1" if version == "v1" else "v2"
        self.g2pw = g2pw if self.version == "v2" else None
        self._jieba = _Jieba.get()
        self._initials, self._finals = _pinyin_funcs()
        self._sandhi = ToneSandhi(self._jieba.tokenizer.cut_for_search, self._finals)

    @property
    def polyphone_source(self) -> str:
        """Which polyphone path is used: "g2pw" or "pypinyin"."""
        return "g2pw" if self.g2pw is not None else "pypinyin"

    def g2p(self, norm_text: str) -> tuple[list[str], list[int]]:
        """Phones and word2ph (phones per character of ``norm_text``)."""
        sentences = [s for s in _RE_SENTENCE.split(norm_text) if s.strip()]
        sentences = [_RE_LATIN.sub("", s) for s in sentences]
        predicted: list[list[str]] = []
        if self.g2pw is not None:
            predicted = self.g2pw.predict([s for s in sentences if s])
        phones: list[str] = []
        word2ph: list[int] = []
        cursor = 0
        for sentence in sentences:
            readings = None
            if self.g2pw is not None and sentence:
                readings = predicted[cursor]
                cursor += 1
            for c, v in self._sentence_syllables(sentence, readings):
                if c == v and c in PUNCTUATION:
                    phones.append(c)
                    word2ph.append(1)
                else:
                    phones += _syllable_phones(c, v)
                    word2ph.append(2)
        return phones, word2ph

    def _sentence_syllables(
        self, sentence: str, readings: list[str] | None
    ) -> list[tuple[str, str]]:
        words = self._sandhi.pre_merge([(w.word, w.flag) for w in self._jieba.pos.lcut(sentence)])
        out: list[tuple[str, str]] = []
        offset = 0
        for word, pos in words:
            start, offset = offset, offset + len(word)
            if pos == "eng":
                continue
            if readings is not None:
                assert self.g2pw is not None
                initials, finals = self.g2pw.initials_finals(word, readings[start:offset])
            else:
                initials, finals = self._initials(word), self._finals(word)
            # A syllable without a final makes upstream raise; we keep the tones unchanged.
            with contextlib.suppress(IndexError):
                finals = self._sandhi.modify_tones(word, pos, finals)
            if self.version == "v2":
                finals = _merge_erhua(initials, finals, word, pos)
            out += zip(initials, finals, strict=False)
        return out


class ChineseFrontend:
    """Normaliser + G2P for "zh" runs (the ``LanguageG2P`` protocol of the frontend).

    Args:
        version: symbol table, "v1" or "v2".
        g2pw: a loaded g2pW predictor (``gsv_runtime.text.zh_g2pw.G2PW``; used for v2 only);
            None → pypinyin polyphones (upstream's path without g2pW).
    """

    def __init__(self, version: str = "v2", g2pw: PolyphonePredictor | None = None) -> None:
        self._g2p = ChineseG2P(version, g2pw)

    @property
    def polyphone_source(self) -> str:
        """ "g2pw" or "pypinyin"."""
        return self._g2p.polyphone_source

    def normalize(self, text: str) -> str:
        """Normalised text (CJK ideographs and ``!?…,.-`` only)."""
        return text_normalize(text)

    def g2p(self, norm_text: str) -> tuple[list[str], list[int]]:
        """Phones and word2ph."""
        return self._g2p.g2p(norm_text)
