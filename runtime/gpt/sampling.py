"""Token sampling on the host, in numpy: upstream's exact order of operations, seeded noise.

Mirrors ``GPT_SoVITS/AR/models/utils.py`` (``logits_to_probs``/``sample``) and the per-step EOS
rules of ``GPT_SoVITS/AR/models/t2s_model.py``; ``gsv_models.sampling`` is the torch twin used as
the parity oracle. The order is part of the behaviour:

1. repetition penalty over every earlier token of the row, prompt included;
2. top-p on the penalized logits (before temperature), only when ``top_p < 1``;
3. division by ``max(temperature, 1e-5)``;
4. top-k, keeping every logit equal to the k-th largest (ties kept);
5. softmax, then the "exponential race" ``argmax(probs / q)`` with ``q ~ Exp(1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

MIN_STEPS_BEFORE_EOS: Final = 11
"""Decode steps 0..10 sample without the EOS column, so at least 11 tokens come out."""
MAX_STEPS: Final = 1500
"""Upstream's hard cap on decode steps per segment."""
MIN_TEMPERATURE: Final = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """Sampler settings; the defaults are upstream's api_v2 defaults."""

    top_k: int | None = 15
    """Keep the k largest logits (ties kept); None keeps all."""
    top_p: float = 1.0
    """Nucleus threshold on the penalized logits; 1.0 switches it off."""
    temperature: float = 1.0
    """Divides the logits after top-p; clamped below at 1e-5."""
    repetition_penalty: float = 1.35
    """Earlier tokens' logits: negative ones multiplied, positive ones divided by this."""

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range (NaN and infinities
        are out of every range)."""
        for name in ("top_p", "temperature", "repetition_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, but got {value!r}")
        if self.top_k is not None and (
            not isinstance(self.top_k, (int, np.integer)) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be None or >= 1, but got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], but got {self.top_p}")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be >= 0, but got {self.temperature}")
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be > 0, but got {self.repetition_penalty}")


def apply_repetition_penalty(
    logits: np.ndarray, previous: np.ndarray | None, penalty: float
) -> np.ndarray:
    """Penalize every id present in a row of ``previous`` (−1 pads and ids ≥ V are ignored)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if previous is None or previous.shape[-1] == 0 or penalty == 1.0:
        return out
    b, v = out.shape
    ids = np.asarray(previous, dtype=np.int64)
    ids = np.where((ids < 0) | (ids >= v), v, ids)  # pads → a spare column
    seen = np.zeros((b, v + 1), dtype=bool)
    np.put_along_axis(seen, ids, True, axis=1)
    penalized = np.where(out < 0, out * np.float32(penalty), out / np.float32(penalty))
    return np.where(seen[:, :v], penalized, out).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def filter_top_p(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Mask (−inf) the tail whose cumulative softmax mass exceeds ``top_p``; keep the best."""
    if top_p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    drop_sorted = np.cumsum(_softmax(sorted_logits), axis=-1) > top_p
    drop_sorted[:, 0] = False
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits).astype(np.float32)


def filter_top_k(logits: np.ndarray, top_k: int | None) -> np.ndarray:
    """Mask (−inf) every logit below the k-th largest of its row; equal values stay."""
    if top_k is None:
        return logits
    k = min(top_k, logits.shape[-1])
    kth = -np.partition(-logits, k - 1, axis=-1)[:, k - 1 : k]
    return np.where(logits < kth, -np.inf, logits).astype(np.float32)


def logits_to_probs(
    logits: np.ndarray, previous: np.ndarray | None, params: SamplingParams
) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's filtering chain; returns ``(probs, penalized_logits)``, both [B, V]."""
    penalized = apply_repetition_penalty(logits, previous, params.repetition_penalty)
    x = filter_top_p(penalized, params.top_p)
    x = x / np.float32(max(params.temperature, MIN_TEMPERATURE))
    x = filter_top_k(x, params.top_k)
    return _softmax(x.astype(np.float32)), penalized


@dataclass(frozen=True)
class StepResult:
    """Outcome of one decode step for the rows still running."""

    tokens: np.ndarray
    """Sampled ids, int64 [B]."""
    finished: np.ndarray
    """bool [B]: the row stops here; its token of this step is dropped."""


def decode_step(
    logits: np.ndarray,
    previous: np.ndarray | None,
    step: int,
    params: SamplingParams,
    rng: np.random.Generator | None = None,
    *,
    fixed_length: bool = False,
    noise: np.ndarray | None = None,
) -> StepResult:
    """Sample one token per row under upstream's EOS rules (EOS is the last logit column).

    Steps below :data:`MIN_STEPS_BEFORE_EOS` (and every step when ``fixed_length``) sample
    without the EOS column. Otherwise a row finishes when the sampled token is EOS or when the
    argmax of the *penalized* logits is EOS; the caller drops that row's token of this step.

    Args:
        logits: [B, V] float32.
        previous: [B, N] earlier ids per row (prompt + generated; −1 = padding) or None.
        step: 0-based decode step (0 = the logits from the prefill).
        params: sampler settings.
        rng: source of the Exp(1) noise, one [B, V'] draw per step (V' = V − 1 while EOS is
            excluded).
        fixed_length: never stop and never draw EOS (benchmarks with random weights).
        noise: the Exp(1) noise itself, instead of drawing it from ``rng``.

    Raises:
        ValueError: neither ``rng`` nor ``noise`` given, or noise of the wrong shape.
    """
    eos = logits.shape[-1] - 1
    allow_eos = not fixed_length and step >= MIN_STEPS_BEFORE_EOS
    used = logits if allow_eos else logits[:, :eos]
    probs, penalized = logits_to_probs(used, previous, params)
    if noise is None:
        if rng is None:
            raise ValueError("decode_step needs rng or noise")
        noise = rng.standard_exponential(probs.shape, dtype=np.float32)
    elif noise.shape != probs.shape:
        raise ValueError(f"noise must have shape {probs.shape}, got {noise.shape}")
    tokens = np.argmax(probs / noise, axis=-1).astype(np.int64)
    if allow_eos:
        finished = (tokens == eos) | (np.argmax(penalized, axis=-1) == eos)
    else:
        finished = np.zeros(tokens.shape, dtype=bool)
    return StepResult(tokens, finished)
