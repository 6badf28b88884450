"""Parity of the GPT (T2S) reference with upstream's Text2SemanticDecoder (same random weights).

Needs GSV_UPSTREAM_DIR (an upstream GPT-SoVITS checkout); skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from gsv_models.config import T2SConfig
from gsv_models.sampling import sample
from gsv_models.t2s import T2SModel
from gsv_models.testing.t2s_init import randomize_t2s_
from gsv_runtime.gpt.sampling import SamplingParams
from tests.upstream_oracle import import_upstream

pytestmark = pytest.mark.upstream

TINY = T2SConfig(n_layer=2, hidden_dim=64, embedding_dim=64, n_head=4, phoneme_vocab_size=732)
FULL = T2SConfig()
REL_TOL = 1e-4
"""Allowed logit difference relative to the largest |logit| of the run."""


def _pair(cfg: T2SConfig, eos_position: float = 300.0) -> tuple[T2SModel, Any]:
    """Our model with the non-degenerate init and upstream's decoder holding the same weights."""
    t2s_model = import_upstream("AR.models.t2s_model")
    ours = T2SModel(cfg).eval()
    randomize_t2s_(ours, torch.Generator().manual_seed(0), eos_position=eos_position)
    theirs = t2s_model.Text2SemanticDecoder(cfg.to_upstream()).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


@pytest.fixture(scope="module")
def tiny() -> tuple[T2SModel, Any]:
    return _pair(TINY)


@contextmanager
def _logits_of(*models: nn.Module) -> Iterator[list[list[torch.Tensor]]]:
    """Record every output of each model's ``ar_predict_layer``."""
    records: list[list[torch.Tensor]] = [[] for _ in models]
    handles = [
        m.ar_predict_layer.register_forward_hook(
            lambda _m, _i, out, rec=rec: rec.append(out.detach().clone())
        )
        for m, rec in zip(models, records, strict=True)
    ]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def _check_logits(theirs: list[torch.Tensor], ours: list[torch.Tensor]) -> float:
    assert len(theirs) == len(ours)
    scale = max(float(t.abs().max()) for t in theirs)
    diff = max(float((t - o).abs().max()) for t, o in zip(theirs, ours, strict=True))
    assert diff <= REL_TOL * scale, f"max |Δlogit| {diff:.3g} at logit scale {scale:.3g}"
    return diff


def _inputs(cfg: T2SConfig, lx: int, p: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    phones = torch.randint(0, cfg.phoneme_vocab_size, (1, lx), generator=g)
    bert = torch.randn(1, 1024, lx, generator=g)  # upstream layout [B, 1024, N]
    prompt = torch.randint(0, cfg.vocab_size - 1, (1, p), generator=g)
    return phones, bert, prompt


def _naive(theirs: Any, phones, bert, prompt, **kw: Any) -> torch.Tensor:
    """Generated tokens of upstream's single-sequence loop (prompt removed)."""
    kw = {"top_k": 15, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35, **kw}
    with torch.no_grad():
        y, _ = next(
            theirs.infer_panel_naive(phones, torch.tensor([phones.shape[1]]), prompt, bert, **kw)
        )
    return y[0, 0 if prompt is None else prompt.shape[1] :].long()


def test_state_dict_and_tables_match_upstream() -> None:
    t2s_model = import_upstream("AR.models.t2s_model")
    for cfg in (TINY, T2SConfig(phoneme_vocab_size=512), FULL):
        theirs = t2s_model.Text2SemanticDecoder(cfg.to_upstream()).state_dict()
        ours = T2SModel(cfg).state_dict()
        assert list(ours) == list(theirs)
        assert all(ours[k].shape == theirs[k].shape for k in ours)
    theirs = t2s_model.Text2SemanticDecoder(TINY.to_upstream())
    pe = T2SModel(TINY).pe
    assert torch.equal(pe, theirs.ar_text_position.pe[0])
    assert torch.equal(pe, theirs.ar_audio_position.pe[0])


def test_sampler_is_bitwise_upstreams() -> None:
    utils = import_upstream("AR.models.utils")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1025, generator=g) * 3
    prev = torch.randint(0, 1024, (3, 40), generator=g)
    for kw in (
        {"top_k": 15, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35},
        {"top_k": 5, "top_p": 0.8, "temperature": 0.7, "repetition_penalty": 1.2},
        {"top_k": 1, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0},
    ):
        torch.manual_seed(7)
        tok_up, probs_up = utils.sample(logits.clone(), prev, **kw)
        torch.manual_seed(7)
        out = sample(logits, prev, SamplingParams(**kw))
        assert torch.equal(out.probs, probs_up)
        assert torch.equal(out.tokens, tok_up[:, 0].long())


def test_single_greedy_matches_infer_panel_naive(tiny: tuple[T2SModel, Any]) -> None:
    ours, theirs = tiny
    phones, bert, prompt = _inputs(TINY, 37, 45, seed=5)
    with _logits_of(theirs, ours) as (rec_up, rec_ours):
        up = _naive(theirs, phones, bert, prompt, top_k=1)
        mine = ours.generate(
            phones, torch.tensor([37]), bert.transpose(1, 2), prompt, params=SamplingParams(top_k=1)
        )[0]
    assert len(up) >= 100
    assert torch.equal(mine, up)
    torch.testing.assert_close(rec_ours[0], rec_up[0], atol=REL_TOL * 10, rtol=0)
    _check_logits(rec_up, rec_ours)


