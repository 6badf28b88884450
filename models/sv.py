"""ERes2NetV2 speaker encoder of v2Pro/v2ProPlus: Kaldi fbank frames → one time-averaged vector.

Mirrors the network of upstream ``GPT_SoVITS/eres2net/ERes2NetV2.py`` (with the fusion block of
``eres2net/fusion.py``) as instantiated by ``GPT_SoVITS/sv.py``: ``baseWidth=24, scale=4,
expansion=4`` and the class defaults ``m_channels=64, num_blocks=[3, 4, 6, 3], feat_dim=80``.
GPT-SoVITS only calls ``forward3``, which stops before the statistics pooling: the output of the
last fusion block, [B, 2048, 10, T'], is flattened over channels × frequency and averaged over
time, giving a 20480-d vector (:meth:`ERes2NetV2.embed`). The pooled 192-d head (``seg_1``) is
kept only so that the pretrained file loads with ``strict=True``.

The module names below are the upstream attribute names, so state-dict keys match one to one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIP_MAX: Final = 20.0
"""Upper bound of the clipped ReLU used inside the residual blocks (a Hardtanh(0, 20) upstream)."""
FUSE_REDUCTION: Final = 4
"""Channel reduction ``r`` of every attentional fusion block."""


def _clipped_relu(x: Tensor) -> Tensor:
    return F.hardtanh(x, 0.0, CLIP_MAX)


def _freq_after_strides(feat_dim: int, n_halvings: int = 3) -> int:
    """Frequency rows left after ``n_halvings`` stride-2 stages (kernel 1 or 3, same padding)."""
    f = feat_dim
    for _ in range(n_halvings):
        f = (f - 1) // 2 + 1
    return f


class _BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics.

    The encoder is an inference-only reference, so it behaves as in ``eval()`` whatever the module
    mode; parameters and buffers (including ``num_batches_tracked``) are those of nn.BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class _FusionAFF(nn.Module):
    """Attentional feature fusion: ``x·a + y·(2 − a)`` with ``a = 1 + tanh(att([x; y]))``.

    Upstream: ``GPT_SoVITS/eres2net/fusion.py`` (class AFF). ``local_att`` indices 0..4 are
    conv, BN, SiLU, conv, BN, as in the upstream Sequential.
    """

    def __init__(self, channels: int, r: int = FUSE_REDUCTION) -> None:
        super().__init__()
        inner = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, kernel_size=1),
            _BatchNorm2d(inner),
            nn.SiLU(),
            nn.Conv2d(inner, channels, kernel_size=1),
            _BatchNorm2d(channels),
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        a = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))  # (B, C, F, T) in (0, 2)
        return x * a + y * (2.0 - a)


class _Res2Block(nn.Module):
    """Bottleneck Res2Net block: 1×1 conv, ``scale`` chained 3×3 convs on channel groups, 1×1 conv.

    Group ``i > 0`` receives the previous group's output combined with its own input slice, by
    addition (``fuse=False``, upstream BasicBlockERes2NetV2) or by an AFF block (``fuse=True``,
    upstream BasicBlockERes2NetV2AFF).
    """

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        *,
        base_width: int,
        scale: int,
        expansion: int,
        fuse: bool,
    ) -> None:
        super().__init__()
        width = planes * base_width // 64  # exact floor of planes · baseWidth / 64
        out_ch = planes * expansion
        self.width = width
        self.conv1 = nn.Conv2d(in_ch, width * scale, kernel_size=1, stride=stride, bias=False)
        self.bn1 = _BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False) for _ in range(scale)
        )
        self.bns = nn.ModuleList(_BatchNorm2d(width) for _ in range(scale))
        if fuse:
            self.fuse_models = nn.ModuleList(_FusionAFF(width) for _ in range(scale - 1))
        self.fuse = fuse
        self.conv3 = nn.Conv2d(width * scale, out_ch, kernel_size=1, bias=False)
        self.bn3 = _BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                _BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        h = _clipped_relu(self.bn1(self.conv1(x)))  # (B, width·scale, F, T)
        groups = torch.split(h, self.width, dim=1)  # scale × (B, width, F, T)
        outs: list[Tensor] = []
        sp = groups[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            if i > 0:
                sp = self.fuse_models[i - 1](sp, groups[i]) if self.fuse else sp + groups[i]
            sp = _clipped_relu(bn(conv(sp)))
            outs.append(sp)
        h = self.bn3(self.conv3(torch.cat(outs, dim=1)))  # (B, planes·expansion, F, T)
        return _clipped_relu(h + self.shortcut(x))


class ERes2NetV2(nn.Module):
    """ERes2NetV2 speaker encoder; :meth:`embed` is upstream's ``forward3``.

    Args:
        m_channels: Stem channels; stage ``k`` (0-based) has ``m_channels · 2**k`` planes.
        num_blocks: Residual blocks per stage (4 stages; the last two use AFF blocks).
        feat_dim: Mel bins of the input fbank.
        embedding_size: Width of the unused pooled head ``seg_1`` (kept for key compatibility).
        base_width: Res2Net ``baseWidth``; group width is ``planes · base_width // 64``.
        scale: Channel groups per block.
        expansion: Block output channels are ``planes · expansion``.
    """

    def __init__(
        self,
        *,
        m_channels: int = 64,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        feat_dim: int = 80,
        embedding_size: int = 192,
        base_width: int = 24,
        scale: int = 4,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4 or min(num_blocks) < 1:
            raise ValueError(f"num_blocks must be 4 positive counts, got {list(num_blocks)}")
        self.feat_dim = feat_dim
        self._freq_out = _freq_after_strides(feat_dim)
        self._out_ch = m_channels * 8 * expansion
        block = {"base_width": base_width, "scale": scale, "expansion": expansion}

        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = _BatchNorm2d(m_channels)
        in_ch = m_channels
        stages = []
        for k, n in enumerate(num_blocks):
            planes = m_channels * 2**k
            blocks = []
            for j in range(n):
                stride = 2 if (k > 0 and j == 0) else 1
                blocks.append(_Res2Block(in_ch, planes, stride, fuse=k >= 2, **block))
                in_ch = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # stage-3 output brought to stage-4 resolution, then fused with it ("bottom-up fusion")
        self.layer3_ds = nn.Conv2d(
            m_channels * 4 * expansion, self._out_ch, kernel_size=3, stride=2, padding=1, bias=False
        )
        self.fuse34 = _FusionAFF(self._out_ch)
        # unused by embed(): upstream's mean+std pooling head, present in the pretrained file
        stats_dim = (feat_dim // 8) * m_channels * 8 * expansion
        self.seg_1 = nn.Linear(2 * stats_dim, embedding_size)

    @staticmethod
    def kwargs_from_state_dict(state: Mapping[str, Tensor]) -> dict[str, Any]:
        """Constructor arguments that reproduce the shapes of a state dict (full or shrunk)."""
        m = state["conv1.weight"].shape[0]
        expansion = state["layer1.0.conv3.weight"].shape[0] // m
        num_blocks = tuple(
            len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)
        )
        scale = len({k.split(".")[3] for k in state if k.startswith("layer1.0.convs.")})
        stats_dim = state["seg_1.weight"].shape[1] // 2
        return {
            "m_channels": m,
            "num_blocks": num_blocks,
            "feat_dim": 8 * (stats_dim // (m * 8 * expansion)),
            "embedding_size": state["seg_1.weight"].shape[0],
            "base_width": state["layer1.0.convs.0.weight"].shape[0] * 64 // m,
            "scale": scale,
            "expansion": expansion,
        }

    @property
    def embed_dim(self) -> int:
        """Length of the vector returned by :meth:`embed` (20480 for the pretrained model)."""
        return self._out_ch * self._freq_out

    def embed(self, feats: Tensor) -> Tensor:
        """Speaker vector of each utterance, as upstream's ``ERes2NetV2.forward3``.

        Args:
            feats: Log-mel fbank frames [B, T, feat_dim] (see ``gsv_models.fbank.kaldi_fbank``).

        Returns:
            [B, embed_dim]: the last fusion map flattened over (channel, frequency), time-averaged.

        Raises:
            ValueError: ``feats`` is not [B, T, feat_dim].
        """
        if feats.dim() != 3 or feats.shape[-1] != self.feat_dim:
            raise ValueError(f"feats must be [B, T, {self.feat_dim}], got {list(feats.shape)}")
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        h = F.relu(self.bn1(self.conv1(x)))  # (B, m, F, T); the stem uses a plain ReLU
        h = self.layer2(self.layer1(h))  # (B, 2m·e, F/2, T/2)
        h3 = self.layer3(h)  # (B, 4m·e, F/4, T/4)
        h4 = self.layer4(h3)  # (B, 8m·e, F/8, T/8)
        fused = self.fuse34(h4, self.layer3_ds(h3))  # (B, 8m·e, F/8, T/8)
        return fused.flatten(1, 2).mean(dim=-1)  # (B, 8m·e·F/8)

    def forward(self, feats: Tensor) -> Tensor:
        """Same as :meth:`embed` (so the module can be traced or exported directly)."""
        return self.embed(feats)
