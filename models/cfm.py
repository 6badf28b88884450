"""Conditional flow matching (CFM) sampler of v3/v4/v5 SoVITS: Euler steps of the DiT velocity.

Mirrors upstream ``GPT_SoVITS/module/models.py::CFM.inference`` (v3/v4) and
``module/v5_inference.py::CFMV5.inference`` (v5). The start noise comes from the caller
(upstream draws ``torch.randn`` inside), so a run is reproducible and comparable. What differs
between model generations (step count, start-noise temperature, classifier-free guidance, what
its second pass drops, which step counts and rates are allowed) is one :class:`SamplerConfig`;
:func:`sampler_for` holds the per-version defaults. The step embedding is the DiT's business
(v5's has none). v5 computes times as ``k / N`` while v3/v4 accumulate ``t += 1 / N``; for v5's
allowed N (powers of two) every partial sum is exact in binary floating point, so one loop
serves both bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn

from gsv_models.dit import DiT, DiTConfig
from gsv_models.version import ModelVersion

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
    allowed_steps: tuple[int, ...] | None = None
    """Step counts the model accepts (v5: 4, 8, 16, 32, upstream's ``validate_v5_sampling``);
    None accepts any positive count."""
    max_cfg_rate: float | None = None
    """Largest guidance rate accepted (v5: 2); None means no bound."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that is out of range."""
        if self.steps < 1 or (
            self.allowed_steps is not None and self.steps not in self.allowed_steps
        ):
            allowed = ", ".join(map(str, self.allowed_steps)) if self.allowed_steps else ">= 1"
            raise ValueError(f"steps must be {allowed}, but got {self.steps}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, but got {self.temperature}")
        top = self.max_cfg_rate
        if not (
            math.isfinite(self.cfg_rate)
            and self.cfg_rate >= 0
            and (top is None or self.cfg_rate <= top)
        ):
            bound = f"in [0, {top:g}]" if top is not None else ">= 0"
            raise ValueError(f"cfg_rate must be finite and {bound}, but got {self.cfg_rate}")


V5_STEPS: Final = (4, 8, 16, 32)
V5_TEMPERATURE: Final = 0.875
V5_MAX_CFG: Final = 2.0
_DEFAULTS: Final[dict[ModelVersion, tuple[int, float]]] = {
    ModelVersion.V5DEV: (32, 1.3),
    ModelVersion.V5TURBO: (4, 0.0),
}
"""Upstream's per-version (steps, cfg_rate) defaults of ``v5_inference.sampling_defaults``."""


def sampler_for(
    version: ModelVersion, steps: int | None = None, cfg_rate: float | None = None
) -> SamplerConfig:
    """Upstream's sampler of a model generation, with optional request overrides (None = the
    version's default: v3/v4 32 steps without guidance, v5turbo 4 steps cfg 0, v5dev 32 steps
    cfg 1.3). Not validated here; :meth:`SamplerConfig.validate` says what is wrong."""
    if not version.is_v5:
        return SamplerConfig(steps=32 if steps is None else steps, cfg_rate=cfg_rate or 0.0)
    default_steps, default_cfg = _DEFAULTS[version]
    return SamplerConfig(
        steps=default_steps if steps is None else steps,
        temperature=V5_TEMPERATURE,
        cfg_rate=default_cfg if cfg_rate is None else cfg_rate,
        cfg_drops_text=False,
        allowed_steps=V5_STEPS,
        max_cfg_rate=V5_MAX_CFG,
    )


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
            sampler: steps, temperature and guidance (:func:`sampler_for`); None means
                upstream's v3/v4 defaults.
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


V5_REFERENCE_FRAMES: Final = 500
"""Most reference frames a v5 chunk carries (upstream ``V5_REFERENCE_FRAMES``)."""
V5_TOTAL_FRAMES: Final = 1000
"""Prompt + target frames of one v5 chunk at most."""
V5_MAX_TARGET_FRAMES: Final = 640
V5_TAIL_FRAMES: Final = 32
"""Generated frames that replace the end of the reference prompt in chunks after the first."""


def sample_v5_chunks(
    cfm: CFM,
    ref_features: torch.Tensor,
    features: torch.Tensor,
    ref_mel: torch.Tensor,
    noise: Callable[[int, int], torch.Tensor],
    sampler: SamplerConfig,
) -> torch.Tensor:
    """Upstream's ``v5_inference.synthesize_v5_mel``: the target in chunks of
    ``min(1000 − R, 640)`` frames behind R ≤ 500 reference frames; later chunks swap the last
    ``min(32, R)`` prompt frames (mel and features) for the end of the previous chunk.

    Args:
        cfm: the sampler's DiT.
        ref_features: reference content features ``[B, text_dim, F]``.
        features: target content features ``[B, text_dim, T]``.
        ref_mel: normalised reference mel ``[B, mel, M]``.
        noise: ``noise(start, stop)`` → standard-normal start noise ``[B, mel, stop − start]``
            of target frames ``start:stop`` (prompt frames get none, as their noise is zeroed).
        sampler: the v5 sampler (:func:`sampler_for`).

    Returns:
        Normalised mel ``[B, mel, T]``.

    Raises:
        ValueError: an empty reference or target, or an invalid sampler.
    """
    r = min(ref_mel.shape[-1], ref_features.shape[-1])
    if r < 1 or features.shape[-1] < 1:
        raise ValueError("v5 sampling needs a non-empty reference and target")
    ref_mel = ref_mel[..., :r][..., -V5_REFERENCE_FRAMES:]
    ref_features = ref_features[..., :r][..., -V5_REFERENCE_FRAMES:]
    r = ref_mel.shape[-1]
    size = min(V5_TOTAL_FRAMES - r, V5_MAX_TARGET_FRAMES)
    tail = min(V5_TAIL_FRAMES, r)
    prompt, prompt_features = ref_mel, ref_features
    out: list[torch.Tensor] = []
    for start in range(0, features.shape[-1], size):
        target = features[..., start : start + size]
        mu = torch.cat((prompt_features, target), -1)
        start_noise = torch.cat(
            (torch.zeros_like(prompt), noise(start, start + target.shape[-1])), -1
        )
        mel = cfm.sample(mu, prompt, start_noise, sampler)[..., r:]
        out.append(mel)
        # every chunk but the last has >= 360 frames, so the tail always fits
        prompt = torch.cat((ref_mel[..., : r - tail], mel[..., -tail:]), -1)
        prompt_features = torch.cat((ref_features[..., : r - tail], target[..., -tail:]), -1)
    return torch.cat(out, -1)
