"""Random weights for a T2SModel that behave like a working decoder (tests and benchmarks only).

Upstream's default init of the 24-layer post-LN GPT collapses every position onto one vector
(greedy decoding then repeats one token), and random GPTs tend to emit EOS as soon as it is
allowed. This init avoids both on purpose:

* **Depth-scaled residual branches.** Every sub-layer reads a unit-variance (post-LN) stream;
  its output projection is scaled so the branch adds variance ``BRANCH_BUDGET² / (2·n_layer)``.
  The whole stack then adds about ``BRANCH_BUDGET²`` in total, whatever the depth: the current
  token, its position and the context all keep a share of the final state, so the logits depend
  on all three (no collapse, no saturation; "tiny" and "full" behave alike).
* **Attention with structure.** q/k weights have variance 2/D so attention scores have a standard
  deviation of about 2: neither uniform averaging (which collapses positions) nor one-hot.
* **An EOS clock.** One sin/cos channel pair (s, c) of the sinusoidal table, of frequency
  ω ≈ π / (4·eos_position), is reserved: no embedding, projection or bias writes to it, so at an
  audio position p the difference h_c − h_s carries ``alpha·(cos ωp − sin ωp)`` through the
  stack (post-LN only rescales it; the difference cancels LayerNorm's mean subtraction, which
  depends on the position through the table's row mean). The EOS row of the head reads only
  −(h_c − h_s), and the last LayerNorm's bias on c sets the offset so that the EOS logit passes
  the typical best non-EOS logit near audio position ``eos_position`` (prompt tokens count) and
  keeps rising until about 3·eos_position. Other rows do not read s or c. EOS is thus unlikely
  early and certain later, while the exact step still varies with the tokens.
* Small random biases and LayerNorm affines everywhere, so parity tests exercise every tensor.
"""

from __future__ import annotations

import math
from typing import Final

import torch
from torch import Tensor

from gsv_models.t2s import T2SModel

BRANCH_BUDGET: Final = 0.7
"""Standard deviation the whole residual stack adds relative to the unit-variance stream."""
LOGIT_STD: Final = 2.0
"""Standard deviation of a non-EOS logit; the best of 1024 is then about 3.2× that."""
EOS_LEVEL: Final = 2.6
"""EOS logit at ``eos_position``, in units of LOGIT_STD: about where the best non-EOS logit sits
once upstream's repetition penalty (1.35) has hit a few dozen generated tokens (measured; the
fresh best of 1024 would be about 3.2)."""
EOS_RAMP: Final = 4.0
"""EOS logit change between the start of the clock and ``eos_position`` (in logit units)."""
AFFINE_NOISE: Final = 0.05
"""Std of the random LayerNorm affine and bias offsets."""


