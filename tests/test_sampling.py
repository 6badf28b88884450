"""The runtime's numpy sampler against the torch reference (itself checked against upstream)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsv_models import sampling as reference
from gsv_runtime.gpt.sampling import SamplingParams, decode_step, logits_to_probs

V = 1025
PARAMS = [
    SamplingParams(),
    SamplingParams(top_k=1, repetition_penalty=1.0),
    SamplingParams(top_k=None, top_p=0.8, temperature=0.7, repetition_penalty=1.2),
    SamplingParams(top_k=50, top_p=0.95, temperature=1.3, repetition_penalty=1.0),
    SamplingParams(top_k=5, temperature=0.0),
]


def _case(seed: int, b: int = 4):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((b, V)) * 3).astype(np.float32)
    previous = rng.integers(0, V - 1, size=(b, 40))
    previous[0, 30:] = -1  # a shorter row, padded
    return logits, previous


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: repr(p))
def test_probs_equal_torch(params: SamplingParams) -> None:
    for seed in range(5):
        logits, previous = _case(seed)
        probs, penalized = logits_to_probs(logits, previous, params)
        ref_probs, ref_pen = reference.logits_to_probs(
            torch.from_numpy(logits), torch.from_numpy(previous), params
        )
        np.testing.assert_array_equal(penalized, ref_pen.numpy())
        np.testing.assert_allclose(probs, ref_probs.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("step", [0, 10, 11, 40])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: repr(p))
def test_decode_step_equals_torch_with_the_same_noise(params: SamplingParams, step: int) -> None:
    for seed in range(5):
        logits, previous = _case(seed)
        logits[1, V - 1] = 50.0  # row 1 wants EOS
        width = V if step >= 11 else V - 1
        noise = (
            np.random.default_rng(100 + seed).standard_exponential((4, width)).astype(np.float32)
        )
        ours = decode_step(logits, previous, step, params, noise=noise)
        ref = reference.decode_step(
            torch.from_numpy(logits),
            torch.from_numpy(previous),
            step,
            params,
            V - 1,
            noise=torch.from_numpy(noise),
        )
        np.testing.assert_array_equal(ours.tokens, ref.tokens.numpy())
        np.testing.assert_array_equal(ours.finished, ref.finished.numpy())
        assert bool(ours.finished[1]) == (step >= 11)


def test_eos_never_sampled_before_step_11_or_with_fixed_length() -> None:
    logits = np.full((2, V), -5.0, dtype=np.float32)
    logits[:, V - 1] = 100.0
    rng = np.random.default_rng(0)
    for step in range(11):
        assert (decode_step(logits, None, step, SamplingParams(), rng).tokens < V - 1).all()
    out = decode_step(logits, None, 50, SamplingParams(), rng, fixed_length=True)
    assert (out.tokens < V - 1).all() and not out.finished.any()


def test_seeded_draws_repeat_and_follow_the_distribution() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.2, 1e-9]], dtype=np.float32))
    params = SamplingParams(top_k=None, repetition_penalty=1.0)
    draws = [
        int(decode_step(logits, None, 0, params, np.random.default_rng(i)).tokens[0])
        for i in range(3000)
    ]
    again = [
        int(decode_step(logits, None, 0, params, np.random.default_rng(i)).tokens[0])
        for i in range(3000)
    ]
    assert draws == again
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)


def test_noise_shape_and_missing_rng_are_errors() -> None:
    logits, _ = _case(0)
    with pytest.raises(ValueError, match="needs rng or noise"):
        decode_step(logits, None, 20, SamplingParams())
    with pytest.raises(ValueError, match="noise must have shape"):
        decode_step(logits, None, 20, SamplingParams(), noise=np.ones((4, 3), np.float32))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (SamplingParams(top_k=0), "top_k"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(repetition_penalty=0), "repetition_penalty"),
    ],
)
def test_validate_names_the_field(params: SamplingParams, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        params.validate()


def test_eos_is_decided_on_the_penalised_logits() -> None:
    """EOS ends a row when the argmax of the *penalised* logits is EOS, even if another token
    wins the sampling race; the raw logits' argmax (token 3 here) must not decide."""
    from gsv_runtime.gpt.sampling import SamplingParams, decode_step

    v = 8
    eos = v - 1
    logits = np.full((1, v), -5.0, np.float32)
    logits[0, 3], logits[0, eos] = 5.5, 5.0  # raw argmax: 3; penalised (3 seen): 5.5/1.35 < 5
    previous = np.array([[3]])
    noise = np.full((1, v), 100.0, np.float32)
    noise[0, 3] = 1e-6  # token 3 wins the exponential race
    params = SamplingParams(top_k=None, repetition_penalty=1.35)
    res = decode_step(logits, previous, 20, params, noise=noise)
    assert res.tokens[0] == 3 and res.finished[0]
    res = decode_step(logits, np.array([[0]]), 20, params, noise=noise)  # 3 not penalised
    assert res.tokens[0] == 3 and not res.finished[0]
    early = decode_step(logits[:, :], previous, 5, params, noise=noise[:, :-1])
    assert not early.finished[0]  # EOS is not allowed before step 11


def test_top_p_keeps_the_token_that_reaches_it_exactly() -> None:
    """Upstream drops a token only when the cumulative mass *exceeds* top_p: the token whose
    cumulative mass equals it stays."""
    from gsv_runtime.gpt.sampling import _softmax, filter_top_p

    logits = np.array([[2.0, 1.0, 0.5, -1.0]], np.float32)
    boundary = float(np.cumsum(_softmax(logits), axis=-1)[0, 1])
    kept = np.isfinite(filter_top_p(logits, boundary))
    assert kept.tolist() == [[True, True, False, False]]
