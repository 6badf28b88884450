"""The autoregressive loop: prefill + steps over a T2S session, sampling on the host.

Rows decode together and each stops on its own (upstream ``infer_panel_batch_infer`` semantics):
a finished row leaves the batch (``session.keep``), so the batch shrinks as rows end. Each row
draws its sampling noise from its own generator, so a seeded request gives the same tokens
whatever it is batched with, and on any backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gsv_runtime.errors import InputError
from gsv_runtime.gpt.sampling import MAX_STEPS, MIN_STEPS_BEFORE_EOS, SamplingParams, decode_step
from gsv_runtime.gpt.t2s import T2SSession

TokenCallback = Callable[[int, np.ndarray], None]
"""Called as ``on_token(row, tokens_so_far)`` after every step of a running row."""


@dataclass(frozen=True)
class DecodeRow:
    """One sequence to decode: its phones, their BERT features and the prompt tokens."""

    phones: np.ndarray
    """[N] int phone ids (prompt text phones first, then the target text's)."""
    bert: np.ndarray
    """[N, bert_dim] float32 phone-level BERT features (zeros for non-Chinese text)."""
    prompt: np.ndarray
    """[P] int prompt semantic tokens; empty for ref-free decoding."""


def _pad(arrays: Sequence[np.ndarray], dtype: type, fill: float = 0) -> np.ndarray:
    width = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), width, *arrays[0].shape[1:]), fill, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def decode(
    session: T2SSession,
    rows: Sequence[DecodeRow],
    params: SamplingParams,
    rngs: Sequence[np.random.Generator],
    *,
    max_steps: int = MAX_STEPS,
    fixed_length: int | None = None,
    on_token: TokenCallback | None = None,
) -> list[np.ndarray]:
    """Generate semantic tokens for every row; returns each row's tokens (prompt excluded).

    Args:
        session: a fresh session of the voice's T2S decoder.
        rows: sequences to decode together.
        params: sampler settings (upstream order: penalty → top-p → temperature → top-k).
        rngs: one noise generator per row.
        max_steps: step cap (upstream 1500); a row reaching it keeps all its tokens.
        fixed_length: decode exactly this many tokens per row with EOS masked (benchmarks).
        on_token: progress/streaming hook.

    Raises:
        InputError: empty rows or mismatched ``rngs``.
    """
    params.validate()
    if not rows or len(rngs) != len(rows):
        raise InputError(f"decode needs ≥1 row and one rng per row ({len(rows)}, {len(rngs)})")
    if any(len(r.phones) == 0 for r in rows):
        raise InputError("every row needs at least one phone")
    steps = fixed_length if fixed_length is not None else max_steps
    prompts = [np.asarray(r.prompt, dtype=np.int64) for r in rows]
    logits = session.prefill(
        _pad([np.asarray(r.phones, dtype=np.int64) for r in rows], np.int64),
        np.array([len(r.phones) for r in rows], dtype=np.int64),
        _pad([np.asarray(r.bert, dtype=np.float32) for r in rows], np.float32),
        _pad(prompts, np.int64) if any(len(p) for p in prompts) else None,
        np.array([len(p) for p in prompts], dtype=np.int64),
    )
    history = [list(p.tolist()) for p in prompts]
    generated: list[list[int]] = [[] for _ in rows]
    running = np.arange(len(rows))
    out: list[np.ndarray | None] = [None] * len(rows)
    for t in range(steps):
        previous = _pad([np.array(history[r], dtype=np.int64) for r in running], np.int64, -1)
        allow_eos = fixed_length is None and t >= MIN_STEPS_BEFORE_EOS
        width = logits.shape[-1] - (0 if allow_eos else 1)
        noise = np.stack([rngs[r].standard_exponential(width, dtype=np.float32) for r in running])
        res = decode_step(
            logits, previous, t, params, noise=noise, fixed_length=fixed_length is not None
        )
        done = res.finished | (t == steps - 1)
        for i, r in enumerate(running):
            if not res.finished[i]:
                generated[r].append(int(res.tokens[i]))
                history[r].append(int(res.tokens[i]))
            if done[i]:
                out[r] = np.array(generated[r], dtype=np.int64)
            elif on_token is not None:
                on_token(int(r), np.array(generated[r], dtype=np.int64))
        if done.all():
            break
        keep = np.flatnonzero(~done)
        if len(keep) < len(running):
            session.keep(keep)
            running = running[keep]
        logits = session.step(res.tokens[keep])
    return [o if o is not None else np.zeros(0, np.int64) for o in out]
