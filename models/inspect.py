"""What ``gsv inspect`` prints: a checkpoint's kind, version, shape, size and a timed forward."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from gsv_models.cfm import SamplerConfig
from gsv_models.checkpoint import Checkpoint
from gsv_models.config import SoVITSConfig, T2SConfig
from gsv_models.load import load_model
from gsv_models.sovits_v3 import SoVITSV3Config

_FORWARD_TOKENS = 25
"""Semantic tokens decoded (GPT) or vocoded (SoVITS) by the smoke forward: one second of audio."""


def _params(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.2f} M parameters"


def _gpt_forward(model: nn.Module, cfg: T2SConfig, gen: torch.Generator) -> str:
    phones = torch.randint(0, 322, (1, 30), generator=gen)
    bert = torch.zeros(1, 30, cfg.bert_dim)
    prompt = torch.randint(0, cfg.vocab_size - 1, (1, 50), generator=gen)
    start = time.perf_counter()
    tokens = model.generate(
        phones, torch.tensor([30]), bert, prompt, fixed_length=_FORWARD_TOKENS, generator=gen
    )[0]
    dt = time.perf_counter() - start
    return (
        f"  forward: 30 phones + 50 prompt tokens → {len(tokens)} sampled tokens in {dt:.2f} s "
        f"({len(tokens) / dt:.0f} tokens/s); first {tokens[:8].tolist()}"
    )


def _sovits_forward(model: nn.Module, cfg: SoVITSConfig, gen: torch.Generator) -> str:
    ssl = torch.randn(1, cfg.ssl_dim, 2 * _FORWARD_TOKENS, generator=gen)
    codes = model.extract_latent(ssl)
    spec = torch.rand(1, cfg.spec_channels, 100, generator=gen)
    sv = torch.randn(1, cfg.sv_dim, generator=gen) if cfg.version.is_pro else None
    ge = model.reference_embedding(spec, sv=sv)
    phones = torch.randint(0, cfg.n_symbols, (1, 20), generator=gen)
    noise = torch.randn(1, cfg.inter_channels, 2 * codes.shape[1], generator=gen)
    start = time.perf_counter()
    wav, _ = model.decode(
        codes, torch.tensor([codes.shape[1]]), phones, torch.tensor([20]), ge, noise=noise
    )
    dt = time.perf_counter() - start
    seconds = wav.shape[-1] / cfg.sampling_rate
    return (
        f"  forward: {codes.shape[1]} codes → {seconds:.2f} s of audio in {dt:.2f} s; "
        f"rms {wav.pow(2).mean().sqrt():.3f}, peak {wav.abs().max():.3f}"
    )


def _cfm_forward(model: nn.Module, cfg: SoVITSV3Config, gen: torch.Generator) -> str:
    s = cfg.sovits
    codes = model.extract_latent(torch.randn(1, s.ssl_dim, 2 * _FORWARD_TOKENS, generator=gen))
    ge = model.reference_embedding(torch.rand(1, s.spec_channels, 100, generator=gen))
    phones = torch.randint(0, s.n_symbols, (1, 20), generator=gen)
    start = time.perf_counter()
    fea, _ = model.decode_features(
        codes, torch.tensor([codes.shape[1]]), phones, torch.tensor([20]), ge
    )
    noise = torch.randn(1, cfg.dit.mel_dim, fea.shape[2], generator=gen)
    mel = model.cfm.sample(fea, torch.zeros(1, cfg.dit.mel_dim, 0), noise, SamplerConfig(steps=4))
    dt = time.perf_counter() - start
    return (
        f"  forward: {codes.shape[1]} codes → {mel.shape[2]} mel frames (4 CFM steps) in "
        f"{dt:.2f} s; rms {mel.pow(2).mean().sqrt():.3f}"
    )


def _sv_forward(model: nn.Module, gen: torch.Generator) -> str:
    feats = torch.randn(1, 300, 80, generator=gen)
    start = time.perf_counter()
    emb = model.embed(feats)
    dt = time.perf_counter() - start
    return f"  forward: 3 s of fbank frames → {emb.shape[1]}-d speaker vector in {dt:.2f} s"


def _header(ckpt: Checkpoint) -> str:
    kind = {"gpt": "GPT", "sovits": "SoVITS", "sv": "speaker model (ERes2NetV2)"}[ckpt.kind]
    version = ckpt.version.value
    if ckpt.kind == "gpt":
        version = f"symbols {ckpt.version.symbols_version}"
    tag = ckpt.header.decode(errors="replace")
    return f"{ckpt.path}: {kind} {version} (header {tag}, sha256 {ckpt.sha256[:12]}…)"


def describe(
    path: str | Path, forward: bool = True, base: str | Path | None = None
) -> Iterator[str]:
    """Lines describing one checkpoint (a LoRA fine-tune merged into ``base``); with ``forward``
    also a seeded smoke forward.

    Raises:
        CheckpointError: as :func:`gsv_models.checkpoint.load_checkpoint`.
    """
    ckpt, model = load_model(path, base=base)
    yield _header(ckpt)
    cfg = ckpt.config
    if isinstance(cfg, T2SConfig):
        yield (
            f"  {cfg.n_layer} layers × {cfg.hidden_dim}, {cfg.n_head} heads, "
            f"{cfg.phoneme_vocab_size} phone rows, {cfg.vocab_size} semantic tokens; "
            + _params(model)
        )
    elif isinstance(cfg, SoVITSConfig):
        yield (
            f"  {cfg.sampling_rate} Hz, gin {cfg.gin_channels}, decoder "
            f"{cfg.upsample_initial_channel} ch kernels {list(cfg.upsample_kernel_sizes)}, "
            f"{cfg.n_symbols} symbols; " + _params(model)
        )
    elif isinstance(cfg, SoVITSV3Config):
        yield (
            f"  CFM DiT {cfg.dit.depth} × {cfg.dit.dim}, {cfg.dit.heads} heads, gin "
            f"{cfg.sovits.gin_channels}, {cfg.sovits.n_symbols} symbols"
            + (f", LoRA rank {ckpt.lora_rank} merged" if ckpt.lora_rank else "")
            + "; "
            + _params(model)
        )
    else:
        yield "  " + _params(model)
    if not forward:
        return
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if isinstance(cfg, T2SConfig):
            yield _gpt_forward(model, cfg, gen)
        elif isinstance(cfg, SoVITSConfig):
            yield _sovits_forward(model, cfg, gen)
        elif isinstance(cfg, SoVITSV3Config):
            yield _cfm_forward(model, cfg, gen)
        else:
            yield _sv_forward(model, gen)
