"""Parity of the exported GPT graphs with the torch reference, through the runtime's sessions.

* fp32: the prefill graph's logits and K/V, and every design's logits over a teacher-forced
  run, within :data:`LOGITS_ATOL` of torch (relative to the logit scale), on a batch of rows
  with different phone and prompt lengths;
* fp32: greedy decoding (top_k 1, upstream's repetition penalty, EOS masked) of ``steps``
  tokens through every design gives exactly ``T2SModel.generate(fixed_length=steps)``'s tokens;
* fp16 / bf16 / int8: teacher-forced top-1 agreement with torch over ``steps`` steps, against
  the floors of :data:`AGREEMENT_FLOORS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch

from gsv_export.parity import Check, ParityReport, relative_max_diff
from gsv_models.sampling import SamplingParams
from gsv_models.t2s import T2SModel
from gsv_runtime.backends import RunnerOptions, available_backends, make_runner
from gsv_runtime.bundle import Bundle, GraphSpec, Manifest
from gsv_runtime.errors import GsvError
from gsv_runtime.gpt.t2s import (
    DECODER,
    PREFILL,
    STEP,
    STEP_GQA,
    STEP_GQA_KV16,
    T2SSession,
    kv_names,
    open_t2s,
)

LOGITS_ATOL: Final = 1e-4
GREEDY: Final = SamplingParams(top_k=1)
"""Greedy with upstream's default repetition penalty (1.35): varied tokens, no loops."""
AGREEMENT_FLOORS: Final[dict[str, float]] = {"fp16": 0.99, "bf16": 0.93, "int8": 0.94}
"""Teacher-forced top-1 agreement floors (2 rows × 300 steps, EOS column excluded), set about
two points under the lowest value measured.

Measured on random weights (logit std 2, so the top-2 gap is often a few tenths), lowest over
the designs and versions: tiny (2 × 64) fp16 0.998, bf16 0.993, int8 0.965 (ORT dynamic,
per-channel 7-bit) / 0.98 (NNCF); full size (24 × 512) fp16 0.998, bf16 0.95 (OpenVINO, bf16
KV), int8 0.97 (onnxruntime steps blockwise since 2026-12-04: canonical 0.973, GQA 0.967, vs
0.952 / 0.957 with per-channel 7-bit steps on the same checkpoint). Broken variants score
under every floor: naive 8-bit per-tensor weights 0.90, 6-bit 0.67, another checkpoint 0.0
(``test_floors_fail_broken_variants``). Real checkpoints have peakier logits; judge them with
real weights before lowering a floor. (Before 2026-12: 0.95, 0.85, 0.9, which a naive
per-tensor int8 export passed.)"""
VERIFY_STEPS: Final = 300


@dataclass(frozen=True)
class Reference:
    """Torch's answers for one verification batch."""

    inputs: dict[str, np.ndarray]
    tokens: np.ndarray
    """[B, steps] greedy tokens of ``T2SModel.generate(fixed_length=steps)``."""
    logits: np.ndarray
    """[steps, B, V] teacher-forced logits (index 0 from the prefill)."""
    kv: list[np.ndarray]
    """Prefill K/V per layer, [B, nh, S, hs] (k0, v0, k1, …)."""


