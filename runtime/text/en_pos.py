"""A tiny context tagger that stands in for NLTK's perceptron tagger when reading homographs.

Upstream (``GPT_SoVITS/text/english.py``) POS-tags every word with NLTK's averaged perceptron
tagger, a separate download, and uses the tag only for the ~370 homographs of ``g2p_en`` (read,
live, record, ...): 366 of them choose between a verb and a non-verb reading. This module has no
dependencies so that the upstream recording script can use the very same tagger.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

_RE_HAS_LETTER: Final = re.compile("[a-z]")
_VERB_CUES: Final = frozenset(
    [
        "to",
        "will",
        "would",
        "shall",
        "should",
        "can",
        "could",
        "may",
        "might",
        "must",
        "do",
        "does",
        "did",
        "don't",
        "doesn't",
        "didn't",
        "won't",
        "wouldn't",
        "can't",
        "cannot",
        "couldn't",
        "shouldn't",
        "let's",
        "please",
        "i",
        "we",
        "you",
        "they",
        "not",
        "never",
        "also",
        "often",
        "always",
        "usually",
        "just",
        "really",
    ]
)
_HAVE: Final = frozenset(["have", "has", "had", "having", "'ve"])
_BE: Final = frozenset(["is", "are", "was", "were", "be", "been", "being", "am", "'s", "'re", "'m"])
_NOUN_CUES: Final = frozenset(
    [
        "the",
        "a",
        "an",
        "this",
        "that",
        "these",
        "those",
        "my",
        "your",
        "his",
        "her",
        "its",
        "our",
        "their",
        "some",
        "any",
        "no",
        "every",
        "each",
        "of",
        "in",
        "on",
        "for",
        "with",
        "by",
        "from",
        "at",
        "about",
    ]
)


def pos_tag(words: Sequence[str]) -> list[tuple[str, str]]:
    """Penn-style tags good enough to choose a homograph reading (verb vs. noun, past participle).

    Only the tag of homograph words matters (``g2p_en``'s table: 366 of 371 entries are "V").
    A word after "have" (or an -ed word after "be") is a past participle (VBN), other words after
    "be" are adjectives (JJ), after "to"/a modal/a subject pronoun a verb (VB), after a determiner
    or preposition a noun (NN); a sentence-initial word is a verb (imperative), anything else a
    noun.
    """
    tags: list[tuple[str, str]] = []
    prev = ""
    for word in words:
        low = word.lower()
        if prev in _HAVE or (prev in _BE and low.endswith("ed")):
            tag = "VBN"
        elif prev in _BE:
            tag = "JJ"
        elif prev in _VERB_CUES:
            tag = "VB"
        elif prev in _NOUN_CUES:
            tag = "NN"
        elif prev in ("", ".", "!", "?"):
            tag = "VB"
        else:
            tag = "NN"
        tags.append((word, tag))
        if _RE_HAS_LETTER.search(low) or low in (".", "!", "?"):
            prev = low
    return tags
