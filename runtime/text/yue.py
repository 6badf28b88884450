"""Cantonese G2P: Chinese normalisation, then ToJyutping syllables split into "Y"-prefixed phones.

Mirrors upstream ``GPT_SoVITS/text/cantonese.py``: each syllable becomes (initial, final+tone) by
the first matching entry of upstream's initial list (which also holds some vowel onsets, so
"aai3" → "Yaa", "Yi3"); punctuation stays as is. word2ph has one entry per character.
"""

from __future__ import annotations

import re
import threading
from typing import Final

from gsv_runtime.errors import InputError
from gsv_runtime.text.normalize import normalize_zh_clauses
from gsv_runtime.text.symbols import PUNCTUATION

_REP_MAP: Final = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "...": "…", "$": ".", "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'",
    "（": "'", "）": "'", "(": "'", ")": "'", "《": "'", "》": "'", "【": "'", "】": "'",
    "[": "'", "]": "'", "—": "-", "～": "-", "~": "-", "「": "'", "」": "'",
}  # fmt: skip
_RE_REP: Final = re.compile("|".join(re.escape(k) for k in _REP_MAP))
_PUNCT_CLASS: Final = "".join(re.escape(p) for p in PUNCTUATION)
_RE_NOT_KEPT: Final = re.compile(rf"[^\u4e00-\u9fa5{_PUNCT_CLASS}]+")
_RE_SYLLABLE: Final = re.compile(r"^([a-z]+[1-6]+[ ]?)+$")
# Order matters: the first prefix that matches wins (upstream's INITIALS list).
_ONSETS: Final = (
    "aa", "aai", "aak", "aap", "aat", "aau", "ai", "au", "ap", "at", "ak", "a", "p", "b", "e",
    "ts", "t", "dz", "d", "kw", "k", "gw", "g", "f", "h", "l", "m", "ng", "n", "s", "y", "w",
    "c", "z", "j", "ong", "on", "ou", "oi", "ok", "o", "uk", "ung", "sp", "spl", "spn", "sil",
)  # fmt: skip


def text_normalize(text: str) -> str:
    """Chinese normalisation with Cantonese punctuation mapping (no punctuation-run collapse)."""
    out = []
    for clause in normalize_zh_clauses(text):
        clause = _RE_REP.sub(lambda m: _REP_MAP[m.group()], clause)
        out.append(_RE_NOT_KEPT.sub("", clause))
    return "".join(out)


def syllable_phones(syllable: str) -> list[str]:
    """One Jyutping syllable ("keoi5") → ["Yk", "Yeoi5"] (upstream's onset split)."""
    try:
        tone = int(syllable[-1])
        body = syllable[:-1]
    except ValueError:
        tone, body = 0, syllable
    for onset in _ONSETS:
        if body.startswith(onset):
            if body.startswith("nga"):
                first, rest = body[:2], body[2:] or body[-1]
            else:
                first, rest = onset, body[len(onset) :] or onset[-1]
            final = f"{rest}{tone}" if tone not in (-1, 0) else rest
            return [_prefixed(first), _prefixed(final)]
    return ["UNK", "UNK"]  # upstream drops the syllable and then fails its word2ph check


def _prefixed(phone: str) -> str:
    return phone if phone in PUNCTUATION else "Y" + phone


class CantoneseFrontend:
    """Normaliser + G2P for "yue" runs (the ``LanguageG2P`` protocol of the frontend)."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import ToJyutping
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InputError(
                "Cantonese text needs the [yue] extra: pip install 'gsv-rt[yue]'"
            ) from exc
        self._jyutping = ToJyutping.get_jyutping_list

    def normalize(self, text: str) -> str:
        """Normalised text (CJK ideographs and ``!?…,.-`` only)."""
        return text_normalize(text)

    def g2p(self, norm_text: str) -> tuple[list[str], list[int]]:
        """Phones and word2ph (2 per syllable, 1 per punctuation mark)."""
        with self._lock:
            pairs = self._jyutping(norm_text)
        phones: list[str] = []
        word2ph: list[int] = []
        for char, syllable in pairs:
            if char in PUNCTUATION:
                phones.append(char)
                word2ph.append(1)
            elif syllable and _RE_SYLLABLE.search(syllable) and " " not in syllable.strip():
                phones += syllable_phones(syllable.strip())
                word2ph.append(2)
            else:  # no reading: upstream raises ValueError
                phones += ["UNK", "UNK"]
                word2ph.append(2)
        return phones, word2ph
