"""Text frontend: segmentation, language runs, normalisation and G2P to upstream phone ids.

Torch-free and offline; each language needs its extra (``gsv-rt[zh]``, ``[en]``, ``[ja]``, ``[ko]``,
``[yue]``, or ``[text]`` for all).
"""

from typing import Any

from gsv_runtime.text.frontend import (
    Phonemized,
    Piece,
    Segment,
    clean_text,
    phonemize,
    phonemize_prompt,
    phonemize_segment,
)
from gsv_runtime.text.lang import LANGUAGE_MODES
from gsv_runtime.text.segment import CUT_METHODS, split_text
from gsv_runtime.text.symbols import SYMBOLS_V1, SYMBOLS_V2, phones_to_ids, symbols_for


def load_ja_user_dictionary(csv_path: Any) -> None:
    """Use a MeCab user dictionary for Japanese, process-wide (see ``ja.load_user_dictionary``)."""
    from gsv_runtime.text.ja import load_user_dictionary

    load_user_dictionary(csv_path)


def load_g2pw(model_dir: Any, tokenizer: Any = None) -> Any:
    """A g2pW polyphone predictor for a local G2PWModel folder (see ``zh_g2pw.G2PW``)."""
    from gsv_runtime.text.zh_g2pw import load_g2pw as _load

    return _load(model_dir, tokenizer)


__all__ = [
    "CUT_METHODS",
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
