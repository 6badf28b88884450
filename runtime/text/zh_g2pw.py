"""g2pW polyphone prediction from a user's local G2PWModel folder, torch-free (onnxruntime).

Reproduces upstream's ``text/g2pw`` as ``chinese2.py`` uses it: each sentence is converted to
Traditional script (OpenCC s2tw, as the model was trained), cropped to 16 characters either side
of its polyphonic characters, tokenised per character with the BERT tokenizer, and each
polyphone's reading is the argmax over the model's masked label probabilities; monophonic
characters read from the folder's table, all others from pypinyin. Identical sentences share one
tokenised row, and the batch is laid out as upstream lays it, so the numbers are the same too.
Predicted readings are then overridden word by word from upstream's polyphonic dictionaries
(``correct_pronunciation``), which ship with gsv-rt (``data/zh_polyphonic.txt.xz``).

The folder's ``config.py`` is read as literal assignments only; nothing in it is executed.
"""

from __future__ import annotations

import ast
import functools
import json
import lzma
import re
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np

from gsv_runtime.errors import InputError
from gsv_runtime.text.normalize import traditional_to_simplified

MODEL_FILES: Final = ("g2pW.onnx", "g2pw.onnx")
TABLE_FILES: Final = (
    "config.py",
    "POLYPHONIC_CHARS.txt",
    "MONOPHONIC_CHARS.txt",
    "bopomofo_to_pinyin_wo_tune_dict.json",
)
CONTEXT_CHARS: Final = 16
"""Characters kept either side of the first/last polyphone (upstream's default)."""
MAX_TOKENS: Final = 512
_NON_POLYPHONIC: Final = frozenset("一不和咋嗲剖差攢倒難奔勁拗肖瘙誒泊听噢")
_NON_MONOPHONIC: Final = frozenset("似攢")
_RE_WORD: Final = re.compile(r" +|[a-zA-Z0-9]+|.", re.DOTALL)
_RE_HAN: Final = re.compile("[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class _Query:
    sentence: int
    char: int
    text: str
    """The (cropped, lower-cased) sentence the model reads."""
    offset: int
    """Index of the queried character in ``text``."""


MAX_TABLE_BYTES: Final = 64 << 20
"""g2pW's config.py and tables larger than this are refused unread."""


def read_config(path: Path) -> dict[str, Any]:
    """The literal top-level assignments of a g2pW ``config.py`` (never executed)."""
    try:
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise InputError(f"{path}: larger than {MAX_TABLE_BYTES >> 20} MiB")
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise InputError(f"{path}: not a readable g2pW config ({exc})") from exc
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, RecursionError):
                    continue  # not a literal (code is never run)
    return values


def _char_table(path: Path) -> list[tuple[str, str]]:
    rows = []
    try:
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise InputError(f"{path}: larger than {MAX_TABLE_BYTES >> 20} MiB")
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable UTF-8 table ({exc})") from None
    for n, line in enumerate(text.strip().split("\n"), start=1):
        parts = line.split("\t")
        if len(parts) != 2 or len(parts[0]) != 1:
            raise InputError(f"{path}:{n}: expected 'character<TAB>bopomofo', got {line!r}")
        rows.append((parts[0], parts[1]))
    return rows


@functools.lru_cache(maxsize=1)
def polyphonic_dictionary() -> dict[str, list[str]]:
    """Upstream's word → readings overrides (polyphonic.rep, then polyphonic-fix.rep)."""
    raw = resources.files("gsv_runtime.text").joinpath("data/zh_polyphonic.txt.xz").read_bytes()
    table: dict[str, list[str]] = {}
    for line in lzma.decompress(raw).decode("utf-8").splitlines():
        word, readings = line.split("\t")
        table[word] = readings.split(" ")
    return table


def correct_pronunciation(word: str, readings: list[str]) -> list[str]:
    """Word-level override if the word is listed, else per-character overrides (first reading)."""
    table = polyphonic_dictionary()
    if word in table:
        return list(table[word])
    out = list(readings)
    for i, char in enumerate(word):
        if char in table and i < len(out):
            out[i] = table[char][0]
    return out


