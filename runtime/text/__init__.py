"""Text frontend: segmentation, language runs, normalisation and G2P to upstream phone ids.

Torch-free and offline; each language needs its extra (``gsv-rt[zh]``, ``[en]``, ``[ja]``, ``[ko]``,
``[yue]``, or ``[text]`` for all).
"""

from gsv_runtime.text.frontend import (
    Phonemized,
    Piece,
    Segment,
    clean_text,
    phonemize,
    phonemize_prompt,
    phonemize_segment,
)
from gsv_runtime.text.ja import load_user_dictionary as load_ja_user_dictionary
from gsv_runtime.text.lang import LANGUAGE_MODES
from gsv_runtime.text.segment import CUT_METHODS, split_text
from gsv_runtime.text.symbols import SYMBOLS_V1, SYMBOLS_V2, phones_to_ids, symbols_for
from gsv_runtime.text.zh_g2pw import G2PW, load_g2pw

__all__ = [
    "CUT_METHODS",
    "G2PW",
    "LANGUAGE_MODES",
    "SYMBOLS_V1",
    "SYMBOLS_V2",
    "Phonemized",
    "Piece",
    "Segment",
    "clean_text",
    "load_g2pw",
    "load_ja_user_dictionary",
    "phonemize",
    "phonemize_prompt",
    "phonemize_segment",
    "phones_to_ids",
    "split_text",
    "symbols_for",
]
