"""Diffusion transformer (DiT) that predicts the flow-matching velocity of v3/v4 SoVITS mels.

Mirrors upstream's vendored F5-TTS backbone, ``GPT_SoVITS/f5_tts/model/backbones/dit.py`` and
``GPT_SoVITS/f5_tts/model/modules.py``: state-dict keys are upstream's (``time_embed``,
``d_embed``, ``text_embed``, ``input_embed``, ``rotary_embed``, ``transformer_blocks``,
``norm_out``, ``proj_out``). Inference only (no dropout). Sequences are ``[B, T, C]`` inside the
network and ``[B, C, T]`` at its boundary, as upstream's ``CFM`` hands them over.

Rotary quirk kept on purpose: upstream rotates q and k while they are still ``[B, T, heads ·
dim_head]`` and x-transformers (>= 1.30.1, checked against 2.31) rotates the *interleaved*
channel pairs of the first ``dim_head`` channels only, so head 0 alone is position-encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from gsv_models.modules import sequence_mask

NORM_EPS: Final = 1e-6
"""LayerNorm epsilon of every DiT and ConvNeXt norm, and GRN's denominator floor."""
TIME_SCALE: Final = 1000.0
"""Times and step sizes in [0, 1] are scaled to [0, 1000] before the sinusoid."""
TEXT_MAX_POSITIONS: Final = 4096
"""Rows of the fixed sinusoid added to the content features; later frames reuse the last row."""
ROPE_BASE: Final = 10000.0
CONV_POS_KERNEL: Final = 31
CONV_POS_GROUPS: Final = 16
CONVNEXT_KERNEL: Final = 7


@dataclass(frozen=True)
class DiTConfig:
    """DiT shape; upstream hard-codes it in ``SynthesizerTrnV3.__init__`` (``module/models.py``)."""

    dim: int = 1024
    """Transformer width."""
    depth: int = 22
    heads: int = 16
    dim_head: int = 64
    """Also the number of rotated channels (upstream ``RotaryEmbedding(dim_head)``)."""
    ff_mult: int = 2
    mel_dim: int = 100
    text_dim: int = 512
    """Width of the content features ``mu`` (the SoVITS side's bridge width)."""
    conv_layers: int = 4
    """ConvNeXt-V2 blocks over the content features."""
    conv_mult: int = 2
    freq_dim: int = 256
    """Sinusoid width of the time and step embeddings."""
    step_embedding: bool = True
    """Add an embedding of the Euler step size ``d_embed(1/steps)`` to the time embedding (v3/v4;
    upstream's later v5 DiT has none)."""


