"""Mandarin tone sandhi (不, 一, neutral tone, third tone) over jieba words, as upstream applies it.

Mirrors upstream ``GPT_SoVITS/text/tone_sandhi.py`` (from PaddleSpeech): ``pre_merge`` regroups the
jieba (word, pos) list, ``modify_tones`` rewrites the tone digit of each syllable's final. Finals
are pypinyin TONE3 finals with the neutral tone written as 5 ("i1", "ao3", "e5").
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Final

_PUNC: Final = "：，；。？！“”‘’':,;.?!"

Word = list[str]  # [word, pos]


@functools.lru_cache(maxsize=1)
def _word_lists() -> tuple[frozenset[str], frozenset[str]]:
    text = (
        resources.files("gsv_runtime.text").joinpath("data/zh_neutral_tone.txt").read_text("utf-8")
    )
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        sections.setdefault(current, []).extend(line.split())
    return frozenset(sections["must_neutral"]), frozenset(sections["must_not_neutral"])


def _set_tone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_tone_three(finals: Sequence[str]) -> bool:
    return all(f[-1] == "3" for f in finals)


class ToneSandhi:
    """Tone sandhi rules; needs a ``cut_for_search`` and a pypinyin ``finals`` function.

    Args:
        cut_for_search: jieba's search-mode cut of one word.
        finals: TONE3 finals (neutral tone as 5) of a word, one per character.
    """

    def __init__(
        self,
        cut_for_search: Callable[[str], Sequence[str]],
        finals: Callable[[str], list[str]],
    ) -> None:
        self._cut_for_search = cut_for_search
        self._finals = finals
        self._must_neutral, self._must_not_neutral = _word_lists()

    # --- tone rewriting -----------------------------------------------------------------------

    def modify_tones(self, word: str, pos: str, finals: list[str]) -> list[str]:
        """Apply 不, 一, neutral-tone and third-tone sandhi to one word's finals."""
        finals = self._bu(word, finals)
        finals = self._yi(word, finals)
        finals = self._neutral(word, pos, finals)
        return self._three(word, finals)

    def _neutral(self, word: str, pos: str, finals: list[str]) -> list[str]:
        # reduplicated nouns/verbs/adjectives: 奶奶, 试试
        for j in range(1, len(word)):
            if word[j] == word[j - 1] and pos[0] in "nva" and word not in self._must_not_neutral:
                finals[j] = _set_tone(finals[j], "5")
        ge_idx = word.find("个")
        last = word[-1] if word else ""
        if (
            (last and last in "吧呢哈啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶")
            or (last and last in "的地得")
            or (len(word) == 1 and word in "了着过" and pos in {"ul", "uz", "ug"})
            or (
                len(word) > 1
                and last in "们子"
                and pos in {"r", "n"}
                and word not in self._must_not_neutral
            )
            or (len(word) > 1 and last in "上下里" and pos in {"s", "l", "f"})
            or (len(word) > 1 and last in "来去" and word[-2] in "上下进出回过起开")
        ):
            finals[-1] = _set_tone(finals[-1], "5")
        elif (
            ge_idx >= 1
            and (word[ge_idx - 1].isnumeric() or word[ge_idx - 1] in "几有两半多各整每做是")
        ) or word == "个":
            finals[ge_idx] = _set_tone(finals[ge_idx], "5")
        elif word in self._must_neutral or word[-2:] in self._must_neutral:
            finals[-1] = _set_tone(finals[-1], "5")

        parts = self._split_word(word)
        head = len(parts[0])
        groups = [finals[:head], finals[head:]]
        for i, part in enumerate(parts):
            if part in self._must_neutral or part[-2:] in self._must_neutral:
                groups[i][-1] = _set_tone(groups[i][-1], "5")
        return groups[0] + groups[1]

    @staticmethod
    def _bu(word: str, finals: list[str]) -> list[str]:
        if len(word) == 3 and word[1] == "不":  # 看不懂
            finals[1] = _set_tone(finals[1], "5")
        else:
            for i, char in enumerate(word):
                if char == "不" and i + 1 < len(word) and finals[i + 1][-1] == "4":  # 不怕
                    finals[i] = _set_tone(finals[i], "2")
        return finals

    @staticmethod
    def _yi(word: str, finals: list[str]) -> list[str]:
        if "一" in word and all(c.isnumeric() for c in word if c != "一"):  # 一零零
            return finals
        if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:  # 看一看
            finals[1] = _set_tone(finals[1], "5")
        elif word.startswith("第一"):
            finals[1] = _set_tone(finals[1], "1")
        else:
            for i, char in enumerate(word):
                if char == "一" and i + 1 < len(word):
                    if finals[i + 1][-1] == "4":  # 一段
                        finals[i] = _set_tone(finals[i], "2")
                    elif word[i + 1] not in _PUNC:  # 一天; before punctuation it stays yi1
                        finals[i] = _set_tone(finals[i], "4")
        return finals

    def _split_word(self, word: str) -> list[str]:
        """Split a word in two around its shortest search-mode sub-word (upstream's quirks kept)."""
        subwords = sorted(self._cut_for_search(word), key=len)
        first = subwords[0]
        if word.find(first) == 0:
            return [first, word[len(first) :]]
        return [word[: -len(first)], first]

    def _three(self, word: str, finals: list[str]) -> list[str]:
        if len(word) == 2 and _all_tone_three(finals):
            finals[0] = _set_tone(finals[0], "2")
        elif len(word) == 3:
            parts = self._split_word(word)
            if _all_tone_three(finals):
                if len(parts[0]) == 2:  # 蒙古/包
                    finals[0] = _set_tone(finals[0], "2")
                    finals[1] = _set_tone(finals[1], "2")
                elif len(parts[0]) == 1:  # 纸/老虎
                    finals[1] = _set_tone(finals[1], "2")
            else:
                head = len(parts[0])
                groups = [finals[:head], finals[head:]]
                for i, sub in enumerate(groups):
                    if _all_tone_three(sub) and len(sub) == 2:  # 所有/人
                        sub[0] = _set_tone(sub[0], "2")
                    elif (
                        i == 1
                        and not _all_tone_three(sub)
                        and sub[0][-1] == "3"
                        and groups[0][-1][-1] == "3"
                    ):  # 好/喜欢
                        groups[0][-1] = _set_tone(groups[0][-1], "2")
                finals = groups[0] + groups[1]
        elif len(word) == 4:  # idioms: two two-character halves
            halves = [finals[:2], finals[2:]]
            for half in halves:
                if _all_tone_three(half):
                    half[0] = _set_tone(half[0], "2")
            finals = halves[0] + halves[1]
        return finals

    # --- word regrouping before tone rewriting ------------------------------------------------

    def pre_merge(self, seg: Sequence[tuple[str, str]]) -> list[Word]:
        """Regroup jieba's (word, pos) list so that sandhi sees whole units (不X, X一X, XX, ...)."""
        words = self._merge_bu(seg)
        words = self._merge_yi(words)
        words = self._merge_reduplication(words)
        # Upstream wraps each three-tone merge in try/except: a syllable without a final (e.g. a
        # syllabic nasal) makes it skip that whole step, which we reproduce.
        for step in (self._merge_three_tones, self._merge_three_tones_2):
            with contextlib.suppress(IndexError):
                words = step(words)
        return self._merge_er(words)

    @staticmethod
    def _merge_bu(seg: Sequence[tuple[str, str]]) -> list[Word]:
        out: list[Word] = []
        last = ""
        for word, pos in seg:
            if last == "不":
                word = last + word
            if word != "不":
                out.append([word, pos])
            last = word
        if last == "不":
            out.append([last, "d"])
        return out

    @staticmethod
    def _merge_yi(seg: list[Word]) -> list[Word]:
        merged: list[Word] = []
        i = 0
        while i < len(seg):
            word, pos = seg[i]
            if i >= 1 and word == "一" and i + 1 < len(seg):
                prev = merged[-1]
                nxt = seg[i + 1]
                if prev[0] == nxt[0] and prev[1] == "v" and nxt[1] == "v":  # 听一听
                    merged[-1] = [prev[0] + "一" + nxt[0], prev[1]]
                    i += 2
                    continue
            merged.append([word, pos])
            i += 1
        out: list[Word] = []
        for word, pos in merged:
            if out and out[-1][0] == "一":
                out[-1][0] += word
            else:
                out.append([word, pos])
        return out

    @staticmethod
    def _merge_reduplication(seg: list[Word]) -> list[Word]:
        out: list[Word] = []
        for word, pos in seg:
            if out and word == out[-1][0]:
                out[-1][0] += word
            else:
                out.append([word, pos])
        return out

    def _merge_three_tones(self, seg: list[Word]) -> list[Word]:
        finals = [self._finals(word) for word, _ in seg]
        out: list[Word] = []
        merged_last = [False] * len(seg)
        for i, (word, pos) in enumerate(seg):
            if (
                i >= 1
                and _all_tone_three(finals[i - 1])
                and _all_tone_three(finals[i])
                and not merged_last[i - 1]
            ):
                prev = seg[i - 1][0]
                if not _is_reduplication(prev) and len(prev) + len(word) <= 3:
                    out[-1][0] += word
                    merged_last[i] = True
                    continue
            out.append([word, pos])
        return out

    def _merge_three_tones_2(self, seg: list[Word]) -> list[Word]:
        finals = [self._finals(word) for word, _ in seg]
        out: list[Word] = []
        merged_last = [False] * len(seg)
        for i, (word, pos) in enumerate(seg):
            if (
                i >= 1
                and finals[i - 1][-1][-1] == "3"
                and finals[i][0][-1] == "3"
                and not merged_last[i - 1]
            ):
                prev = seg[i - 1][0]
                if not _is_reduplication(prev) and len(prev) + len(word) <= 3:
                    out[-1][0] += word
                    merged_last[i] = True
                    continue
            out.append([word, pos])
        return out

    @staticmethod
    def _merge_er(seg: list[Word]) -> list[Word]:
        out: list[Word] = []
        for i, (word, pos) in enumerate(seg):
            if i >= 1 and word == "儿" and seg[i - 1][0] != "#":
                out[-1][0] += word
            else:
                out.append([word, pos])
        return out


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]
