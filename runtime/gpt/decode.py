"""The autoregressive loop: rows join a T2S session, sample on the host, and leave when done.

:class:`DecodeBatch` is the one decode mechanism: the serving engine's GPT thread keeps one per
model and adds rows at any step (continuous batching); :func:`decode` runs a fixed set of rows
to completion with it. Rows stop on their own (upstream ``infer_panel_batch_infer`` semantics)
and each draws its sampling noise from its own generator with its own step counter, sampling
options and length limits, so a seeded row gives the same tokens whatever it is batched with,
whenever it joined, and on any backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gsv_runtime.errors import InputError
from gsv_runtime.gpt.sampling import (
    MAX_STEPS,
    MIN_STEPS_BEFORE_EOS,
    SamplingParams,
    decode_step,
)
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


@dataclass(eq=False)
class LiveRow:
    """A row inside a :class:`DecodeBatch`: its inputs, options and progress."""

    row: DecodeRow
    params: SamplingParams
    rng: np.random.Generator
    max_steps: int = MAX_STEPS
    fixed_length: int | None = None
    """Decode exactly this many tokens with EOS masked (benchmarks with random weights)."""
    tag: Any = None
    """The owner's handle for this row (the engine's segment job)."""
    generated: list[int] = field(default_factory=list)
    history: list[int] = field(default_factory=list)
    step: int = 0

    def __post_init__(self) -> None:
        self.params.validate()
        if len(self.row.phones) == 0:
            raise InputError("every row needs at least one phone")
        self.history = np.asarray(self.row.prompt, dtype=np.int64).tolist()

    @property
    def limit(self) -> int:
        return self.fixed_length if self.fixed_length is not None else self.max_steps

    @property
    def tokens(self) -> np.ndarray:
        """Tokens generated so far (prompt excluded)."""
        return np.array(self.generated, dtype=np.int64)


def _pad(arrays: Sequence[np.ndarray], dtype: type, fill: float = 0) -> np.ndarray:
    width = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), width, *arrays[0].shape[1:]), fill, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


class DecodeBatch:
    """The rows decoding together on one session; not thread-safe (one owner thread)."""

    def __init__(self, session: T2SSession) -> None:
        self.session = session
        self.rows: list[LiveRow] = []
        self._logits = np.zeros((0, 0), np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Sequence[LiveRow]) -> None:
        """Prefill ``rows`` together and join them to the running batch."""
        if not rows:
            return
        prompts = [np.asarray(r.row.prompt, dtype=np.int64) for r in rows]
        logits = self.session.join(
            _pad([np.asarray(r.row.phones, dtype=np.int64) for r in rows], np.int64),
            np.array([len(r.row.phones) for r in rows], dtype=np.int64),
            _pad([np.asarray(r.row.bert, dtype=np.float32) for r in rows], np.float32),
            _pad(prompts, np.int64) if any(len(p) for p in prompts) else None,
            np.array([len(p) for p in prompts], dtype=np.int64),
        )
        self._logits = logits if not self.rows else np.concatenate([self._logits, logits])
        self.rows.extend(rows)

    def remove(self, drop: Callable[[LiveRow], bool]) -> list[LiveRow]:
        """Take out the rows ``drop`` selects (cancelled requests); returns them."""
        gone = [r for r in self.rows if drop(r)]
        if gone:
            self._keep([i for i, r in enumerate(self.rows) if not drop(r)])
        return gone

    def _keep(self, idx: list[int]) -> None:
        self.session.keep(np.array(idx, dtype=np.int64))
        self.rows = [self.rows[i] for i in idx]
        self._logits = self._logits[idx]

    def advance(self, on_token: Callable[[LiveRow], None] | None = None) -> list[LiveRow]:
        """Sample one token for every row, retire finished rows (returned), step the rest."""
        tokens = np.zeros(len(self.rows), np.int64)
        finished: list[int] = []
        for i, live in enumerate(self.rows):
            token, stop = _sample(live, self._logits[i : i + 1])
            tokens[i] = token
            if not stop:
                live.generated.append(token)
                live.history.append(token)
            live.step += 1
            if stop or live.step >= live.limit:
                finished.append(i)
            elif on_token is not None:
                on_token(live)
        done = [self.rows[i] for i in finished]
        if finished:
            keep = [i for i in range(len(self.rows)) if i not in set(finished)]
            self._keep(keep)
            tokens = tokens[keep]
        if self.rows:
            self._logits = self.session.step(tokens)
        return done


def _sample(live: LiveRow, logits: np.ndarray) -> tuple[int, bool]:
    """One step of one row under upstream's rules; ``(token, finished)``."""
    fixed = live.fixed_length is not None
    allow_eos = not fixed and live.step >= MIN_STEPS_BEFORE_EOS
    width = logits.shape[-1] - (0 if allow_eos else 1)
    noise = live.rng.standard_exponential(width, dtype=np.float32)[None]
    previous = np.array(live.history, dtype=np.int64)[None]
    res = decode_step(logits, previous, live.step, live.params, noise=noise, fixed_length=fixed)
    return int(res.tokens[0]), bool(res.finished[0])


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
    live = [
        LiveRow(r, params, g, max_steps=max_steps, fixed_length=fixed_length, tag=i)
        for i, (r, g) in enumerate(zip(rows, rngs, strict=True))
    ]
    batch = DecodeBatch(session)
    batch.add(live)
    hook = None if on_token is None else (lambda r: on_token(r.tag, r.tokens))
    while batch.rows:
        batch.advance(hook)
    return [r.tokens for r in live]
