"""Japanese G2P: OpenJTalk (pyopenjtalk-plus, dictionary in the wheel) phones with prosody marks.

Mirrors upstream ``GPT_SoVITS/text/japanese.py``: "％" → パーセント, lower case, the text is cut at
every non-Japanese character (each kept as its own phone, spaces dropped), and each Japanese run
becomes OpenJTalk phones with ESPnet-style prosody marks: "[" pitch rise, "]" pitch fall,
"#" accent-phrase boundary, "_" pause. "#" is not in the symbol tables (→ UNK, as upstream).
Upstream compiles and loads a user dictionary when ``text/ja_userdic/userdict.csv`` is present (its
git repository has one: 134k full-width Latin words → katakana, plus names). It is not shipped
here; :func:`load_user_dictionary` loads a user's copy the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
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


_USER_DICT_LOCK: Final = threading.Lock()
_USER_DICT: list[Path] = []
_MECAB_FIELDS: Final = 13
"""Fields of a MeCab dictionary CSV row (surface, ids, cost, POS…, reading, pronunciation)."""


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null for a while (keeps JSON on stdout clean)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def user_dictionary() -> Path | None:
    """The user dictionary CSV in use (None: OpenJTalk's own dictionary only)."""
    return _USER_DICT[0] if _USER_DICT else None


def load_user_dictionary(csv_path: str | Path) -> None:
    """Compile a MeCab user dictionary CSV and make OpenJTalk use it, as upstream does.

    Upstream's ``japanese.py`` does this at import with ``ja_userdic/userdict.csv``. OpenJTalk
    has one global instance, so this holds for the whole process; the compiled file goes to a
    temporary folder (nothing is written next to the CSV).

    Raises:
        InputError: the file is missing or not a MeCab CSV, or the [ja] extra is not installed.
    """
    path = Path(csv_path)
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip() and line.count(",") + 1 < _MECAB_FIELDS:
                    raise InputError(f"{path}:{n}: not a MeCab dictionary row ({line.strip()!r})")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the Japanese user dictionary ({exc})") from exc
    try:
        import pyopenjtalk
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("Japanese text needs the [ja] extra: pip install 'gsv-rt[ja]'") from exc
    # the compiled file is only needed while OpenJTalk loads it (MeCab maps it into memory)
    with (
        _USER_DICT_LOCK,
        JapaneseFrontend._lock,
        tempfile.TemporaryDirectory(prefix="gsv-ja-userdic-") as tmp,
    ):
        compiled = Path(tmp) / "user.dict"
        try:
            with _silenced_stdout():  # MeCab's compiler prints progress on the C stdout
                pyopenjtalk.mecab_dict_index(str(path), str(compiled))
        except Exception as exc:  # MeCab rejects a row it cannot parse
            raise InputError(
                f"{path}: MeCab could not compile this user dictionary ({exc})"
            ) from None
        if not compiled.is_file():
            raise InputError(f"{path}: MeCab could not compile this user dictionary")
        pyopenjtalk.update_global_jtalk_with_user_dict(str(compiled))
        _USER_DICT[:] = [path]


def unload_user_dictionary() -> None:
    """Back to OpenJTalk's own dictionary (undoes :func:`load_user_dictionary`)."""
    if not _USER_DICT:
        return
    import pyopenjtalk

    with _USER_DICT_LOCK, JapaneseFrontend._lock:
        pyopenjtalk.unset_user_dict()
        _USER_DICT.clear()


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
