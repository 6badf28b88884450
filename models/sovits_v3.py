"""v3/v4 SoVITS (upstream ``SynthesizerTrnV3``): codes + phones + reference → CFM content features.

Mirrors ``GPT_SoVITS/module/models.py::SynthesizerTrnV3`` for inference: ``decode_encp``
(:meth:`SoVITSV3Model.decode_features`), ``extract_latent`` and the ``cfm`` sampler. The mel
that the CFM produces is vocoded outside: BigVGAN (v3, 24 kHz) or the HiFiGAN generator of
:mod:`gsv_models.vocoder_v4` (v4, 48 kHz). Differences from upstream, by design:

* no ``linear_mel`` (a training-only head) — its keys are the only ones dropped at load;
* the weight-normed convs of ``wns1`` hold their folded ``weight``;
* batch-first with per-row lengths: right-padded rows give what they give alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import torch
from torch import nn
from torch.nn import functional as F

from gsv_models.cfm import CFM
from gsv_models.config import SoVITSConfig
from gsv_models.dit import DiTConfig
from gsv_models.modules import WEIGHT_NORMED, WN, ResidualVectorQuantizer, sequence_mask
from gsv_models.ref_encoder import MelStyleEncoder, style_vector
from gsv_models.sovits import TextEncoder, stretched_lengths
from gsv_models.version import ModelVersion

UPSTREAM_ONLY_PREFIXES: Final = ("linear_mel.",)
"""Upstream state-dict keys this model does not have (the training-only mel head)."""
FEATURE_UPSAMPLE: Final[dict[ModelVersion, float]] = {
    ModelVersion.V3: 1.875,  # 50 Hz → 93.75 Hz: 24 kHz mels, hop 256
    ModelVersion.V4: 2.0,  # 50 Hz → 100 Hz: 32 kHz mels, hop 320
    ModelVersion.V5DEV: 2.0,  # v5 keeps v4's SoVITS side
    ModelVersion.V5TURBO: 2.0,
}
"""Nearest up-sampling of the 50 Hz content to the mel frame rate (``scale_factor`` upstream)."""
MASK_FRAMES_PER_CODE: Final[dict[ModelVersion, float]] = {
    ModelVersion.V3: 3.875,
    ModelVersion.V4: 4.0,
    ModelVersion.V5DEV: 4.0,
    ModelVersion.V5TURBO: 4.0,
}
"""Upstream's length for ``wns1``'s mask, per 25 Hz code. v3's 3.875 exceeds the 3.75 frames
that exist (all valid); v4's equals them, and at speed ≠ 1 the rounding of
``int(4T / speed) + 1`` against ``2 · (int(2T / speed) + 1)`` masks the last frame of some
lengths."""


@dataclass(frozen=True)
class SoVITSV3Config:
    """Shape of a v3/v4 SoVITS: the s2 hyperparameters plus the widths upstream hard-codes."""

    sovits: SoVITSConfig
    """The checkpoint's s2 config (version v3/v4); its text-encoder, reference-encoder and
    quantizer fields apply, its VITS decoder fields are unused."""
    feature_dim: int = 512
    """Width of ``bridge``/``wns1`` and of the DiT's content input (``inter_channels2``)."""
    wn_kernel: int = 5
    wn_layers: int = 8
    dit: DiTConfig = field(default_factory=DiTConfig)

    @property
    def version(self) -> ModelVersion:
        """v3 or v4."""
        return self.sovits.version

    @property
    def feature_upsample(self) -> float:
        """Mel frames per 50 Hz content frame (1.875 for v3, 2 for v4)."""
        return FEATURE_UPSAMPLE[self.version]


