"""Korean G2P: Latin letters to Hangul names, g2pk2 pronunciation rules, compatibility jamo.

Mirrors upstream ``GPT_SoVITS/text/korean.py::g2p``: no text normalisation (the normalised text is
the input), Latin letters read as Hangul letter names, ``g2pk2`` (python-mecab-ko) applies the
pronunciation rules, syllables decompose into compatibility jamo with diphthongs split, upstream's
g2pk2 fix, a "." after a final jamo, then space → "空" and anything outside the table → "停".
"""

from __future__ import annotations

import re
import threading
from typing import Any, Final

from gsv_runtime.errors import InputError
from gsv_runtime.text.symbols import SYMBOLS_V2

_LATIN: Final = (
    ("a", "에이"), ("b", "비"), ("c", "시"), ("d", "디"), ("e", "이"), ("f", "에프"), ("g", "지"),
    ("h", "에이치"), ("i", "아이"), ("j", "제이"), ("k", "케이"), ("l", "엘"), ("m", "엠"),
    ("n", "엔"), ("o", "오"), ("p", "피"), ("q", "큐"), ("r", "아르"), ("s", "에스"), ("t", "티"),
    ("u", "유"), ("v", "브이"), ("w", "더블유"), ("x", "엑스"), ("y", "와이"), ("z", "제트"),
)  # fmt: skip
_DIPHTHONGS: Final = (
    ("ㅘ", "ㅗㅏ"), ("ㅙ", "ㅗㅐ"), ("ㅚ", "ㅗㅣ"), ("ㅝ", "ㅜㅓ"), ("ㅞ", "ㅜㅔ"), ("ㅟ", "ㅜㅣ"),
    ("ㅢ", "ㅡㅣ"), ("ㅑ", "ㅣㅏ"), ("ㅒ", "ㅣㅐ"), ("ㅕ", "ㅣㅓ"), ("ㅖ", "ㅣㅔ"), ("ㅛ", "ㅣㅗ"),
    ("ㅠ", "ㅣㅜ"),
)  # fmt: skip
_PUNCT_MAP: Final = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "...": "…", " ": "空",
}  # fmt: skip
_SYMBOLS: Final = frozenset(SYMBOLS_V2)
_RE_FINAL_JAMO: Final = re.compile(r"([\u3131-\u3163])$")


def latin_to_hangul(text: str) -> str:
    """Replace each Latin letter by its Korean letter name (case-insensitive)."""
    for letter, name in _LATIN:
        text = re.sub(letter, name, text, flags=re.IGNORECASE)
    return text


def fix_g2pk2_error(text: str) -> str:
    """Upstream's fix: "ㅇㅡㄹ ㄹ" / "ㄹㅡㄹ ㄹ" → "… ㄴ" (g2pk2 over-applies liquidisation)."""
    out = []
    i = 0
    while i < len(text) - 4:
        if text[i : i + 3] in ("ㅇㅡㄹ", "ㄹㅡㄹ") and text[i + 3] == " " and text[i + 4] == "ㄹ":
            out.append(text[i : i + 3] + " ㄴ")
            i += 5
        else:
            out.append(text[i])
            i += 1
    out.append(text[i:])
    return "".join(out)


def _load_g2pk2() -> Any:
    """A g2pk2 ``G2p`` built without its side effects.

    Importing g2pk2 downloads NLTK's cmudict when it is missing, and ``G2p()`` shells out to pip
    and prints; we import it with that lookup answered, and set the attributes its constructor
    sets. Its English path is never reached (Latin letters become Hangul first), so the NLTK
    dictionary stays empty.
    """
    try:
        import mecab
        import nltk.data
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("Korean text needs the [ko] extra: pip install 'gsv-rt[ko]'") from exc
    original_find = nltk.data.find

    def find(resource: str, *args: Any, **kwargs: Any) -> Any:
        if resource == "corpora/cmudict.zip":
            return resource
        return original_find(resource, *args, **kwargs)

    nltk.data.find = find
    try:
        import g2pk2.g2pk2 as g2pk2_module
        from g2pk2.utils import get_rule_id2text, parse_table
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("Korean text needs the [ko] extra: pip install 'gsv-rt[ko]'") from exc
    finally:
        nltk.data.find = original_find
    g2p = object.__new__(g2pk2_module.G2p)
    g2p.use_konlpy = False
    g2p.mecab_path = None
    g2p.mecab = mecab.MeCab()
    g2p.table = parse_table()
    g2p.cmu = {}
    g2p.rule2text = get_rule_id2text()
    from pathlib import Path

    g2p.idioms_path = str(Path(g2pk2_module.__file__).parent / "idioms.txt")
    return g2p


class KoreanFrontend:
    """G2P for "ko" runs (the ``LanguageG2P`` protocol of the frontend)."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._g2pk2 = _load_g2pk2()
        from jamo import h2j, j2hcj

        self._h2j, self._j2hcj = h2j, j2hcj

    def normalize(self, text: str) -> str:
        """Korean has no normalisation step upstream: the text is returned unchanged."""
        return text

    def g2p(self, norm_text: str) -> tuple[list[str], None]:
        """Jamo phones, "空" for spaces, "停" for anything else outside the table."""
        text = latin_to_hangul(norm_text)
        with self._lock:
            text = self._g2pk2(text)
        text = self._j2hcj(self._h2j(text))
        for src, dst in _DIPHTHONGS:
            text = text.replace(src, dst)
        text = fix_g2pk2_error(text)
        text = _RE_FINAL_JAMO.sub(r"\1.", text)
        phones = []
        for ch in text:
            ph = _PUNCT_MAP.get(ch, ch)
            phones.append(ph if ph in _SYMBOLS else "停")
        return phones, None