def verify_batch(model: T2SModel, seed: int = 0) -> dict[str, np.ndarray]:
    """Two rows with different phone and prompt lengths (right-padded)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    sx, sy = 14, 9
    return {
        "phones": torch.randint(0, cfg.phoneme_vocab_size, (2, sx), generator=g).numpy(),
        "phone_lens": np.array([sx, sx - 5]),
        "bert": torch.randn(2, sx, cfg.bert_dim, generator=g).numpy(),
        "prompt": torch.randint(0, cfg.eos, (2, sy), generator=g).numpy(),
        "prompt_lens": np.array([sy - 3, sy]),
    }


@torch.no_grad()
def torch_reference(model: T2SModel, inputs: dict[str, np.ndarray], steps: int) -> Reference:
    """Greedy tokens from ``generate`` and teacher-forced logits along them."""
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    args = (t["phones"], t["phone_lens"], t["bert"], t["prompt"], t["prompt_lens"])
    tokens = torch.stack(model.generate(*args, params=GREEDY, fixed_length=steps))  # (B, steps)
    logits, kv = teacher_forced(model, inputs, tokens.numpy())
    return Reference(inputs, tokens.numpy(), logits, kv)


@torch.no_grad()
def teacher_forced(
    model: T2SModel, inputs: dict[str, np.ndarray], tokens: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits [steps, B, V] of ``model`` fed ``tokens`` [B, steps], and its prefill K/V."""
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    args = (t["phones"], t["phone_lens"], t["bert"], t["prompt"], t["prompt_lens"])
    steps = tokens.shape[1]
    width = t["phones"].shape[1] + t["prompt"].shape[1]
    logits, cache = model.prefill(*args, max_len=width + steps)
    kv = [
        x[:, :, :width].numpy().copy()
        for pair in zip(cache.keys, cache.values, strict=True)
        for x in pair
    ]
    lens = t["phone_lens"] + t["prompt_lens"]
    fed = torch.from_numpy(tokens)
    out = [logits]
    for i in range(steps - 1):
        pos = t["prompt_lens"] + i
        out.append(model.step(fed[:, i], pos, lens + i, cache))
    return torch.stack(out).numpy(), kv


def greedy_pick(
    logits: np.ndarray, history: list[list[int]], penalty: float, eos: int
) -> np.ndarray:
    """Top-1 of the penalized logits without the EOS column (upstream's order, top_k 1)."""
    x = logits[:, :eos].astype(np.float32, copy=True)
    for row, seen in enumerate(history):
        ids = np.unique(np.asarray([i for i in seen if 0 <= i < eos], dtype=np.int64))
        vals = x[row, ids]
        x[row, ids] = np.where(vals < 0, vals * np.float32(penalty), vals / np.float32(penalty))
    return np.argmax(x, axis=-1)


def run_teacher_forced(session: T2SSession, ref: Reference) -> np.ndarray:
    """Logits [steps, B, V] of ``session`` fed torch's greedy tokens."""
    i = ref.inputs
    out = [session.prefill(i["phones"], i["phone_lens"], i["bert"], i["prompt"], i["prompt_lens"])]
    for t in range(ref.tokens.shape[1] - 1):
        out.append(session.step(ref.tokens[:, t]))
    return np.stack(out)


def run_greedy(
    session: T2SSession, inputs: dict[str, np.ndarray], steps: int, eos: int
) -> np.ndarray:
    """[B, steps] tokens decoded greedily through ``session``."""
    i = inputs
    history = [
        [int(x) for x in i["prompt"][r, : i["prompt_lens"][r]]] for r in range(len(i["prompt"]))
    ]
    logits = session.prefill(i["phones"], i["phone_lens"], i["bert"], i["prompt"], i["prompt_lens"])
    tokens = []
    for t in range(steps):
        pick = greedy_pick(logits, history, GREEDY.repetition_penalty, eos)
        tokens.append(pick)
        for row, tok in enumerate(pick.tolist()):
            history[row].append(tok)
        if t < steps - 1:
            logits = session.step(pick)
    return np.stack(tokens, axis=1)


def _max_rel(expected: np.ndarray, actual: np.ndarray) -> float:
    return max(relative_max_diff(e, a) for e, a in zip(expected, actual, strict=True))


def _agreement(expected: np.ndarray, actual: np.ndarray, eos: int) -> float:
    return float(np.mean(expected[..., :eos].argmax(-1) == actual[..., :eos].argmax(-1)))


def _designs(specs: dict[str, GraphSpec], precision: str) -> list[tuple[str, str]]:
    """(backend, design) pairs the exported files support at ``precision``."""
    have = available_backends()

    def has(graph: str, fmt: str, p: str) -> bool:
        return graph in specs and specs[graph].variant(fmt, p) is not None  # type: ignore[arg-type]

    pairs = []
    if "onnxruntime" in have and has(PREFILL, "onnx", precision):
        if has(STEP, "onnx", precision):
            pairs.append(("onnxruntime", "canonical"))
        gqa = (STEP_GQA_KV16, "fp16") if precision == "fp16" else (STEP_GQA, precision)
        if has(gqa[0], "onnx", gqa[1]):
            pairs.append(("onnxruntime", "gqa"))
    if "openvino" in have and has(DECODER, "openvino", precision):
        pairs.append(("openvino", "stateful"))
    return pairs


