"""Conditional flow matching (CFM) sampler of v3/v4 SoVITS: Euler steps of the DiT velocity.

Mirrors upstream ``GPT_SoVITS/module/models.py::CFM.inference``. The start noise comes from the
caller (upstream draws ``torch.randn`` inside), so a run is reproducible and comparable. What
differs between model generations (step count, start-noise temperature, classifier-free
guidance and what its second pass drops) is one :class:`SamplerConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn

from gsv_models.dit import DiT, DiTConfig

CFG_THRESHOLD: Final = 1e-5
"""Guidance runs only for ``cfg_rate`` above this (upstream's test)."""


@dataclass(frozen=True)
class SamplerConfig:
    """How to integrate the flow; defaults are upstream's v3/v4 inference."""

    steps: int = 32
    """Euler steps (upstream ``sample_steps``; its UI offers 4, 8, 16, 32)."""
    temperature: float = 1.0
    """Scale of the standard-normal start noise (upstream v5 samples with 0.875)."""
    cfg_rate: float = 0.0
    """Classifier-free guidance ``v + cfg_rate · (v − v_uncond)``; 0 (v3/v4) skips the second
    DiT pass."""
    cfg_drops_text: bool = True
    """The unconditioned pass drops the prompt mel and also the content features (upstream's
    v3/v4 ``CFM``); False keeps the content (upstream v5)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that is out of range."""
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, but got {self.steps}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, but got {self.temperature}")
        if not (math.isfinite(self.cfg_rate) and self.cfg_rate >= 0):
            raise ValueError(f"cfg_rate must be finite and >= 0, but got {self.cfg_rate}")


class CFM(nn.Module):
    """The DiT under upstream's key ``estimator`` plus the Euler sampler."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.estimator = DiT(cfg)

    @torch.no_grad()
    def sample(
        self,
        mu: torch.Tensor,
        prompt: torch.Tensor,
        noise: torch.Tensor,
        sampler: SamplerConfig | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Integrate from noise at t = 0 to a mel at t = 1.

        Args:
            mu: content features ``[B, text_dim, T]`` (prompt frames first).
            prompt: normalised prompt mel ``[B, mel, P]``, ``P <= T``; those frames of the
                output stay zero, as upstream leaves them.
            noise: standard-normal start noise ``[B, mel, T]``.
            sampler: steps, temperature and guidance; None means upstream's v3/v4 defaults.
            lengths: valid frames per row (attention keys past them are masked).

        Returns:
            Mel ``[B, mel, T]`` (normalised; frames ``< P`` are zero).

        Raises:
            ValueError: on inconsistent shapes or an invalid sampler.
        """
        sampler = sampler or SamplerConfig()
        sampler.validate()
        b, _, n = mu.shape
        p = prompt.shape[-1]
        if noise.shape != (b, self.estimator.cfg.mel_dim, n) or p > n:
            raise ValueError(
                f"noise must be {(b, self.estimator.cfg.mel_dim, n)} and the prompt at most {n} "
                f"frames; got noise {tuple(noise.shape)}, prompt {tuple(prompt.shape)}"
            )
        dit = self.estimator
        x = noise * sampler.temperature
        x[..., :p] = 0
        cond = torch.zeros_like(x)
        cond[..., :p] = prompt
        d = 1 / sampler.steps
        text = dit.embed_text(mu)
        step = dit.embed_step(torch.full((b,), d, dtype=mu.dtype, device=mu.device))
        guided = sampler.cfg_rate > CFG_THRESHOLD
        if guided:
            text_neg = dit.embed_text(torch.zeros_like(mu)) if sampler.cfg_drops_text else text
            cond_neg = torch.zeros_like(cond)
        t = 0.0  # accumulated in Python floats, as upstream does (not j / steps)
        for _ in range(sampler.steps):
            time = torch.full((b,), t, dtype=mu.dtype, device=mu.device)
            v = dit.velocity(x, cond, text, time, step, lengths)
            if guided:
                v_neg = dit.velocity(x, cond_neg, text_neg, time, step, lengths)
                v = v + (v - v_neg) * sampler.cfg_rate
            x = x + d * v
            t = t + d
            x[..., :p] = 0
        return x