class FeatureEncoder(nn.Module):
    """1×1 conv → WaveNet stack conditioned on ``ge`` → 1×1 conv, masked.

    Mirrors upstream ``module/models.py::Encoder`` (the ``wns1`` of ``SynthesizerTrnV3``).
    """

    def __init__(self, channels: int, kernel_size: int, n_layers: int, gin_channels: int) -> None:
        super().__init__()
        self.pre = nn.Conv1d(channels, channels, 1)
        self.enc = WN(channels, kernel_size, 1, n_layers, gin_channels)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``x [B, C, T]``, ``mask [B, 1, T]``, ``g [B, gin, 1]`` → ``[B, C, T]``."""
        x = self.pre(x) * mask
        return self.proj(self.enc(x, mask, g)) * mask


class SoVITSV3Model(nn.Module):
    """SynthesizerTrnV3 for inference; state-dict keys are upstream's minus ``linear_mel.*``."""

    def __init__(self, cfg: SoVITSV3Config) -> None:
        super().__init__()
        if cfg.version not in FEATURE_UPSAMPLE:
            raise ValueError(f"SoVITSV3Model is v3/v4 only, got {cfg.version.value}")
        s = cfg.sovits
        self.cfg = cfg
        self.enc_p = TextEncoder(s)
        self.ref_enc = MelStyleEncoder(s.ref_channels, s.gin_channels)
        self.ssl_proj = nn.Conv1d(s.ssl_dim, s.ssl_dim, 2, stride=2)
        self.quantizer = ResidualVectorQuantizer(s.ssl_dim, s.codebook_size, n_q=1)
        self.bridge = nn.Sequential(
            nn.Conv1d(s.hidden_channels, cfg.feature_dim, 1), nn.LeakyReLU()
        )
        self.wns1 = FeatureEncoder(cfg.feature_dim, cfg.wn_kernel, cfg.wn_layers, s.gin_channels)
        self.cfm = CFM(cfg.dit)

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """HuBERT features ``[B, ssl_dim, T50]`` → semantic codes ``[B, T50 // 2]``."""
        return self.quantizer.encode(self.ssl_proj(ssl))

    @torch.no_grad()
    def reference_embedding(
        self, spec: torch.Tensor, spec_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Linear spectrogram ``[B, ≥704, T]`` → ``ge [B, gin, 1]`` (no speaker vector on v3/v4)."""
        if spec_lengths is None:
            spec_lengths = torch.full((spec.shape[0],), spec.shape[2], device=spec.device)
        return style_vector(self.ref_enc, spec, spec_lengths, self.cfg.sovits.ref_channels)

    def feature_lengths(self, code_lengths: torch.Tensor, speed: float = 1.0) -> torch.Tensor:
        """Valid content-feature (mel) frames per row for codes of ``code_lengths`` at ``speed``.

        The frames the up-sampling yields, cut to upstream's ``wns1`` mask length.
        """
        frames = torch.floor(
            stretched_lengths(2 * code_lengths, speed).double() * self.cfg.feature_upsample
        ).long()
        ratio = MASK_FRAMES_PER_CODE[self.cfg.version]
        masked = torch.floor(code_lengths.double() * ratio / speed).long()
        if speed != 1:
            masked = masked + 1
        return torch.minimum(frames, masked)

    @torch.no_grad()
    def decode_features(
        self,
        codes: torch.Tensor,
        code_lengths: torch.Tensor,
        phones: torch.Tensor,
        phone_lengths: torch.Tensor,
        ge: torch.Tensor,
        speed: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic codes + phones + reference vector → CFM content features (``decode_encp``).

        Args:
            codes: ``[B, T]`` int64 semantic codes (25 Hz), right-padded with any valid id.
            code_lengths: ``[B]`` valid codes per row.
            phones: ``[B, N]`` int64 phone ids (v2 symbols), right-padded.
            phone_lengths: ``[B]`` valid phones per row.
            ge: ``[B, gin, 1]`` from :meth:`reference_embedding`.
            speed: time stretch (>1 is faster), linear per row as upstream.

        Returns:
            ``(features [B, feature_dim, F], lengths [B])`` at the mel frame rate, zero past
            each row's length.
        """
        quantized = self.quantizer.decode(codes)  # (B, ssl_dim, T)
        quantized = F.interpolate(quantized, size=2 * quantized.shape[2], mode="nearest")
        x, _, _ = self.enc_p.content(quantized, 2 * code_lengths, phones, phone_lengths, ge, speed)
        fea = self.bridge(x)
        # scale_factor (not a size): torch then picks source frames exactly as upstream's call
        fea = F.interpolate(fea, scale_factor=self.cfg.feature_upsample, mode="nearest")
        lengths = self.feature_lengths(code_lengths, speed)
        mask = sequence_mask(lengths, fea.shape[2]).unsqueeze(1).to(fea.dtype)  # (B, 1, F)
        return self.wns1(fea, mask, ge), lengths

    def weight_norm_prefixes(self) -> list[str]:
        """Module names that upstream keeps under legacy weight norm (``wns1.enc`` convs)."""
        return [name for name, mod in self.named_modules() if isinstance(mod, WEIGHT_NORMED)]


def v3_weight_norm_prefixes(cfg: SoVITSV3Config) -> list[str]:
    """:meth:`SoVITSV3Model.weight_norm_prefixes` of ``cfg``, built on the meta device."""
    with torch.device("meta"):
        return SoVITSV3Model(cfg).weight_norm_prefixes()
