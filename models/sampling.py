"""Torch reference of upstream's token sampler and per-step stop rules (the parity oracle).

Mirrors ``GPT_SoVITS/AR/models/utils.py`` (``logits_to_probs``, ``sample``) and the decode-loop
rules of ``GPT_SoVITS/AR/models/t2s_model.py`` (``infer_panel_naive``,
``infer_panel_batch_infer``). The order of operations is part of the behaviour:

1. repetition penalty over every earlier token of the row, prompt included;
2. top-p on the penalized logits (before temperature), only when ``top_p < 1``;
3. division by ``max(temperature, 1e-5)``;
4. top-k, keeping every logit equal to the k-th largest (ties kept);
5. softmax, then the "exponential race" ``argmax(probs / q)`` with ``q ~ Exp(1)``.

Noise is drawn as ``torch.empty_like(probs).exponential_(1)``: from the global RNG when no
generator is given, which reproduces upstream's draws (same shapes, same order) under the same
seed, or from a ``torch.Generator``; it can also be passed in as a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gsv_runtime.gpt.sampling import (
    MIN_STEPS_BEFORE_EOS,
    MIN_TEMPERATURE,
    SamplingParams,
)


@dataclass(frozen=True)
class SampleOutput:
    """One sampling step for a batch of rows."""

    tokens: Tensor
    """Sampled ids, int64 [B]."""
    probs: Tensor
    """The distribution sampled from, [B, V'] (V' = columns of the logits given)."""
    penalized: Tensor
    """Logits after the repetition penalty only, [B, V']; upstream's argmax-EOS test reads these."""


def apply_repetition_penalty(logits: Tensor, previous: Tensor | None, penalty: float) -> Tensor:
    """Penalize every id that occurs in a row of ``previous`` (each id once, however often).

    Args:
        logits: [B, V] float.
        previous: [B, N] int ids of earlier tokens; entries < 0 are padding and ignored. Ids
            >= V (e.g. an EOS column that was dropped) are ignored as well.
        penalty: negative logits are multiplied by it, the others divided by it.

    Returns:
        A new [B, V] tensor; ``logits`` is left unchanged (upstream edits it in place).
    """
    if previous is None or previous.shape[-1] == 0 or penalty == 1.0:
        return logits.clone()
    b, v = logits.shape
    ids = previous.long()
    ids = torch.where((ids < 0) | (ids >= v), torch.full_like(ids, v), ids)  # pads → spare column
    seen = torch.zeros(b, v + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, ids, True)
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[:, :v], penalized, logits)


def filter_top_p(logits: Tensor, top_p: float) -> Tensor:
    """Mask (−inf) the tail whose cumulative softmax mass exceeds ``top_p``; keep the best."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    drop_sorted = cum > top_p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def filter_top_k(logits: Tensor, top_k: int | None) -> Tensor:
    """Mask (−inf) every logit below the k-th largest of its row; equal values stay."""
    if top_k is None:
        return logits
    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
    return torch.where(logits < kth, float("-inf"), logits)


def logits_to_probs(
    logits: Tensor, previous: Tensor | None, params: SamplingParams
) -> tuple[Tensor, Tensor]:
    """Upstream's filtering chain; returns ``(probs, penalized_logits)``, both [B, V]."""
    penalized = apply_repetition_penalty(logits, previous, params.repetition_penalty)
    x = filter_top_p(penalized, params.top_p)
    x = x / max(params.temperature, MIN_TEMPERATURE)
    x = filter_top_k(x, params.top_k)
    return torch.softmax(x, dim=-1), penalized


def exponential_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Exp(1) noise shaped like ``like``; the global RNG when ``generator`` is None."""
    return torch.empty_like(like).exponential_(1.0, generator=generator)


def race(probs: Tensor, noise: Tensor) -> Tensor:
    """The exponential race: ``argmax(probs / noise)`` per row, int64 [B].

    With ``noise ~ Exp(1)`` i.i.d. this draws from ``probs`` (same law as multinomial).
    """
    if noise.shape != probs.shape:
        raise ValueError(
            f"noise must have the shape of probs {tuple(probs.shape)}, but got {tuple(noise.shape)}"
        )
    return torch.argmax(probs / noise, dim=-1)


def sample(
    logits: Tensor,
    previous: Tensor | None,
    params: SamplingParams,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SampleOutput:
    """Draw one token per row.

    Args:
        logits: [B, V] float.
        previous: [B, N] earlier ids of each row (prompt + generated), −1 = padding, or None.
        params: sampler settings.
        noise: Exp(1) noise [B, V] to use instead of drawing it.
        generator: where to draw the noise from; None = torch's global RNG (upstream's order).

    Returns:
        tokens, probs and the penalized logits.
    """
    probs, penalized = logits_to_probs(logits, previous, params)
    if noise is None:
        noise = exponential_noise(probs, generator)
    return SampleOutput(race(probs, noise), probs, penalized)


@dataclass(frozen=True)
class StepResult:
    """Outcome of one decode step for the rows still running."""

    tokens: Tensor
    """Sampled ids, int64 [B]."""
    finished: Tensor
    """bool [B]: the row stops here; its token of this step is then dropped."""
    logits: Tensor
    """The logits the sampler saw, [B, V] or [B, V−1] without the EOS column."""


def decode_step(
    logits: Tensor,
    previous: Tensor | None,
    step: int,
    params: SamplingParams,
    eos: int,
    *,
    fixed_length: bool = False,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepResult:
    """Apply upstream's per-step EOS rules around :func:`sample`.

    Steps below :data:`MIN_STEPS_BEFORE_EOS` (and every step when ``fixed_length``) sample from
    the logits without their EOS column, so the noise has V−1 columns there, as upstream draws
    it. Otherwise a row finishes when the sampled token is EOS or when the argmax of the
    *penalized* logits is EOS (upstream penalizes its logits in place before that test); the
    caller drops the token of a finished row's last step either way.

    Args:
        logits: [B, V] with EOS in the last column (upstream asserts ``eos == V − 1``).
        previous: [B, N] earlier ids per row (−1 = padding) or None.
        step: 0-based decode step (0 = the logits from the prefill).
        params: sampler settings.
        eos: EOS id.
        fixed_length: never stop; EOS can never be drawn (benchmarks with random weights).
        noise: Exp(1) noise shaped like the (possibly narrowed) logits.
        generator: see :func:`sample`.

    Returns:
        Tokens, the finished flags and the logits used.

    Raises:
        ValueError: when ``eos`` is not the last column.
    """
    if eos != logits.shape[-1] - 1:
        raise ValueError(f"eos must be the last logit column {logits.shape[-1] - 1}, got {eos}")
    allow_eos = not fixed_length and step >= MIN_STEPS_BEFORE_EOS
    used = logits if allow_eos else logits[:, :eos]
    out = sample(used, previous, params, noise=noise, generator=generator)
    if allow_eos:
        finished = (out.tokens == eos) | (torch.argmax(out.penalized, dim=-1) == eos)
    else:
        finished = torch.zeros_like(out.tokens, dtype=torch.bool)
    return StepResult(out.tokens, finished, used)
