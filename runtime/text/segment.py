"""Text segmentation: upstream's cut0–cut5 methods plus the pre/post rules around them.

Mirrors upstream ``GPT_SoVITS/TTS_infer_pack/text_segmentation_method.py`` and
``TextPreprocessor.pre_seg_text``: punctuation runs collapse, a leading "。"/"." is added when the
first clause is short, the chosen cut method splits into lines, short lines merge (≥ 5 chars), pure
symbol lines are dropped, a closing "。"/"." is added, and lines over 510 chars are split at
punctuation.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Final

from gsv_runtime.errors import InputError

SPLITS: Final = frozenset("，。？！,.?!~:：—…")
"""Clause-ending marks (upstream ``splits``)."""

_SEG_PUNCT: Final = frozenset("!?…,.- ")
"""A line made only of these is dropped by the cut methods (upstream ``punctuation``)."""

_CUT5_MARKS: Final = frozenset(",.;?!、，。？！;：…")
_RE_PUNCT_RUN: Final = re.compile(r"([!?…,.\-])([!?…,.\-])+")
_RE_SPLITS: Final = re.compile("[" + re.escape("".join(sorted(SPLITS))) + "]")
_RE_SPLITS_KEEP: Final = re.compile("([" + re.escape("".join(sorted(SPLITS))) + "])")
_RE_WORD: Final = re.compile(r"\W+")
_RE_CUT4: Final = re.compile(r"(?<!\d)\.(?!\d)")

MAX_SEGMENT_CHARS: Final = 510
"""Longest segment handed to G2P/BERT (upstream ``split_big_text``)."""

MIN_SEGMENT_CHARS: Final = 5
"""Shorter cut pieces are merged with the next (upstream ``merge_short_text_in_array``)."""


def _only(text: str, marks: frozenset[str]) -> bool:
    return set(text) <= marks


def _clauses(text: str) -> list[str]:
    """Split after every clause mark, "……" and "——" read as one; a final "。" is added if needed."""
    text = text.replace("……", "。").replace("——", "，")
    if text[-1] not in SPLITS:
        text += "。"
    out: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if ch in SPLITS:
            out.append(text[start : i + 1])
            start = i + 1
    return out


def cut0(text: str) -> str:
    """No split (a line of pure punctuation becomes empty)."""
    return "\n" if _only(text, _SEG_PUNCT) else text


def cut1(text: str) -> str:
    """Split into groups of four clauses (the last group takes the remainder)."""
    text = text.strip("\n")
    clauses = _clauses(text)
    starts = list(range(0, len(clauses), 4))
    if len(starts) > 1:
        bounds = [*starts[:-1], len(clauses)]
        groups = ["".join(clauses[a:b]) for a, b in itertools.pairwise(bounds)]
    else:
        groups = [text]
    return "\n".join(g for g in groups if not _only(g, _SEG_PUNCT))


def cut2(text: str) -> str:
    """Split into pieces of more than 50 characters; a short last piece joins the one before."""
    text = text.strip("\n")
    clauses = _clauses(text)
    if len(clauses) < 2:
        return text
    groups: list[str] = []
    buf = ""
    for clause in clauses:
        buf += clause
        if len(buf) > 50:
            groups.append(buf)
            buf = ""
    if buf:
        groups.append(buf)
    if len(groups) > 1 and len(groups[-1]) < 50:
        tail = groups.pop()
        groups[-1] += tail
    return "\n".join(g for g in groups if not _only(g, _SEG_PUNCT))


def cut3(text: str) -> str:
    """Split at each Chinese full stop "。" (the marks are removed)."""
    parts = text.strip("\n").strip("。").split("。")
    return "\n".join(p for p in parts if not _only(p, _SEG_PUNCT))


def cut4(text: str) -> str:
    """Split at each "." that is not a decimal point (the marks are removed)."""
    parts = _RE_CUT4.split(text.strip("\n").strip("."))
    return "\n".join(p for p in parts if not _only(p, _SEG_PUNCT))


def cut5(text: str) -> str:
    """Split after every punctuation mark, except a "." between two digits."""
    text = text.strip("\n")
    pieces: list[str] = []
    buf: list[str] = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        buf.append(ch)
        # DEVIATION: upstream keeps only "." between digits together; we keep "," too, so
        # "1,350.75" is not cut into "1," and "350.75".
        if ch in _CUT5_MARKS and not (
            ch in ".," and 0 < i < last and text[i - 1].isdigit() and text[i + 1].isdigit()
        ):
            pieces.append("".join(buf))
            buf = []
    if buf:
        pieces.append("".join(buf))
    return "\n".join(p for p in pieces if not _only(p, _CUT5_MARKS))


CUT_METHODS: Final[dict[str, Callable[[str], str]]] = {
    "cut0": cut0,
    "cut1": cut1,
    "cut2": cut2,
    "cut3": cut3,
    "cut4": cut4,
    "cut5": cut5,
}
"""Upstream ``text_split_method`` names → cut functions."""


def collapse_punctuation(text: str) -> str:
    """Keep the first mark of a run of ``!?…,.-`` (upstream ``replace_consecutive_punctuation``)."""
    return _RE_PUNCT_RUN.sub(r"\1", text)


def merge_short(texts: list[str], threshold: int = MIN_SEGMENT_CHARS) -> list[str]:
    """Join pieces until each has ``threshold`` chars or more; a short tail joins the last one."""
    if len(texts) < 2:
        return texts
    out: list[str] = []
    buf = ""
    for t in texts:
        buf += t
        if len(buf) >= threshold:
            out.append(buf)
            buf = ""
    if buf:
        if out:
            out[-1] += buf
        else:
            out.append(buf)
    return out


def split_long(text: str, max_len: int = MAX_SEGMENT_CHARS) -> list[str]:
    """Split a long text at clause marks into pieces of at most ``max_len`` chars.

    Upstream ``split_big_text``; DEVIATION: a piece that is still too long (no punctuation) is
    cut every ``max_len`` chars, empty pieces are dropped and a lone closing mark rejoins the
    piece before it.
    """
    out: list[str] = []
    buf = ""
    for part in _RE_SPLITS_KEEP.split(text):
        if len(buf) + len(part) > max_len:
            out.append(buf)
            buf = part
        else:
            buf += part
    if buf:
        out.append(buf)
    pieces: list[str] = []
    for piece in (p[i : i + max_len] for p in out if p for i in range(0, len(p), max_len)):
        # A lone closing mark left over by a hard cut goes back onto the piece before it.
        if pieces and _only(piece, SPLITS) and len(pieces[-1]) + len(piece) <= max_len:
            pieces[-1] += piece
        else:
            pieces.append(piece)
    return pieces


def _first_clause(text: str) -> str:
    return _RE_SPLITS.split(text, maxsplit=1)[0].strip()


def split_text(text: str, method: str = "cut5", lang: str = "zh") -> list[str]:
    """Cut a text into the segments upstream synthesises one by one.

    Args:
        text: raw input text.
        method: "cut0" … "cut5" (upstream ``text_split_method``).
        lang: the request language; only "en" changes the added marks ("." instead of "。").

    Returns:
        The segments, each ending with a clause mark; an empty list when nothing speakable is left.

    Raises:
        InputError: for an unknown method.
    """
    cut = CUT_METHODS.get(method)
    if cut is None:
        raise InputError(
            f"unknown text split method {method!r}; expected one of {sorted(CUT_METHODS)}"
        )
    stop = "." if lang == "en" else "。"
    text = collapse_punctuation(text).strip("\n")
    if not text:
        return []
    if text[0] not in SPLITS and len(_first_clause(text)) < 4:
        text = stop + text
    text = cut(text)
    lines = [t for t in re.sub(r"\n{2,}", "\n", text).split("\n") if t not in ("", " ")]
    segments: list[str] = []
    for line in merge_short(lines):
        if not line.strip() or not _RE_WORD.sub("", line):
            continue
        if line[-1] not in SPLITS:
            line += stop
        segments += split_long(line) if len(line) > MAX_SEGMENT_CHARS else [line]
    return segments