def clock_pair(dim: int, eos_position: float) -> tuple[int, float]:
    """The sin/cos pair whose frequency is closest to π / (4·eos_position).

    Returns:
        (index of the pair's sin channel; cos is the next one, angular frequency per position).
    """
    rate = math.log(10000.0) / dim
    pair = round(math.log(4.0 * eos_position / math.pi) / (2.0 * rate))
    pair = min(max(pair, 0), dim // 2 - 1)
    return 2 * pair, math.exp(-2.0 * pair * rate)


def _clock(omega: float, p: float) -> float:
    return math.cos(omega * p) - math.sin(omega * p)


def _normal(shape: tuple[int, ...], std: float, g: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=g) * std


@torch.no_grad()
def randomize_t2s_(
    model: T2SModel, generator: torch.Generator, *, eos_position: float = 200.0
) -> None:
    """Fill every parameter of ``model`` in place (see the module docstring).

    Args:
        model: any shape ("tiny" 2×64 to "full" 24×512).
        generator: the only source of randomness; the same seed gives the same weights.
        eos_position: audio position (prompt + generated tokens) where EOS starts to win.
    """
    cfg = model.config
    d, n_layer, g = cfg.hidden_dim, cfg.n_layer, generator
    s, omega = clock_pair(d, eos_position)
    clock = [s, s + 1]
    beta = BRANCH_BUDGET / math.sqrt(2 * n_layer)

    def params_like(t: Tensor, std: float) -> Tensor:
        return _normal(tuple(t.shape), std, g).to(t.dtype)

    model.ar_text_embedding.word_embeddings.weight.copy_(
        params_like(model.ar_text_embedding.word_embeddings.weight, 1.0)
    )
    audio = params_like(model.ar_audio_embedding.word_embeddings.weight, 1.0)
    audio[:, clock] = 0.0  # tokens leave the clock alone
    model.ar_audio_embedding.word_embeddings.weight.copy_(audio)
    model.bert_proj.weight.copy_(
        params_like(model.bert_proj.weight, 0.5 / math.sqrt(model.config.bert_dim))
    )
    model.bert_proj.bias.copy_(params_like(model.bert_proj.bias, AFFINE_NOISE))
    model.ar_text_position.alpha.fill_(1.0)
    model.ar_audio_position.alpha.fill_(1.0)

    for layer in model.layers:
        attn = layer.self_attn
        w = torch.cat(
            [
                _normal((d, d), math.sqrt(2.0 / d), g),  # q
                _normal((d, d), math.sqrt(2.0 / d), g),  # k
                _normal((d, d), math.sqrt(1.0 / d), g),  # v
            ]
        )
        attn.in_proj_weight.copy_(w)
        attn.in_proj_bias.copy_(params_like(attn.in_proj_bias, AFFINE_NOISE))
        _set_branch_out(attn.out_proj.weight, attn.out_proj.bias, beta / math.sqrt(d), clock, g)
        layer.linear1.weight.copy_(params_like(layer.linear1.weight, math.sqrt(2.0 / d)))
        layer.linear1.bias.copy_(params_like(layer.linear1.bias, AFFINE_NOISE))
        _set_branch_out(layer.linear2.weight, layer.linear2.bias, beta / math.sqrt(4 * d), clock, g)
        for norm in (layer.norm1, layer.norm2):
            weight = 1.0 + _normal((d,), AFFINE_NOISE, g)
            bias = _normal((d,), AFFINE_NOISE, g)
            weight[clock], bias[clock] = 1.0, 0.0  # the clock passes unchanged
            norm.weight.copy_(weight)
            norm.bias.copy_(bias)

    # Clock gain after the stack: the first LN sees var(emb) + alpha²/2 per channel; every
    # branch then grows the variance by 1 + beta² before the next LN divides it back.
    gain = 1.0 / math.sqrt(1.0 + 0.5) * (1.0 + beta**2) ** (-n_layer)
    head = _normal((cfg.vocab_size, d), LOGIT_STD / math.sqrt(d), g)
    head[:, clock] = 0.0
    # EOS logit = -k·(h_c - h_s) with h_c - h_s ≈ gain·(cos ωp - sin ωp) + offset; it reaches
    # the typical best (penalized) non-EOS logit at p = eos_position, EOS_RAMP logits above its
    # value at p = 0.
    k = EOS_RAMP / (gain * (_clock(omega, 0.0) - _clock(omega, eos_position)))
    best = EOS_LEVEL * LOGIT_STD
    offset = -(best / k + gain * _clock(omega, eos_position))
    head[cfg.eos] = 0.0
    head[cfg.eos, s], head[cfg.eos, s + 1] = k, -k
    model.ar_predict_layer.weight.copy_(head)
    model.layers[-1].norm2.bias[s + 1] = offset


def _set_branch_out(
    weight: Tensor, bias: Tensor, std: float, clock: list[int], g: torch.Generator
) -> None:
    """Output projection of a residual branch: scaled weights, nothing written to the clock."""
    w = _normal(tuple(weight.shape), std, g)
    b = _normal(tuple(bias.shape), AFFINE_NOISE * 0.2, g)
    w[clock] = 0.0
    b[clock] = 0.0
    weight.copy_(w)
    bias.copy_(b)
