"""Reference spectrogram → global speaker/style vector ``ge`` (+ the v2Pro/v2ProPlus SV fusion)."""

from __future__ import annotations

import torch
from torch import nn

from gsv_models.modules import Conv1dGLU, LinearNorm, Mish, StyleAttention, sequence_mask

STYLE_HIDDEN = 128
"""MelStyleEncoder width; upstream hard-codes it (``SynthesizerTrn`` passes only in/out dims)."""


class MelStyleEncoder(nn.Module):
    """Spectral MLP → 2 gated convs → self-attention → linear → masked mean over time.

    Mirrors upstream ``GPT_SoVITS/module/modules.py::MelStyleEncoder`` (inference: dropout
    slots are ``Identity`` so the ``spectral.{0,3}`` key indices stay the same). Padding is
    masked before every conv so that each row of a padded batch gives its unpadded result.
    """

    def __init__(
        self,
        in_dim: int,
        style_vector_dim: int,
        hidden: int = STYLE_HIDDEN,
        kernel_size: int = 5,
        n_head: int = 2,
    ) -> None:
        super().__init__()
        self.spectral = nn.Sequential(
            LinearNorm(in_dim, hidden),
            Mish(),
            nn.Identity(),  # dropout in training
            LinearNorm(hidden, hidden),
            Mish(),
            nn.Identity(),
        )
        self.temporal = nn.ModuleList(
            [Conv1dGLU(hidden, hidden, kernel_size), Conv1dGLU(hidden, hidden, kernel_size)]
        )
        self.slf_attn = StyleAttention(n_head, hidden, hidden // n_head, hidden // n_head)
        self.fc = LinearNorm(hidden, style_vector_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Spectrogram ``[B, bins, T]`` with valid frames ``lengths`` [B] → ``[B, out, 1]``."""
        b, _, t = x.shape
        valid = sequence_mask(lengths, t)  # (B, T)
        mask = valid.unsqueeze(1).to(x.dtype)  # (B, 1, T)
        x = self.spectral((x * mask).transpose(1, 2))  # (B, T, hidden)
        x = x.transpose(1, 2)  # (B, hidden, T)
        for glu in self.temporal:
            x = glu(x, mask)
        x = x.transpose(1, 2).masked_fill(~valid.unsqueeze(-1), 0)  # (B, T, hidden)
        x = self.fc(self.slf_attn(x, key_padding=~valid))  # (B, T, out)
        # mean over valid frames, accumulated in fp32 as x/len summed (upstream order)
        dtype = x.dtype
        x = x.masked_fill(~valid.unsqueeze(-1), 0).float()
        x = x / lengths.view(b, 1, 1).to(x.dtype)
        return x.sum(dim=1).to(dtype).unsqueeze(-1)


def style_vector(
    ref_enc: MelStyleEncoder, spec: torch.Tensor, spec_lengths: torch.Tensor, n_bins: int
) -> torch.Tensor:
    """``ge`` of v1/v2 (and the pre-fusion ``ge`` of v2Pro/ProPlus): ``[B, gin, 1]``.

    Upstream (``module/models.py::SynthesizerTrn.decode``) reads all 1025 bins for v1 and the
    first 704 (≈ 0–11 kHz) for every later version; ``n_bins`` selects that.
    """
    if spec.shape[1] < n_bins:
        raise ValueError(f"reference spectrogram has {spec.shape[1]} bins, need {n_bins}")
    return ref_enc(spec[:, :n_bins], spec_lengths)


def fuse_speaker_vector(
    ge: torch.Tensor, sv: torch.Tensor, sv_emb: nn.Linear, prelu: nn.PReLU
) -> torch.Tensor:
    """v2Pro/v2ProPlus: ``PReLU(ge + sv_emb(sv))``, ``sv`` [B, sv_dim] → ``[B, gin, 1]``.

    The 1024-d result conditions the flow and the decoder; MRTE gets ``ge_to512`` of it,
    computed after any averaging over references (upstream ``module/models.py``).
    """
    return prelu(ge + sv_emb(sv).unsqueeze(-1))


def mean_reference(ge: torch.Tensor) -> torch.Tensor:
    """Average the ``ge`` of several references of one voice: ``[R, gin, 1]`` → ``[1, gin, 1]``.

    Upstream (``TTS.py`` aux references) computes ``ge`` per reference (after the SV fusion on
    Pro versions) and takes the plain mean.
    """
    return ge.mean(dim=0, keepdim=True)
