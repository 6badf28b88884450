"""Japanese G2P: OpenJTalk (pyopenjtalk-plus, dictionary in the wheel) phones with prosody marks.

Mirrors upstream ``GPT_SoVITS/text/japanese.py``: "％" → パーセント, lower case, the text is cut at
every non-Japanese character (each kept as its own phone, spaces dropped), and each Japanese run
becomes OpenJTalk phones with ESPnet-style prosody marks: "[" pitch rise, "]" pitch fall,
"#" accent-phrase boundary, "_" pause. "#" is not in the symbol tables (→ UNK, as upstream).
Upstream optionally loads a user dictionary (ja_userdic/userdict.csv, Latin words → katakana and
nine names); it is not shipped here.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Final

from gsv_runtime.errors import InputError

_JA_CLASS: Final = (
    r"A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
)
_RE_JA_CHAR: Final = re.compile(f"[{_JA_CLASS}]")
_RE_NON_JA: Final = re.compile(f"[^{_JA_CLASS}]")
_RE_PUNCT_RUN: Final = re.compile(r"([!?…,.\-])([!?…,.\-])+")
_PUNCT_MAP: Final = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "...": "…",
}  # fmt: skip
_RE_P3: Final = re.compile(r"\-(.*?)\+")
_RE_A1: Final = re.compile(r"/A:([0-9\-]+)\+")
_RE_A2: Final = re.compile(r"\+(\d+)\+")
_RE_A3: Final = re.compile(r"\+(\d+)/")
_RE_F1: Final = re.compile(r"/F:(\d+)_")
_RE_E3: Final = re.compile(r"!(\d+)_")


def _feature(pattern: re.Pattern[str], label: str) -> int:
    m = pattern.search(label)
    return -50 if m is None else int(m.group(1))


def prosody_phones(labels: list[str]) -> list[str]:
    """Phones with prosody marks from OpenJTalk full-context labels, "^" … "$"/"?" included.

    The algorithm is the one of ESPnet's ``pyopenjtalk_g2p_prosody`` (Kurihara et al. 2021,
    "Prosodic features control by symbols as input of sequence-to-sequence acoustic modeling
    for neural TTS"), with unvoiced vowels read as voiced, as upstream.
    """
    phones: list[str] = []
    count = len(labels)
    for n, label in enumerate(labels):
        m = _RE_P3.search(label)
        p3 = m.group(1) if m else ""
        if p3 in "AEIOU":
            p3 = p3.lower()
        if p3 == "sil":
            if n == 0:
                phones.append("^")
            elif n == count - 1:
                e3 = _feature(_RE_E3, label)
                if e3 == 0:
                    phones.append("$")
                elif e3 == 1:
                    phones.append("?")
            continue
        if p3 == "pau":
            phones.append("_")
            continue
        phones.append(p3)
        a1 = _feature(_RE_A1, label)
        a2 = _feature(_RE_A2, label)
        a3 = _feature(_RE_A3, label)
        f1 = _feature(_RE_F1, label)
        a2_next = _feature(_RE_A2, labels[n + 1]) if n + 1 < count else -50
        if a3 == 1 and a2_next == 1 and p3 in "aeiouAEIOUNcl":
            phones.append("#")
        elif a1 == 0 and a2_next == a2 + 1 and a2 != f1:
            phones.append("]")
        elif a2 == 1 and a2_next == 2:
            phones.append("[")
    return phones


class JapaneseFrontend:
    """Normaliser + G2P for "ja" runs (the ``LanguageG2P`` protocol of the frontend)."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import pyopenjtalk
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InputError(
                "Japanese text needs the [ja] extra: pip install 'gsv-rt[ja]'"
            ) from exc
        self._ojt: Any = pyopenjtalk

    def normalize(self, text: str) -> str:
        """Upstream only collapses punctuation runs."""
        return _RE_PUNCT_RUN.sub(r"\1", text)

    def _labels(self, text: str) -> list[str]:
        with self._lock:  # OpenJTalk's global instance is not thread-safe
            # use_vanilla: skip pyopenjtalk-plus's own reading corrections (Sudachi, the "何"
            # model, ...) so the result follows plain pyopenjtalk, which upstream requires.
            features = self._ojt.run_frontend(text, use_vanilla=True)
            return list(self._ojt.make_label(features))

    def g2p(self, norm_text: str) -> tuple[list[str], None]:
        """Phones with prosody marks; other characters kept one by one (mapped punctuation)."""
        text = norm_text.replace("％", "パーセント").lower()
        runs = _RE_NON_JA.split(text)
        marks = _RE_NON_JA.findall(text)
        phones: list[str] = []
        for i, run in enumerate(runs):
            if _RE_JA_CHAR.match(run):
                phones += prosody_phones(self._labels(run))[1:-1]
            if i < len(marks):
                if marks[i] == " ":
                    continue
                phones.append(marks[i].replace(" ", ""))
        return [_PUNCT_MAP.get(p, p) for p in phones], None
