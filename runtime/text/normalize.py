"""Chinese text normalisation (numbers, dates, times, units, phones, t2s, width) for zh and yue.

Behaviour mirrors upstream ``GPT_SoVITS/text/zh_normalization`` (itself from PaddleSpeech): the text
is cut into clauses, each clause is verbalised by an ordered list of regex rules, and the result
keeps the reading upstream produces. Deliberate deviations (upstream crashes or reads plainly wrong)
are marked ``DEVIATION`` and listed in tests/data/frontend/README.md.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from importlib import resources
from typing import Final

DIGITS: Final = dict(zip("0123456789", "零一二三四五六七八九", strict=True))
_UNITS: Final = ((8, "亿"), (4, "万"), (3, "千"), (2, "百"), (1, "十"))
_MAX_CARDINAL_DIGITS: Final = 32
"""Longer integers are read digit by digit (DEVIATION: upstream recurses without bound)."""


@functools.lru_cache(maxsize=1)
def _t2s_table() -> dict[int, int]:
    text = resources.files("gsv_runtime.text").joinpath("data/zh_t2s.txt").read_text("utf-8")
    trad, simp = (ln for ln in text.splitlines() if ln and not ln.startswith("#"))
    return {ord(t): ord(s) for t, s in zip(trad, simp, strict=True)}


def traditional_to_simplified(text: str) -> str:
    """Character-level traditional → simplified conversion (upstream's PaddleSpeech table)."""
    return text.translate(_t2s_table())


_F2H: Final = {
    **{ord(c) + 0xFEE0: ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"},
    **{ord(c) + 0xFEE0: ord(c) for c in "0123456789"},
    0x3000: ord(" "),
}


def _ascii_digits(text: str) -> str:
    """Map non-ASCII decimal digits to ASCII (DEVIATION: upstream raises KeyError on them)."""
    if text.isascii():
        return text
    return "".join(
        str(unicodedata.decimal(c)) if c.isdecimal() and not c.isascii() else c for c in text
    )


# ---------------------------------------------------------------------------------------------
# number verbalisation


def _cardinal_parts(digits: str, use_zero: bool = True) -> list[str]:
    stripped = digits.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        if use_zero and len(stripped) < len(digits):
            return [DIGITS["0"], DIGITS[stripped]]
        return [DIGITS[stripped]]
    power, unit = next((p, u) for p, u in _UNITS if p < len(stripped))
    return [*_cardinal_parts(digits[:-power]), unit, *_cardinal_parts(digits[-power:])]


def verbalize_cardinal(digits: str) -> str:
    """Read an integer string as a Chinese cardinal ("1203" → "一千二百零三", "10" → "十")."""
    if not digits:
        return ""
    digits = digits.lstrip("0")
    if not digits:
        return DIGITS["0"]
    if len(digits) > _MAX_CARDINAL_DIGITS:
        return verbalize_digit(digits)
    parts = _cardinal_parts(digits)
    if len(parts) >= 2 and parts[0] == "一" and parts[1] == "十":
        parts = parts[1:]
    return "".join(parts)


def verbalize_digit(digits: str, alt_one: bool = False) -> str:
    """Read digit by digit; ``alt_one`` reads 1 as 幺 (phone numbers)."""
    out = "".join(DIGITS[d] for d in digits)
    return out.replace("一", "幺") if alt_one else out


def num2str(value: str) -> str:
    """Read a decimal number string ("3.20" → "三点二零"; trailing zeros collapse to one)."""
    integer, _, decimal = value.partition(".")
    result = verbalize_cardinal(integer)
    decimal = decimal.rstrip("0") + "0" if decimal.endswith("0") else decimal
    if decimal:
        result = (result or "零") + "点" + verbalize_digit(decimal)
    return result


# ---------------------------------------------------------------------------------------------
# rules, in the order upstream applies them (TextNormalizer.normalize_sentence)

_RE_DATE: Final = re.compile(
    r"(\d{4}|\d{2})年((0?[1-9]|1[0-2])月)?(((0?[1-9])|((1|2)[0-9])|30|31)([日号]))?"
)
_RE_DATE2: Final = re.compile(r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])")
_HMS: Final = r"([0-1]?[0-9]|2[0-3]):([0-5][0-9])(:([0-5][0-9]))?"
_RE_TIME_RANGE: Final = re.compile(_HMS + r"(~|-)" + _HMS)
_RE_TIME: Final = re.compile(_HMS)


def _date(m: re.Match[str]) -> str:
    out = verbalize_digit(m.group(1)) + "年"
    if m.group(3):
        out += verbalize_cardinal(m.group(3)) + "月"
    if m.group(5):
        out += verbalize_cardinal(m.group(5)) + m.group(9)
    return out


def _date2(m: re.Match[str]) -> str:
    year, month, day = m.group(1), m.group(3), m.group(4)
    return f"{verbalize_digit(year)}年{verbalize_cardinal(month)}月{verbalize_cardinal(day)}日"


def _time_part(num: str) -> str:
    out = num2str(num.lstrip("0"))
    return DIGITS["0"] + out if num.startswith("0") else out


def _clock(hour: str, minute: str, second: str | None) -> str:
    out = num2str(hour) + "点"
    if minute.lstrip("0"):
        out += "半" if int(minute) == 30 else _time_part(minute) + "分"
    if second and second.lstrip("0"):
        out += _time_part(second) + "秒"
    return out


def _time(m: re.Match[str]) -> str:
    out = _clock(m.group(1), m.group(2), m.group(4))
    if m.re is _RE_TIME_RANGE:
        # DEVIATION: upstream tests the *first* minute for "半" in the second time of a range
        # ("10:30-11:15" → "…十一点半"); we read the second time's own minute.
        out += "至" + _clock(m.group(6), m.group(7), m.group(9))
    return out


_UNIT_ALT: Final = "%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s"
_NUM: Final = r"((-?)((\d+)(\.\d+)?)|(\.(\d+)))"
_RE_TO_RANGE: Final = re.compile(_NUM + f"({_UNIT_ALT})" + "[~]" + _NUM + f"({_UNIT_ALT})")
_RE_TEMPERATURE: Final = re.compile(r"(-?)(\d+(\.\d+)?)(°C|℃|度|摄氏度)")
_MEASURES: Final = (
    ("cm2", "平方厘米"), ("cm²", "平方厘米"), ("cm3", "立方厘米"), ("cm³", "立方厘米"),
    ("cm", "厘米"), ("db", "分贝"), ("ds", "毫秒"), ("kg", "千克"), ("km", "千米"),
    ("m2", "平方米"), ("m²", "平方米"), ("m³", "立方米"), ("m3", "立方米"), ("ml", "毫升"),
    ("m", "米"), ("mm", "毫米"), ("s", "秒"),
)  # fmt: skip


def _temperature(m: re.Match[str]) -> str:
    sign = "零下" if m.group(1) else ""
    unit = "摄氏度" if m.group(4) == "摄氏度" else "度"
    return sign + num2str(m.group(2)) + unit


def _measures(text: str) -> str:
    # Plain substring replacement in table order, as upstream (so "mm" never survives "m").
    for unit, word in _MEASURES:
        if unit in text:
            text = text.replace(unit, word)
    return text


_SUP: Final = "[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*"
_OPERAND: Final = rf"((-?)((\d+)(\.\d+)?{_SUP})|(\.\d+{_SUP})|([A-Za-z]{_SUP}))"
_RE_ASMD: Final = re.compile(_OPERAND + r"([\+\-\×÷=])" + _OPERAND)
_ASMD: Final = {"+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等于"}
_RE_POWER: Final = re.compile(r"[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]+")
_POWER: Final = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ", "0123456789xyn")
_RE_FRAC: Final = re.compile(r"(-?)(\d+)/(\d+)")
_RE_PERCENTAGE: Final = re.compile(r"(-?)(\d+(\.\d+)?)%")
_RE_MOBILE: Final = re.compile(r"(?<!\d)((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)")
_RE_TELEPHONE: Final = re.compile(r"(?<!\d)((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)")
_RE_NATIONAL_NUMBER: Final = re.compile(r"(400)(-)?\d{3}(-)?\d{4}")
_RE_RANGE: Final = re.compile(
    r"(?<![\d\+\-\×÷=])((-?)((\d+)(\.\d+)?))[-~]((-?)((\d+)(\.\d+)?))(?![\d\+\-\×÷=])"
)
_RE_NEGATIVE: Final = re.compile(r"(-)(\d+)")
_RE_VERSION: Final = re.compile(r"((\d+)(\.\d+)(\.\d+)?(\.\d+)+)")
_RE_DECIMAL: Final = re.compile(r"(-?)((\d+)(\.\d+))|(\.(\d+))")
_QUANTIFIERS: Final = (
    "(处|台|架|枚|趟|幅|平|方|堵|间|床|株|批|项|例|列|篇|栋|注|亩|封|艘|把|目|套|段|人|所|朵|匹|张|座|回|场|尾|条|"
    "个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|"
    "钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|"
    "锱|忽|(千|毫|微)克|毫|厘|(公)分|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|"
    "笼|盆|盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|小时|旬|纪|岁|世|"
    "更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块|元|(亿|千万|百万|万|千|百)|"
    "(亿|千万|百万|万|千|百|美|)元|(亿|千万|百万|万|千|百|十|)吨|(亿|千万|百万|万|千|百|)块|角|毛|分)"
)
_RE_QUANTIFIED: Final = re.compile(r"(\d+)([多余几\+])?" + _QUANTIFIERS)
_RE_DEFAULT_NUM: Final = re.compile(r"\d{3}\d*")
_RE_NUMBER: Final = re.compile(r"(-?)((\d+)(\.\d+)?)|(\.(\d+))")


def _asmd(m: re.Match[str]) -> str:
    return m.group(1) + _ASMD[m.group(8)] + m.group(9)


def _power(m: re.Match[str]) -> str:
    return "的" + m.group(0).translate(_POWER) + "次方"


def _frac(m: re.Match[str]) -> str:
    sign = "负" if m.group(1) else ""
    return f"{sign}{num2str(m.group(3))}分之{num2str(m.group(2))}"


def _percentage(m: re.Match[str]) -> str:
    sign = "负" if m.group(1) else ""
    return f"{sign}百分之{num2str(m.group(2))}"


def _phone_digits(parts: list[str]) -> str:
    return "，".join(verbalize_digit(p, alt_one=True) for p in parts)


def _mobile(m: re.Match[str]) -> str:
    return _phone_digits(m.group(0).strip("+").split())


def _telephone(m: re.Match[str]) -> str:
    return _phone_digits(m.group(0).split("-"))


def _number(m: re.Match[str]) -> str:
    if m.group(5):
        return num2str(m.group(5))
    return ("负" if m.group(1) else "") + num2str(m.group(2))


def _range(m: re.Match[str]) -> str:
    first = _RE_NUMBER.sub(_number, m.group(1))
    second = _RE_NUMBER.sub(_number, m.group(6))
    return f"{first}到{second}"


def _negative(m: re.Match[str]) -> str:
    return "负" + num2str(m.group(2))


def _version(m: re.Match[str]) -> str:
    return "".join("点" if c == "." else num2str(c) for c in m.group(1))


def _quantified(m: re.Match[str]) -> str:
    number = num2str(m.group(1))
    number = "两" if number == "二" else number
    more = "多" if m.group(2) == "+" else (m.group(2) or "")
    return f"{number}{more}{m.group(3)}"


def _default_num(m: re.Match[str]) -> str:
    return verbalize_digit(m.group(0), alt_one=True)


_GREEK: Final = (
    ("α", "阿尔法"), ("β", "贝塔"), ("γ", "伽玛"), ("Γ", "伽玛"), ("δ", "德尔塔"), ("Δ", "德尔塔"),
    ("ε", "艾普西龙"), ("ζ", "捷塔"), ("η", "依塔"), ("θ", "西塔"), ("Θ", "西塔"), ("ι", "艾欧塔"),
    ("κ", "喀帕"), ("λ", "拉姆达"), ("Λ", "拉姆达"), ("μ", "缪"), ("ν", "拗"), ("ξ", "克西"),
    ("Ξ", "克西"), ("ο", "欧米克伦"), ("π", "派"), ("Π", "派"), ("ρ", "肉"), ("ς", "西格玛"),
    ("Σ", "西格玛"), ("σ", "西格玛"), ("τ", "套"), ("υ", "宇普西龙"), ("φ", "服艾"), ("Φ", "服艾"),
    ("χ", "器"), ("ψ", "普赛"), ("Ψ", "普赛"), ("ω", "欧米伽"), ("Ω", "欧米伽"),
)  # fmt: skip
_POST: Final = (
    ("/", "每"), *zip("①②③④⑤⑥⑦⑧⑨⑩", "一二三四五六七八九十", strict=True), *_GREEK,
    ("+", "加"), ("-", "减"), ("×", "乘"), ("÷", "除"), ("=", "等"),
)  # fmt: skip
_RE_POST_DROP: Final = re.compile(r"[-——《》【】<=>{}()（）#&@“”^_|\\]")
_RE_SPLIT_DROP: Final = re.compile(r"[——《》【】<>{}()（）#&@“”^_|\\]")
_RE_CLAUSE_END: Final = re.compile(r"([：、，；。？！,;?!][”’]?)")


def _post_replace(text: str) -> str:
    for src, dst in _POST:
        text = text.replace(src, dst)
    return _RE_POST_DROP.sub("", text)


_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]
_RULES_A: Final[tuple[_Rule, ...]] = (
    (_RE_DATE, _date),
    (_RE_DATE2, _date2),
    (_RE_TIME_RANGE, _time),
    (_RE_TIME, _time),
    (_RE_TO_RANGE, lambda m: m.group(0).replace("~", "至")),
    (_RE_TEMPERATURE, _temperature),
)
_RULES_B: Final[tuple[_Rule, ...]] = (
    (_RE_FRAC, _frac),
    (_RE_PERCENTAGE, _percentage),
    (_RE_MOBILE, _mobile),
    (_RE_TELEPHONE, _telephone),
    (_RE_NATIONAL_NUMBER, _telephone),
    (_RE_RANGE, _range),
    (_RE_NEGATIVE, _negative),
    (_RE_VERSION, _version),
    (_RE_DECIMAL, _number),
    (_RE_QUANTIFIED, _quantified),
    (_RE_DEFAULT_NUM, _default_num),
    (_RE_NUMBER, _number),
)


def normalize_clause(text: str) -> str:
    """Verbalise one clause: t2s, width folding, then the ordered number/unit/symbol rules."""
    text = _ascii_digits(traditional_to_simplified(text).translate(_F2H))
    for pattern, repl in _RULES_A:
        text = pattern.sub(repl, text)
    text = _measures(text)
    # Upstream loops until no arithmetic is left ("1+2=3" needs two passes).
    for _ in range(len(text)):
        new = _RE_ASMD.sub(_asmd, text)
        if new == text:
            break
        text = new
    text = _RE_POWER.sub(_power, text)
    for pattern, repl in _RULES_B:
        text = pattern.sub(repl, text)
    return _post_replace(text)


def split_clauses(text: str) -> list[str]:
    """Cut text into clauses after sentence punctuation, dropping spaces and bracket/quote marks."""
    text = _RE_SPLIT_DROP.sub("", text.replace(" ", ""))
    text = _RE_CLAUSE_END.sub("\\1\n", text).strip()
    return [s.strip() for s in re.split(r"\n+", text)]


def normalize_zh_clauses(text: str) -> list[str]:
    """Upstream ``TextNormalizer().normalize``: the verbalised clauses of a Chinese text."""
    return [normalize_clause(s) for s in split_clauses(text)]