class G2PW:
    """A loaded G2PWModel folder (the ``PolyphonePredictor`` of :mod:`gsv_runtime.text.zh`).

    Args:
        model_dir: the G2PWModel folder (``g2pW.onnx``, ``config.py``, ``POLYPHONIC_CHARS.txt``,
            ``MONOPHONIC_CHARS.txt``, ``bopomofo_to_pinyin_wo_tune_dict.json``).
        tokenizer: the chinese-roberta-wwm-ext-large ``tokenizer.json`` upstream tokenises with
            (its ``bert_path``); default: ``tokenizer.json`` inside ``model_dir``.
        threads: onnxruntime intra-op threads (upstream uses 2).

    Raises:
        InputError: a missing or malformed file, or a missing package (``gsv-rt[zh]``).
    """

    def __init__(self, model_dir: str | Path, tokenizer: str | Path | None = None,
                 threads: int = 2) -> None:  # fmt: skip
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise InputError(f"{self.model_dir}: no such G2PWModel folder")
        missing = [f for f in TABLE_FILES if not (self.model_dir / f).is_file()]
        model = next((self.model_dir / f for f in MODEL_FILES if (self.model_dir / f).is_file()),
                     None)  # fmt: skip
        if model is None:
            missing.append(MODEL_FILES[0])
        if missing:
            raise InputError(
                f"{self.model_dir}: not a G2PWModel folder (missing {', '.join(missing)})"
            )
        self.tokenizer_path = (
            Path(tokenizer) if tokenizer is not None else self.model_dir / "tokenizer.json"
        )
        if self.tokenizer_path.is_dir():
            self.tokenizer_path = self.tokenizer_path / "tokenizer.json"
        if not self.tokenizer_path.is_file():
            raise InputError(
                "g2pW needs the chinese-roberta-wwm-ext-large tokenizer.json; "
                f"{self.tokenizer_path} does not exist (give it with --g2pw-tokenizer or "
                "tokenizer=, or put it in the G2PWModel folder)"
            )
        config = read_config(self.model_dir / "config.py")
        self._use_mask = bool(config.get("use_mask", True))
        self._char_labels = bool(config.get("use_char_phoneme", False))
        self._load_tables()
        self._load_packages(model, threads)

    @property
    def key(self) -> str:
        """Identity of this predictor (folder and tokenizer), for caches."""
        return f"{self.model_dir.resolve()}|{self.tokenizer_path.resolve()}"

    def _load_tables(self) -> None:
        poly = _char_table(self.model_dir / "POLYPHONIC_CHARS.txt")
        mono = _char_table(self.model_dir / "MONOPHONIC_CHARS.txt")
        names = sorted({f"{c} {p}" if self._char_labels else p for c, p in poly})
        index = {name: i for i, name in enumerate(names)}
        char_labels: dict[str, list[int]] = {}
        for c, p in poly:
            char_labels.setdefault(c, []).append(index[f"{c} {p}" if self._char_labels else p])
        self._labels = names
        self._char_ids = {c: i for i, c in enumerate(sorted(char_labels))}
        self._masks = {}
        for c, ids in char_labels.items():
            mask = np.zeros(len(names), np.float32)
            mask[ids] = 1.0
            self._masks[c] = mask if self._use_mask else np.ones(len(names), np.float32)
        self._polyphonic = frozenset(char_labels) - _NON_POLYPHONIC
        self._monophonic = {c: p for c, p in mono if c not in _NON_MONOPHONIC}
        path = self.model_dir / "bopomofo_to_pinyin_wo_tune_dict.json"
        try:
            self._bopomofo = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable JSON table ({exc})") from exc

    def _load_packages(self, model: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
            from opencc import OpenCC
            from pypinyin import Style, pinyin
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise InputError(
                f"g2pW needs the [zh] extra: pip install 'gsv-rt[zh]' ({exc})"
            ) from exc
        self._to_traditional = OpenCC("s2tw").convert
        self._pinyin = functools.partial(pinyin, style=Style.TONE3, neutral_tone_with_five=True)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as exc:  # the tokenizers package raises its own Exception types
            raise InputError(f"{self.tokenizer_path}: not a tokenizer.json ({exc})") from exc
        self._unk = self._tokenizer.token_to_id("[UNK]")
        self._cls = self._tokenizer.token_to_id("[CLS]")
        self._sep = self._tokenizer.token_to_id("[SEP]")
        if None in (self._unk, self._cls, self._sep):
            raise InputError(f"{self.tokenizer_path}: not a BERT tokenizer ([UNK]/[CLS]/[SEP])")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                str(model), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Exception types
            raise InputError(f"{model}: cannot load the g2pW graph ({exc})") from exc

    # ------------------------------------------------------------------ PolyphonePredictor

    def predict(self, sentences: list[str]) -> list[list[str]]:
        """TONE3 readings (neutral tone 5) per character of each sentence; punctuation as is."""
        readings: list[list[str]] = []
        queries: list[_Query] = []
        for n, simplified in enumerate(sentences):
            sent = self._traditional(simplified)
            fallback = self._pypinyin_per_char(traditional_to_simplified(sent))
            row: list[str] = []
            poly = []
            for i, char in enumerate(sent):
                reading = None
                if char in self._polyphonic:
                    poly.append(i)
                elif char in self._monophonic:
                    reading = self._to_pinyin(self._monophonic[char])
                row.append(reading or fallback[i])
            if poly:
                left = max(0, poly[0] - CONTEXT_CHARS)
                right = min(len(sent), poly[-1] + CONTEXT_CHARS + 1)
                text = sent[left:right].lower()
                queries += [_Query(n, i, text, i - left) for i in poly]
            readings.append(row)
        if queries:
            for q, label in zip(queries, self._run(queries), strict=True):
                pinyin = self._to_pinyin(label.split(" ")[1] if self._char_labels else label)
                if pinyin is not None:  # upstream crashes on a label it cannot convert
                    readings[q.sentence][q.char] = pinyin
        return readings

    def initials_finals(self, word: str, readings: list[str]) -> tuple[list[str], list[str]]:
        """pypinyin initials and TONE3 finals of a word after upstream's dictionary overrides."""
        from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

        initials, finals = [], []
        for reading in correct_pronunciation(word, readings):
            if reading[:1].isalpha():
                initials.append(to_initials(reading))
                finals.append(to_finals_tone3(reading, neutral_tone_with_five=True))
            else:
                initials.append(reading)
                finals.append(reading)
        return initials, finals

    # ------------------------------------------------------------------ internals

    def _traditional(self, sentence: str) -> str:
        converted = self._to_traditional(sentence)
        if len(converted) == len(sentence):
            return converted
        # Upstream asserts here; character by character keeps the alignment.
        chars = [self._to_traditional(c) for c in sentence]
        return "".join(t if len(t) == 1 else c for c, t in zip(sentence, chars, strict=True))

    def _pypinyin_per_char(self, sentence: str) -> list[str]:
        """pypinyin's sentence reading, one entry per character (a non-Han run gives its chars)."""
        out: list[str] = []
        for item in self._pinyin(sentence):
            reading = item[0]
            start = len(out)
            if start < len(sentence) and _RE_HAN.match(sentence[start]):
                out.append(reading)
            else:
                out += list(reading) if sentence.startswith(reading, start) else [reading]
        out += list(sentence[len(out) :])
        return out[: len(sentence)]

    def _to_pinyin(self, bopomofo: str) -> str | None:
        """Bopomofo with tone digit → TONE3 pinyin (None if the syllable is not in the table)."""
        tone = bopomofo[-1:]
        syllable = self._bopomofo.get(bopomofo[:-1])
        if not tone or tone not in "12345" or not syllable:
            return None
        return syllable + tone

    def _tokens(self, text: str) -> tuple[list[int], list[int | None]]:
        """Token ids and, per character, its token index (upstream ``tokenize_and_map``)."""
        ids: list[int] = []
        char_token: list[int | None] = [None] * len(text)
        for m in _RE_WORD.finditer(text):
            word = m.group()
            if word.startswith(" "):
                continue
            enc = self._tokenizer.encode(word, add_special_tokens=False)
            if not enc.tokens or enc.tokens == ["[UNK]"]:
                spans = [(m.start(), m.end())]
                ids.append(self._unk)
            else:
                spans, start = [], m.start()
                for token, token_id in zip(enc.tokens, enc.ids, strict=True):
                    length = len(token[2:] if token.startswith("##") else token)
                    spans.append((start, start + length))
                    start += length
                    ids.append(token_id)
            for k, (a, b) in enumerate(spans, start=len(ids) - len(spans)):
                for pos in range(a, min(b, len(text))):
                    char_token[pos] = k
        return ids, char_token

    def _row(self, q: _Query, cache: dict[str, Any]) -> tuple[list[int], int]:
        """Model input ids ([CLS] … [SEP]) and the query's token position (upstream's layout)."""
        if q.text not in cache:
            cache[q.text] = self._tokens(q.text)
        ids, char_token = cache[q.text]
        position = char_token[q.offset]
        if position is None:
            raise InputError(f"g2pW: character {q.text[q.offset]!r} has no token")
        limit = MAX_TOKENS - 2
        if len(ids) > limit:  # a window of the tokens around the query (upstream ``_truncate``)
            start = min(max(0, position - limit // 2), len(ids) - limit)
            ids, position = ids[start : start + limit], position - start
        return [self._cls, *ids, self._sep], position + 1

    def _run(self, queries: list[_Query]) -> list[str]:
        cache: dict[str, Any] = {}
        rows, positions = zip(*(self._row(q, cache) for q in queries), strict=True)
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        feeds = {
            "input_ids": ids,
            "token_type_ids": np.zeros_like(ids),
            "attention_mask": mask,
            "phoneme_mask": np.stack([self._masks[q.text[q.offset]] for q in queries]),
            "char_ids": np.array([self._char_ids[q.text[q.offset]] for q in queries], np.int64),
            "position_ids": np.array(positions, np.int64),
        }
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q.text, []).append(i)
        best = np.zeros(len(queries), np.int64)
        if len(queries) == 1 or all(len(g) == 1 for g in groups.values()):
            best[:] = self._argmax(feeds)
        else:  # one tokenised row per distinct sentence serves all its queries
            for members in groups.values():
                sub = {k: v[members] for k, v in feeds.items()}
                if len(members) > 1:
                    for k in ("input_ids", "token_type_ids", "attention_mask"):
                        sub[k] = sub[k][:1]
                best[members] = self._argmax(sub)
        return [self._labels[i] for i in best]

    def _argmax(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        probs = self._session.run(None, feeds)[0]
        return np.argmax(probs, axis=1)


_CACHE_LOCK: Final = threading.Lock()
_CACHE: dict[tuple[str, str], G2PW] = {}


def load_g2pw(model_dir: str | Path, tokenizer: str | Path | None = None) -> G2PW:
    """A G2PW for the folder and tokenizer, loaded once per process."""
    key = (str(Path(model_dir).resolve()), str(Path(tokenizer).resolve()) if tokenizer else "")
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = G2PW(model_dir, tokenizer)
        return _CACHE[key]
