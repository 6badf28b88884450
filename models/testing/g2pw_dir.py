"""A random-weight stand-in of upstream's ``G2PWModel`` folder (g2pW polyphone model), for tests.

The real folder (``G2PWModel_1.1``: ``g2pW.onnx``, ``config.py``, ``POLYPHONIC_CHARS.txt``,
``MONOPHONIC_CHARS.txt``, ``bopomofo_to_pinyin_wo_tune_dict.json``, ``char_bopomofo_dict.json``)
cannot be downloaded here. This writer reproduces its layout and formats:

* character lists in Traditional script, one ``char<TAB>bopomofo+tone digit`` per line (the
  readings come from pypinyin, so they are plausible; the monophonic readings get their tone
  shifted on purpose, so a test can see that the table, not pypinyin, was used),
* ``config.py`` with the real file's literal assignments,
* ``g2pW.onnx`` with the real graph's six inputs and its ``probs`` output [queries, labels], a
  small context-dependent net: token embeddings, a masked mean over the sentence, the token at
  ``position_ids``, a per-character embedding, softmax, times ``phoneme_mask``. Like the real
  graph it accepts one tokenised sentence (batch 1) for many queries, which upstream relies on.

Needs onnx, pypinyin and opencc (test extras), no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import numpy as np

POLYPHONIC: Final = (
    "一不和行长重还为了得地的着乐好传觉少数处种调朝"
    "都便参差分发干更几间将角看空累量难强相应只中转大会教正没要"
)
"""Simplified characters given several readings (一/不/和 are skipped by upstream's converter)."""
MONOPHONIC: Final = "天气今明我你他们是在有人这个上来到时说去过家国学生工作"
VOCAB_SIZE: Final = 21128
"""chinese-roberta-wwm-ext-large's vocabulary (the real tokenizer fits)."""
_TONE_MARKS: Final = {"ˊ": "2", "ˇ": "3", "ˋ": "4", "˙": "5"}
_CONFIG: Final = """manual_seed = 1313
model_source = 'bert-base-chinese'
window_size = 32
num_workers = 2
use_mask = True
use_conditional = True
param_conditional = {
    'bias': True,
    'char-linear': True,
    'pos-linear': False,
    'char+pos-second': True,
}

batch_size = 256
use_pos = True
param_pos = {
    'weight': 0.1,
    'pos_joint_training': True,
}
"""


def _bopomofo(syllable: str) -> tuple[str, str]:
    """pypinyin's tone-marked bopomofo → (toneless bopomofo, tone digit)."""
    for mark, digit in _TONE_MARKS.items():
        if mark in syllable:
            return syllable.replace(mark, ""), digit
    return syllable, "1"


def _readings(char: str) -> list[tuple[str, str]]:
    """(toneless pinyin, toneless bopomofo, tone) of every pypinyin reading of ``char``."""
    from pypinyin import Style, pinyin

    tone3 = pinyin(char, style=Style.TONE3, heteronym=True, neutral_tone_with_five=True)[0]
    zhuyin = pinyin(char, style=Style.BOPOMOFO, heteronym=True)[0]
    out = []
    for py, bo in zip(tone3, zhuyin, strict=True):
        bopo, tone = _bopomofo(bo)
        out.append((py.rstrip("12345"), bopo + tone))
    return out


def _graph(n_chars: int, n_labels: int, seed: int, hidden: int = 32) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    inits = [
        weight("tok_emb", (VOCAB_SIZE, hidden), 1.0),
        weight("type_emb", (2, hidden), 0.1),
        weight("w_in", (2 * hidden, hidden), 1.5 / np.sqrt(hidden)),
        weight("char_emb", (n_chars, hidden), 0.5),
        weight("w_out", (hidden, n_labels), 3.0 / np.sqrt(hidden)),
        numpy_helper.from_array(np.array(0, np.int64), "zero_s"),
        numpy_helper.from_array(np.array(1, np.int64), "one_s"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["tok_emb", "input_ids"], ["e_tok"]),
        n("Gather", ["type_emb", "token_type_ids"], ["e_type"]),
        n("Add", ["e_tok", "e_type"], ["emb"]),  # [B, L, H]
        n("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),
        n("Mul", ["emb", "mask3"], ["emb_masked"]),
        n("ReduceSum", ["emb_masked", "axis1"], ["ctx_sum"], keepdims=0),
        n("ReduceSum", ["mask3", "axis1"], ["mask_sum"], keepdims=0),
        n("Div", ["ctx_sum", "mask_sum"], ["ctx"]),  # [B, H]
        # batch row of each query: its own row, or row 0 when one sentence serves all queries
        n("Shape", ["input_ids"], ["ids_shape"]),
        n("Gather", ["ids_shape", "zero_s"], ["batch"]),
        n("Sub", ["batch", "one_s"], ["last_row"]),
        n("Shape", ["char_ids"], ["q_shape"]),
        n("Gather", ["q_shape", "zero_s"], ["queries"]),
        n("Range", ["zero_s", "queries", "one_s"], ["q_range"]),
        n("Min", ["q_range", "last_row"], ["rows"]),
        n("Unsqueeze", ["rows", "axis1"], ["rows2"]),
        n("Unsqueeze", ["position_ids", "axis1"], ["pos2"]),
        n("Concat", ["rows2", "pos2"], ["row_pos"], axis=1),
        n("GatherND", ["emb", "row_pos"], ["tok"]),  # [N, H]
        n("Gather", ["ctx", "rows"], ["ctx_q"]),  # [N, H]
        n("Concat", ["tok", "ctx_q"], ["feat"], axis=1),
        n("MatMul", ["feat", "w_in"], ["h_lin"]),
        n("Gather", ["char_emb", "char_ids"], ["h_char"]),
        n("Add", ["h_lin", "h_char"], ["h_pre"]),
        n("Tanh", ["h_pre"], ["h"]),
        n("MatMul", ["h", "w_out"], ["logits"]),
        n("Softmax", ["logits"], ["p"], axis=-1),
        n("Mul", ["p", "phoneme_mask"], ["probs"]),
    ]
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "tokens"]),
        helper.make_tensor_value_info("token_type_ids", i64, ["batch", "tokens"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch", "tokens"]),
        helper.make_tensor_value_info("phoneme_mask", f32, ["queries", n_labels]),
        helper.make_tensor_value_info("char_ids", i64, ["queries"]),
        helper.make_tensor_value_info("position_ids", i64, ["queries"]),
    ]
    outputs = [helper.make_tensor_value_info("probs", f32, ["queries", n_labels])]
    graph = helper.make_graph(nodes, "g2pw_standin", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_g2pw_tables(out: str | Path) -> Path:
    """Write the stand-in's character tables and config (readings from pypinyin, OpenCC s2tw)."""
    from opencc import OpenCC

    to_trad = OpenCC("s2tw").convert
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    syllables: dict[str, str] = {}
    poly: list[str] = []
    for char in POLYPHONIC:
        trad = to_trad(char)
        for py, bopo in _readings(char):
            syllables[bopo[:-1]] = py
            poly.append(f"{trad}\t{bopo}")
    mono: list[str] = []
    for i, char in enumerate(MONOPHONIC):
        py, bopo = _readings(char)[0]
        syllables[bopo[:-1]] = py
        shifted = str((int(bopo[-1]) + i) % 4 + 1)
        mono.append(f"{to_trad(char)}\t{bopo[:-1]}{shifted}")
    (out / "POLYPHONIC_CHARS.txt").write_text("\n".join(poly) + "\n", encoding="utf-8")
    (out / "MONOPHONIC_CHARS.txt").write_text("\n".join(mono) + "\n", encoding="utf-8")
    (out / "config.py").write_text(_CONFIG, encoding="utf-8")
    with open(out / "bopomofo_to_pinyin_wo_tune_dict.json", "w", encoding="utf-8") as f:
        json.dump(syllables, f, ensure_ascii=False, indent=1)
    char_bopomofo = {line.split("\t")[0]: [line.split("\t")[1]] for line in poly + mono}
    with open(out / "char_bopomofo_dict.json", "w", encoding="utf-8") as f:
        json.dump(char_bopomofo, f, ensure_ascii=False, indent=1)
    return out


def write_g2pw_graph(folder: str | Path, seed: int = 0) -> Path:
    """Write a random ``g2pW.onnx`` sized to the folder's POLYPHONIC_CHARS.txt; returns its path."""
    folder = Path(folder)
    rows = [line.split("\t") for line in
            (folder / "POLYPHONIC_CHARS.txt").read_text("utf-8").strip().split("\n")]  # fmt: skip
    n_chars = len({c for c, _ in rows})
    n_labels = len({p for _, p in rows})
    path = folder / "g2pW.onnx"
    path.write_bytes(_graph(n_chars, n_labels, seed))
    return path


def make_g2pw_dir(out: str | Path, seed: int = 0) -> Path:
    """Write a complete stand-in G2PWModel folder to ``out`` and return its path."""
    write_g2pw_graph(write_g2pw_tables(out), seed)
    return Path(out)
