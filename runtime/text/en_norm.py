"""English text normalisation: numbers, ordinals, money, times, units, fractions, symbols.

Mirrors upstream ``GPT_SoVITS/text/english.py::text_normalize`` and
``text/en_normalization/expend.py`` (number words from ``inflect``, as upstream). Deliberate
deviations are marked ``DEVIATION`` and listed in tests/data/frontend/README.md.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any, Final

from gsv_runtime.errors import InputError

_PUNCT: Final = "!?…,.-"
_RE_PUNCT_RUN: Final = re.compile(r"([!?…,.\-\s])([!?…,.\-])+")
_MEASURES: Final = {
    "m": ("meter", "meters"), "km": ("kilometer", "kilometers"),
    "km/h": ("kilometer per hour", "kilometers per hour"), "ft": ("feet", "feet"),
    "L": ("liter", "liters"), "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"), "h": ("hour", "hours"), "min": ("minute", "minutes"),
    "s": ("second", "seconds"), "°C": ("degree celsius", "degrees celsius"),
    "°F": ("degree fahrenheit", "degrees fahrenheit"),
}  # fmt: skip
_RE_ORDINAL_DOT: Final = re.compile(r"\b([0-9]+)\. ")
_RE_COMMA_NUMBER: Final = re.compile(r"([0-9][0-9\,]+[0-9])")
_RE_TIME: Final = re.compile(
    r"\b([01]?[0-9]|2[0-3]):([0-5][0-9])\b(\s*(?:[ap]\.m\.|[ap]m\b))?", re.IGNORECASE
)
_RE_DECADE: Final = re.compile(r"\b(1[0-9][0-9]0|20[0-9]0)s\b")
# DEVIATION: "km/h" is tried before "km" (upstream reads "120km/h" as "… kilometersh").
_RE_MEASURE: Final = re.compile(r"\b([0-9]+(\.[0-9]+)?(km/h|m|km|ft|L|tbsp|tsp|h|min|s|°C|°F))\b")
_RE_POUNDS_START: Final = re.compile(r"£([0-9\.\,]*[0-9]+)")
_RE_POUNDS_END: Final = re.compile(r"([0-9\.\,]*[0-9]+)£")
_RE_DOLLARS_START: Final = re.compile(r"\$([0-9\.\,]*[0-9]+)")
_RE_DOLLARS_END: Final = re.compile(r"([(0-9\.\,]*[0-9]+)\$")
_RE_DECIMAL: Final = re.compile(r"([0-9]+\.\s*[0-9]+)")
_RE_FRACTION: Final = re.compile(r"([0-9]+/[0-9]+)")
_RE_ORDINAL: Final = re.compile(r"[0-9]+(st|nd|rd|th)")
_RE_NUMBER: Final = re.compile(r"[0-9]+")
_SUP: Final = "[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*"
_OPERAND: Final = rf"((-?)((\d+)(\.\d+)?{_SUP})|(\.\d+{_SUP})|([A-Za-z]{_SUP}))"
_RE_ASMD: Final = re.compile(_OPERAND + r"\s+([\+\-\×÷=])\s+" + _OPERAND)
_ASMD: Final = {"+": " plus ", "-": " minus ", "×": " times ", "÷": " divided by ", "=": " Equals "}
_RE_NEGATIVE: Final = re.compile(r"(?:^|\s+)(-)(\d+)")
_RE_DROP: Final = re.compile(r"[^ A-Za-z'.,?!\-]")
_RE_CAPS: Final = re.compile(r"(?<!^)(?<![\s])([A-Z])")
_MAX_NUMBER_DIGITS: Final = 36
"""Longer digit runs are read digit by digit (DEVIATION: inflect cannot name them)."""


@functools.lru_cache(maxsize=1)
def _inflect() -> Any:
    try:
        import inflect
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("English text needs the [en] extra: pip install 'gsv-rt[en]'") from exc
    return inflect.engine()


def _words(num: int, **kwargs: Any) -> str:
    if len(str(num)) > _MAX_NUMBER_DIGITS:
        return " ".join(_inflect().number_to_words(int(d)) for d in str(num))
    return str(_inflect().number_to_words(num, **kwargs))


def _ordinal_dot(m: re.Match[str]) -> str:
    return _inflect().ordinal(m.group(1)) + ", "


def _time(m: re.Match[str]) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    period = "a.m." if hours < 12 else "p.m."
    # DEVIATION: a written am/pm after the time is used instead of being read a second time
    # (upstream: "3:07 pm" → "three seven a.m. pm").
    if m.group(3):
        period = "p.m." if "p" in m.group(3).lower() else "a.m."
    if hours > 12:
        hours -= 12
    # DEVIATION: upstream reads 0:xx as "zero ..." and 9:05 as "nine five".
    hours = hours or 12
    if minutes == 0:
        return f"{_words(hours)} o'clock {period}"
    minute_txt = f"oh {_words(minutes)}" if minutes < 10 else _words(minutes)
    return f"{_words(hours)} {minute_txt} {period}"


def _measure(m: re.Match[str]) -> str:
    unit = m.group(3)
    num = int(m.group(1).replace(unit, "").replace(".", ""))
    plural = not (m.group(2) is None and num == 1)
    return m.group(1).replace(unit, " " + _MEASURES[unit][int(plural)])


def _money(m: re.Match[str], unit: tuple[str, str], sub: tuple[str, str], zero: str) -> str:
    parts = m.group(1).split(".")
    if len(parts) > 2:
        return m.group(1) + " " + unit[1]
    main = int(parts[0]) if parts[0] else 0
    cents = int(parts[1].ljust(2, "0")) if len(parts) > 1 and parts[1] else 0
    main_txt = f"{main} {unit[0] if main == 1 else unit[1]}"
    sub_txt = f"{cents} {sub[0] if cents == 1 else sub[1]}"
    if main and cents:
        return f"{main_txt} and {sub_txt}"
    if main:
        return main_txt
    if cents:
        return sub_txt
    return zero


def _pounds(m: re.Match[str]) -> str:
    return _money(m, ("pound", "pounds"), ("penny", "pence"), "zero pounds")


def _dollars(m: re.Match[str]) -> str:
    return _money(m, ("dollar", "dollars"), ("cent", "cents"), "zero dollars")


def _decimal(m: re.Match[str]) -> str:
    whole, frac = m.group(1).split(".")[:2]
    return whole + " point " + " ".join(frac)


def _fraction(m: re.Match[str]) -> str:
    numerator, denominator = (int(x) for x in m.group(0).split("/"))
    num_txt = _words(numerator)
    if denominator == 2:
        den_txt = "half" if numerator == 1 else "halves"
    elif denominator == 1:
        return num_txt
    else:
        den_txt = _inflect().ordinal(_words(denominator))
        if numerator > 1:
            den_txt += "s"
    return f"{num_txt} {den_txt}"


def _ordinal(m: re.Match[str]) -> str:
    return _words_text(m.group(0))


def _words_text(text: str) -> str:
    if sum(c.isdigit() for c in text) > _MAX_NUMBER_DIGITS:
        return " ".join(_words(int(d)) for d in text if d.isdigit())
    return str(_inflect().number_to_words(text))


def _number(m: re.Match[str]) -> str:
    return _number_words(int(m.group(0)))


def _number_words(num: int) -> str:
    if 1000 < num < 3000:
        if num == 2000:
            return "two thousand"
        if 2000 < num < 2010:
            return "two thousand " + _words(num % 100)
        if num % 100 == 0:
            return _words(num // 100) + " hundred"
        return _words(num, andword="", zero="oh", group=2).replace(", ", " ")
    return _words(num, andword="")


def _decade(m: re.Match[str]) -> str:
    # DEVIATION: upstream reads "1990s" as "nineteen ninety seconds" (the unit "s").
    words = _number_words(int(m.group(1)))
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _asmd(m: re.Match[str]) -> str:
    return m.group(1) + _ASMD[m.group(8)] + m.group(9)


def _negative(m: re.Match[str]) -> str:
    # DEVIATION: upstream drops the whitespace before the sign ("is -5" → "isnegative 5").
    lead = m.group(0)[: m.start(1) - m.start(0)]
    return lead + "negative " + m.group(2)


def expand(text: str) -> str:
    """Upstream ``expend.normalize``: verbalise numbers and symbols, keep ``A-Za-z '.,?!-``."""
    text = _RE_ORDINAL_DOT.sub(_ordinal_dot, text)
    for _ in range(len(text)):
        new = _RE_ASMD.sub(_asmd, text)
        if new == text:
            break
        text = new
    text = _RE_NEGATIVE.sub(_negative, text)
    text = _RE_COMMA_NUMBER.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _RE_TIME.sub(_time, text)
    text = _RE_DECADE.sub(_decade, text)
    text = _RE_MEASURE.sub(_measure, text)
    text = _RE_POUNDS_START.sub(_pounds, text)
    text = _RE_POUNDS_END.sub(_pounds, text)
    text = _RE_DOLLARS_START.sub(_dollars, text)
    text = _RE_DOLLARS_END.sub(_dollars, text)
    text = _RE_DECIMAL.sub(_decimal, text)
    text = _RE_FRACTION.sub(_fraction, text)
    text = _RE_ORDINAL.sub(_ordinal, text)
    text = _RE_NUMBER.sub(_number, text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = text.replace("%", " percent")
    text = _RE_DROP.sub("", text)
    text = re.sub(r"(?i)i\.e\.", "that is", text)
    text = re.sub(r"(?i)e\.g\.", "for example", text)
    return _RE_CAPS.sub(r" \1", text)


def text_normalize(text: str) -> str:
    """Upstream ``english.text_normalize``."""
    # Upstream builds its replacement regex from re.escape()d keys, so its two character-class
    # keys only ever match themselves literally; only 。！？ are really mapped.
    for src, dst in (("[;:：，；]", ","), ('["’]', "'"), ("。", "."), ("！", "!"), ("？", "?")):
        text = text.replace(src, dst)
    text = expand(text)
    return _RE_PUNCT_RUN.sub(r"\1", text)