def _prefill_checks(bundle: Bundle, ref: Reference, options: RunnerOptions) -> list[Check]:
    runner = make_runner(bundle.graph_path(PREFILL, "onnxruntime"), "onnxruntime", options)
    out = runner.run(ref.inputs)
    names = kv_names(len(ref.kv) // 2, "present")
    kv = max(relative_max_diff(e, out[n]) for e, n in zip(ref.kv, names, strict=True))
    return [
        Check(
            f"{PREFILL}/onnxruntime/logits",
            relative_max_diff(ref.logits[0], out["logits"]),
            LOGITS_ATOL,
        ),
        Check(f"{PREFILL}/onnxruntime/present", kv, LOGITS_ATOL),
    ]


def verify_gpt(
    work_dir: Path,
    specs: dict[str, GraphSpec],
    model: T2SModel,
    *,
    steps: int = VERIFY_STEPS,
    options: RunnerOptions | None = None,
    floors: dict[str, float] | None = None,
) -> ParityReport:
    """Check every exported GPT design and precision against torch (see the module docs).

    Args:
        work_dir: the directory :func:`export_gpt_graphs` wrote into.
        specs: its return value.
        model: the reference model the graphs came from.
        steps: greedy / teacher-forced length.
        options: device and threads of the runtime sessions.
        floors: top-1 agreement floors per precision (default :data:`AGREEMENT_FLOORS`).

    Returns:
        The report; call ``raise_if_failed()`` on it.
    """
    options = options or RunnerOptions()
    floors = {**AGREEMENT_FLOORS, **(floors or {})}
    bundle = Bundle(Path(work_dir), Manifest(kind="voice", created_by={}, graphs=specs, files={}))
    model = model.eval().float()
    eos = model.config.eos
    ref = torch_reference(model, verify_batch(model), steps)
    report = ParityReport()
    if PREFILL in specs and "onnxruntime" in available_backends():
        for check in _prefill_checks(bundle, ref, options):
            report.add(check)
    for backend, design in _designs(specs, "fp32"):
        name = f"{design}/{backend}/fp32"
        session = open_t2s(bundle, backend, options, "fp32", design=design)  # type: ignore[arg-type]
        logits = run_teacher_forced(session, ref)
        report.add(Check(f"{name}/logits", _max_rel(ref.logits, logits), LOGITS_ATOL))
        tokens = run_greedy(session, ref.inputs, steps, eos)
        report.add(Check(f"{name}/greedy_mismatches", float(np.sum(tokens != ref.tokens)), 0))
    if STEP in specs and "openvino" in available_backends():
        # the canonical ONNX step compiles and runs on OpenVINO too (explicit I/O fallback)
        session = open_t2s(bundle, "openvino", options, "fp32", design="canonical")
        short = Reference(ref.inputs, ref.tokens[:, :8], ref.logits[:8], ref.kv)
        logits = run_teacher_forced(session, short)
        report.add(
            Check("canonical/openvino/fp32/logits", _max_rel(short.logits, logits), LOGITS_ATOL)
        )
    for precision in ("fp16", "bf16", "int8"):
        for backend, design in _designs(specs, precision):
            try:
                session = open_t2s(bundle, backend, options, precision, design=design)  # type: ignore[arg-type]
            except GsvError as exc:
                report.add(Check(f"{design}/{backend}/{precision}/opens: {exc}", 1.0, 0.0))
                continue
            logits = run_teacher_forced(session, ref)
            report.add(
                Check(
                    f"{design}/{backend}/{precision}/top1_agreement",
                    _agreement(ref.logits, logits, eos),
                    floors[precision],
                    higher_is_better=True,
                )
            )
    return report