def sinusoid(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B]`` times in [0, 1] → ``[B, dim]`` as ``[sin | cos]`` (SinusPositionEmbedding)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=x.device).float() * -(math.log(10000) / (half - 1)))
    angles = TIME_SCALE * x.unsqueeze(1) * freqs.unsqueeze(0)  # (B, half)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoid → Linear → SiLU → Linear (upstream ``modules.py::TimestepEmbedding``)."""

    def __init__(self, dim: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``[B]`` → ``[B, dim]``."""
        return self.time_mlp(sinusoid(t, self.freq_dim).to(t.dtype))


def text_position_table(dim: int, positions: int) -> torch.Tensor:
    """``[positions, dim]`` as ``[cos | sin]`` (upstream ``modules.py::precompute_freqs_cis``)."""
    freqs = 1.0 / (ROPE_BASE ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    angles = torch.outer(torch.arange(positions), freqs).float()  # (P, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class GRN(nn.Module):
    """Global response norm; the L2 norm runs over time, so a chunk's length changes its output."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=1, keepdim=True)  # (B, 1, C)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + NORM_EPS)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise conv → LN → Linear → GELU (exact) → GRN → Linear, residual."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, CONVNEXT_KERNEL, padding=CONVNEXT_KERNEL // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` → same."""
        y = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y


class TextEmbedding(nn.Module):
    """Content features + fixed sinusoid → ConvNeXt-V2 blocks (upstream ``dit.py::TextEmbedding``).

    "Text" is upstream's name; the input is the SoVITS content feature ``mu``, one per frame.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.register_buffer(
            "positions", text_position_table(cfg.text_dim, TEXT_MAX_POSITIONS), persistent=False
        )
        self.text_blocks = nn.Sequential(
            *[
                ConvNeXtV2Block(cfg.text_dim, cfg.text_dim * cfg.conv_mult)
                for _ in range(cfg.conv_layers)
            ]
        )

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        """``[B, T, text_dim]`` → same."""
        t = mu.shape[1]
        index = torch.arange(t, device=mu.device).clamp(max=TEXT_MAX_POSITIONS - 1)
        return self.text_blocks(mu + self.positions[index])


class ConvPositionEmbedding(nn.Module):
    """Two grouped convs, each followed by Mish (upstream ``modules.py``; key ``conv1d.{0,2}``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        pad = CONV_POS_KERNEL // 2
        self.conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, CONV_POS_KERNEL, groups=CONV_POS_GROUPS, padding=pad),
            nn.Mish(),
            nn.Conv1d(dim, dim, CONV_POS_KERNEL, groups=CONV_POS_GROUPS, padding=pad),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` → same (no mask, as upstream's InputEmbedding calls it)."""
        return self.conv1d(x.transpose(1, 2)).transpose(1, 2)


class InputEmbedding(nn.Module):
    """Linear over ``[noisy mel | prompt mel | content]`` plus a conv position embedding."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * cfg.mel_dim + cfg.text_dim, cfg.dim)
        self.conv_pos_embed = ConvPositionEmbedding(cfg.dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``[B, T, mel]``, ``[B, T, mel]``, ``[B, T, text_dim]`` → ``[B, T, dim]``."""
        x = self.proj(torch.cat((x, cond, text), dim=-1))
        return self.conv_pos_embed(x) + x


class Rope(NamedTuple):
    """Rotary tables for :func:`apply_rotary`, built once per call.

    The pair rotation ``(x0, x1) → (−x1, x0)`` is a channel gather (``swap``) times a signed
    sine: a constant-index ``Gather`` in the exported graph instead of a reshape/stack chain
    whose shapes are recomputed at every layer.
    """

    cos: torch.Tensor  # (T, width)
    sin: torch.Tensor  # (T, width): −sin on even channels, +sin on odd ones
    swap: torch.Tensor  # (width,): channel indices 1, 0, 3, 2, …


class RotaryEmbedding(nn.Module):
    """Rotary tables of x-transformers; ``inv_freq`` is a stored buffer, as upstream's is.

    Upstream files keep ``inv_freq`` in fp16 like every other tensor and upstream loads it over
    its own, so the angles come from the stored (rounded) frequencies.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", default_inv_freq(dim))
        pairs = torch.arange(dim).view(-1, 2)
        self.register_buffer("swap", pairs.flip(-1).flatten(), persistent=False)
        self.register_buffer("sign", torch.tensor([-1.0, 1.0]).repeat(dim // 2), persistent=False)

    def forward(self, t: int) -> Rope:
        """Tables for ``t`` positions; each frequency repeated for a channel pair."""
        pos = torch.arange(t, device=self.inv_freq.device).type_as(self.inv_freq)
        freqs = torch.einsum("i,j->ij", pos, self.inv_freq)  # (T, dim/2)
        freqs = torch.stack((freqs, freqs), dim=-1).flatten(-2)  # (T, dim) as f0 f0 f1 f1 …
        return Rope(freqs.cos(), freqs.sin() * self.sign, self.swap)


def default_inv_freq(dim: int) -> torch.Tensor:
    """``1 / base^(2i/dim)``, the frequencies x-transformers' RotaryEmbedding registers."""
    return 1.0 / (ROPE_BASE ** (torch.arange(0, dim, 2).float() / dim))


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate interleaved pairs ``(x0, x1) → (x0·c − x1·s, x1·c + x0·s)`` of the first channels.

    ``x`` is ``[B, T, C]`` with ``C`` ≥ the table width; the remaining channels pass unchanged.
    """
    r = rope.swap.shape[0]
    head, tail = x[..., :r], x[..., r:]
    return torch.cat((head * rope.cos + head[..., rope.swap] * rope.sin, tail), dim=-1)


class KeyMask(NamedTuple):
    """A key-padding mask in the two forms attention uses, built once per call.

    A boolean SDPA mask exports as ``Where`` + ``IsNaN`` guards around every softmax, which
    stop OpenVINO from fusing the attention into its SDPA kernel; an additive ``-inf`` bias
    gives the same probabilities (no row is fully masked while a row has a valid frame).
    """

    bias: torch.Tensor  # (B, 1, 1, T): 0 for valid keys, -inf for padding
    keep: torch.Tensor  # (B, T, 1): 1 for valid frames, 0 for padding

    @classmethod
    def from_valid(cls, valid: torch.Tensor, dtype: torch.dtype) -> KeyMask:
        """From ``valid [B, T]`` bool (True = a real frame)."""
        bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
        bias = bias.masked_fill(~valid, float("-inf"))[:, None, None, :]
        return cls(bias, valid.unsqueeze(-1).to(dtype))


class Attention(nn.Module):
    """Multi-head self-attention with key padding mask; keys ``to_q/k/v``, ``to_out.0``."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # upstream's [1] is a dropout

    def forward(self, x: torch.Tensor, mask: KeyMask, rope: Rope) -> torch.Tensor:
        """``x [B, T, dim]`` → ``[B, T, dim]``, zero at padded frames."""
        b, t, _ = x.shape
        q = apply_rotary(self.to_q(x), rope)  # before the head split: only head 0 rotates
        k = apply_rotary(self.to_k(x), rope)
        v = self.to_v(x)
        q, k, v = (y.view(b, t, self.heads, -1).transpose(1, 2) for y in (q, k, v))  # (B, H, T, dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bias)
        y = self.to_out[0](y.transpose(1, 2).reshape(b, t, -1))  # (B, T, dim)
        return y * mask.keep


class AdaLayerNormZero(nn.Module):
    """Six modulations from the time vector: (shift, scale, gate) for attention, then for FF."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[B, dim]`` → six ``[B, 1, dim]`` tensors."""
        return tuple(c.unsqueeze(1) for c in self.linear(F.silu(t)).chunk(6, dim=1))


class FeedForward(nn.Module):
    """Linear → GELU (tanh) → Linear; keys ``ff.0.0`` and ``ff.2`` as upstream nests them."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        inner = dim * mult
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner), nn.GELU(approximate="tanh")),
            nn.Identity(),  # dropout
            nn.Linear(inner, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    """AdaLN-Zero pre-norm attention and feed-forward, each with a gated residual."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.attn_norm = AdaLayerNormZero(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dim_head)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        mask: KeyMask,
        rope: Rope,
    ) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.attn_norm(t)
        norm = F.layer_norm(x, x.shape[-1:], eps=NORM_EPS) * (1 + scale_a) + shift_a
        x = x + gate_a * self.attn(norm, mask, rope)
        norm = F.layer_norm(x, x.shape[-1:], eps=NORM_EPS) * (1 + scale_f) + shift_f
        return x + gate_f * self.ff(norm)


class AdaLayerNormFinal(nn.Module):
    """Final modulation; upstream chunks it as (scale, shift), the reverse of the blocks."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(t)).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, dim) each
        return F.layer_norm(x, x.shape[-1:], eps=NORM_EPS) * (1 + scale) + shift


class DiT(nn.Module):
    """Velocity estimator: noisy mel, prompt mel, content features and time → velocity.

    The per-chunk parts (:meth:`embed_text`, :meth:`embed_step`) are separate so that a sampler
    computes them once per chunk, as upstream's conditioner cache does.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimestepEmbedding(cfg.dim, cfg.freq_dim)
        if cfg.step_embedding:
            self.d_embed = TimestepEmbedding(cfg.dim, cfg.freq_dim)
        self.text_embed = TextEmbedding(cfg)
        self.input_embed = InputEmbedding(cfg)
        self.rotary_embed = RotaryEmbedding(cfg.dim_head)
        self.transformer_blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = AdaLayerNormFinal(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def embed_text(self, mu: torch.Tensor) -> torch.Tensor:
        """Content features ``[B, text_dim, T]`` → ``[B, T, text_dim]``; fixed for a chunk."""
        return self.text_embed(mu.transpose(1, 2))

    def embed_step(self, dt: torch.Tensor) -> torch.Tensor | None:
        """Step size ``[B]`` → ``[B, dim]`` (None when the config has no step embedding)."""
        return self.d_embed(dt) if self.cfg.step_embedding else None

    def velocity(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        time: torch.Tensor,
        step: torch.Tensor | None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One estimator call.

        Args:
            x: noisy mel ``[B, mel, T]``.
            cond: prompt mel ``[B, mel, T]``, zero past the prompt.
            text: :meth:`embed_text` of the content features.
            time: flow time ``[B]`` in [0, 1).
            step: :meth:`embed_step` of the step size.
            lengths: valid frames per row (keys past them are masked); None means all.

        Returns:
            Velocity ``[B, mel, T]``.
        """
        b, _, n = x.shape
        if lengths is None:
            lengths = torch.full((b,), n, device=x.device)
        t = self.time_embed(time)
        if step is not None:
            t = t + step
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), text)  # (B, T, dim)
        rope = self.rotary_embed(n)
        mask = KeyMask.from_valid(sequence_mask(lengths, n), h.dtype)
        for block in self.transformer_blocks:
            h = block(h, t, mask, rope)
        return self.proj_out(self.norm_out(h, t)).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        mu: torch.Tensor,
        time: torch.Tensor,
        dt: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Uncached estimator call: ``mu [B, text_dim, T]`` and step size ``dt [B]`` as inputs."""
        return self.velocity(x, cond, self.embed_text(mu), time, self.embed_step(dt), lengths)
