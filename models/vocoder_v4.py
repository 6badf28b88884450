"""v4 vocoder: 100-bin log-mel at 100 frames/s → 48 kHz waveform (480 samples per frame).

Upstream builds the SoVITS decoder's HiFiGAN ``Generator`` with fixed arguments in
``GPT_SoVITS/TTS_infer_pack/TTS.py::init_vocoder`` (no conditioning, ``conv_post`` with a bias),
removes its weight norm and then loads ``gsv-v4-pretrained/vocoder.pth``: a plain state dict
of fused weights, so it maps onto :class:`gsv_models.modules.Generator` key for key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch

from gsv_models.checkpoint import _to_fp32, check_weights_fit, read_payload
from gsv_models.modules import Generator
from gsv_runtime.errors import CheckpointError

SAMPLE_RATE: Final = 48000


@dataclass(frozen=True)
class V4VocoderConfig:
    """Generator arguments; upstream's are the defaults. Files store no config."""

    mel_dim: int = 100
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (10, 6, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (20, 12, 4, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    @property
    def hop(self) -> int:
        """Waveform samples per mel frame."""
        hop = 1
        for r in self.upsample_rates:
            hop *= r
        return hop


def build_v4_vocoder(cfg: V4VocoderConfig) -> Generator:
    """The eval-mode generator (weights uninitialised)."""
    return Generator(
        cfg.mel_dim,
        "1",
        cfg.resblock_kernel_sizes,
        cfg.resblock_dilation_sizes,
        cfg.upsample_rates,
        cfg.upsample_initial_channel,
        cfg.upsample_kernel_sizes,
        gin_channels=0,
        post_bias=True,
    ).eval()


def load_v4_vocoder(path: str | Path) -> Generator:
    """Load upstream's ``vocoder.pth`` (fp32 or fp16) through the safe checkpoint reader.

    The mel width and channel count are read off ``conv_pre`` (shrunk test vocoders change
    them); every other argument is upstream's, and every key and shape must match.

    Raises:
        CheckpointError: unreadable or unsafe file, or weights that do not fit the generator.
    """
    path = Path(path)
    payload, _ = read_payload(path)
    pre = payload.get("conv_pre.weight")
    if not isinstance(pre, torch.Tensor) or pre.dim() != 3:
        raise CheckpointError(f"{path}: not a v4 vocoder (no 3-d conv_pre.weight)")
    state = _to_fp32(payload, path)
    cfg = V4VocoderConfig(mel_dim=pre.shape[1], upsample_initial_channel=pre.shape[0])
    with torch.device("meta"):
        expected = build_v4_vocoder(cfg).state_dict()
    check_weights_fit(path, "v4 vocoder", expected, state)
    model = build_v4_vocoder(cfg)
    model.load_state_dict(state, strict=True)
    return model