def test_ref_free_greedy_matches(tiny: tuple[T2SModel, Any]) -> None:
    ours, theirs = tiny
    phones, bert, _ = _inputs(TINY, 29, 0, seed=6)
    with _logits_of(theirs, ours) as (rec_up, rec_ours):
        up = _naive(theirs, phones, bert, None, top_k=1)
        mine = ours.generate(
            phones, torch.tensor([29]), bert.transpose(1, 2), params=SamplingParams(top_k=1)
        )[0]
    assert len(up) >= 100
    assert torch.equal(mine, up)
    _check_logits(rec_up, rec_ours)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_seeded_sampling_matches(tiny: tuple[T2SModel, Any], seed: int) -> None:
    ours, theirs = tiny
    phones, bert, prompt = _inputs(TINY, 21, 33, seed=10 + seed)
    torch.manual_seed(seed)
    up = _naive(theirs, phones, bert, prompt)
    torch.manual_seed(seed)
    mine = ours.generate(phones, torch.tensor([21]), bert.transpose(1, 2), prompt)[0]
    assert torch.equal(mine, up)


def _batch_inputs(cfg: T2SConfig, lens: list[int], p: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randint(0, cfg.phoneme_vocab_size, (n,), generator=g) for n in lens]
    berts = [torch.randn(1024, n, generator=g) for n in lens]
    prompt = torch.randint(0, cfg.vocab_size - 1, (len(lens), p), generator=g)
    phones = torch.zeros(len(lens), max(lens), dtype=torch.long)  # ours: right padding
    bert = torch.zeros(len(lens), max(lens), 1024)
    for i, (x, b) in enumerate(zip(xs, berts, strict=True)):
        phones[i, : len(x)], bert[i, : len(x)] = x, b.T
    return {
        "xs": xs,
        "berts": berts,
        "prompt": prompt,
        "phones": phones,
        "bert": bert,
        "lens": torch.tensor(lens),
    }


def _batch_run(
    ours: T2SModel, theirs: Any, d: dict[str, Any], params: SamplingParams, seed: int | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        y_list, _ = theirs.infer_panel_batch_infer(
            d["xs"],
            d["lens"],
            d["prompt"],
            d["berts"],
            top_k=params.top_k,
            top_p=params.top_p,
            temperature=params.temperature,
            repetition_penalty=params.repetition_penalty,
        )
    if seed is not None:
        torch.manual_seed(seed)
    mine = ours.generate(d["phones"], d["lens"], d["bert"], d["prompt"], params=params)
    p = d["prompt"].shape[1]
    return [y[p:].long() for y in y_list], mine


def test_batch_greedy_matches_infer_panel_batch_infer(tiny: tuple[T2SModel, Any]) -> None:
    ours, theirs = tiny
    d = _batch_inputs(TINY, [23, 41, 9], 30, seed=7)
    with _logits_of(theirs, ours) as (rec_up, rec_ours):
        up, mine = _batch_run(ours, theirs, d, SamplingParams(top_k=1), None)
    assert min(len(u) for u in up) >= 100
    assert len({len(u) for u in up}) > 1  # rows leave the batch at different steps
    for u, m in zip(up, mine, strict=True):
        assert torch.equal(m, u)
    _check_logits(rec_up, rec_ours)


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_seeded_sampling_matches(tiny: tuple[T2SModel, Any], seed: int) -> None:
    ours, theirs = tiny
    d = _batch_inputs(TINY, [17, 30, 12], 25, seed=20 + seed)
    up, mine = _batch_run(ours, theirs, d, SamplingParams(), seed)
    for u, m in zip(up, mine, strict=True):
        assert torch.equal(m, u)


def test_full_config_short_run() -> None:
    ours, theirs = _pair(FULL)
    phones, bert, prompt = _inputs(FULL, 26, 40, seed=3)
    steps = 24  # upstream stops once more than early_stop_num tokens exist, keeping them all
    with _logits_of(theirs, ours) as (rec_up, rec_ours):
        up = _naive(theirs, phones, bert, prompt, top_k=1, early_stop_num=steps - 1)
        mine = ours.generate(
            phones,
            torch.tensor([26]),
            bert.transpose(1, 2),
            prompt,
            params=SamplingParams(top_k=1),
            max_steps=steps,
        )[0]
    assert len(up) == steps
    assert torch.equal(mine, up)
    _check_logits(rec_up, rec_ours)
    torch.manual_seed(4)
    up = _naive(theirs, phones, bert, prompt, early_stop_num=steps - 1)
    torch.manual_seed(4)
    mine = ours.generate(phones, torch.tensor([26]), bert.transpose(1, 2), prompt, max_steps=steps)[
        0
    ]
    assert torch.equal(mine, up)
