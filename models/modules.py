"""VITS building blocks of the SoVITS synthesizer (inference subset), batch-first with masks.

Every class names the upstream GPT-SoVITS file whose behaviour (and state-dict layout) it
reproduces. Conventions: sequences are ``[B, C, T]``; ``mask`` tensors are ``[B, 1, T]`` floats
(1 = valid, 0 = padding) in the activations' dtype; rows are padded on the right.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LRELU_SLOPE = 0.1
"""Leaky-ReLU slope inside the HiFiGAN generator (upstream ``module/modules.py``)."""


def sequence_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean ``[B, max_len]`` mask, True where ``t < lengths[b]``."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


# --------------------------------------------------------------------------------------------
# weight norm


class WNConv1d(nn.Conv1d):
    """A Conv1d that upstream wraps in legacy ``weight_norm``; here it holds the folded weight."""


class WNConvTranspose1d(nn.ConvTranspose1d):
    """A ConvTranspose1d that upstream weight-norms (dim 0 = input channels); folded here."""


WEIGHT_NORMED = (WNConv1d, WNConvTranspose1d)


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The weight that torch's legacy ``weight_norm`` hook computes from ``weight_g``/``weight_v``.

    Calls the same ATen kernel as the hook (``w = v · g / ‖v‖``, the norm over all dims except
    ``dim``), so the result is bit-identical to what upstream uses in its forward pass. 16-bit
    inputs are promoted to float32 first, as upstream loads fp16 files into an fp32 model.
    """
    dtype = torch.promote_types(torch.promote_types(g.dtype, v.dtype), torch.float32)
    return torch._weight_norm(v.to(dtype), g.to(dtype), dim)


def unfold_weight_norm(w: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight_g, weight_v)`` as torch's legacy ``weight_norm`` registers them for ``w``."""
    return torch.norm_except_dim(w, 2, dim), w.clone()


# --------------------------------------------------------------------------------------------
# transformer encoder (module/attentions.py, module/modules.py::LayerNorm)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of ``[B, C, T]`` (upstream ``module/modules.py::LayerNorm``)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels  # a Python int: a static normalized_shape for ONNX export
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, -1)  # (B, T, C)
        x = F.layer_norm(x, (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class RelativeMultiHeadAttention(nn.Module):
    """Multi-head attention with 1×1 conv projections, optionally with relative positions.

    Mirrors upstream ``module/attentions.py::MultiHeadAttention``: with ``window_size`` set, one
    table of ``2w+1`` key and value embeddings is shared by all heads; relative logits are moved
    to absolute positions with the pad-and-reshape ("skew") trick of Glow-TTS/VITS. Blocked
    scores are set to -1e4 (not -inf), so fully padded query rows stay finite.
    """

    def __init__(
        self, channels: int, out_channels: int, n_heads: int, window_size: int | None = None
    ) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        if window_size is not None:
            shape = (1, 2 * window_size + 1, self.k_channels)
            self.emb_rel_k = nn.Parameter(torch.zeros(shape))
            self.emb_rel_v = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Queries from ``x`` [B, C, Tq], keys/values from ``c`` [B, C, Tk]; mask [B, 1, Tq, Tk]."""
        b, d, t_q = x.shape
        t_k = c.shape[2]
        h, kc = self.n_heads, self.k_channels
        q = self.conv_q(x).view(b, h, kc, t_q).transpose(2, 3)  # (B, H, Tq, kc)
        k = self.conv_k(c).view(b, h, kc, t_k).transpose(2, 3)  # (B, H, Tk, kc)
        v = self.conv_v(c).view(b, h, kc, t_k).transpose(2, 3)  # (B, H, Tk, kc)
        q = q / math.sqrt(kc)
        scores = torch.matmul(q, k.transpose(-2, -1))  # (B, H, Tq, Tk)
        if self.window_size is not None:
            rel_k = self._relative_embeddings(self.emb_rel_k, t_k)  # (1, 2T-1, kc)
            rel_logits = torch.matmul(q, rel_k.unsqueeze(0).transpose(-2, -1))  # (B, H, T, 2T-1)
            scores = scores + _relative_to_absolute(rel_logits)
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p_attn = F.softmax(scores, dim=-1)
        out = torch.matmul(p_attn, v)  # (B, H, Tq, kc)
        if self.window_size is not None:
            rel_v = self._relative_embeddings(self.emb_rel_v, t_k)  # (1, 2T-1, kc)
            out = out + torch.matmul(_absolute_to_relative(p_attn), rel_v.unsqueeze(0))
        out = out.transpose(2, 3).contiguous().view(b, d, t_q)
        return self.conv_o(out)

    def _relative_embeddings(self, table: torch.Tensor, length: int) -> torch.Tensor:
        """Embeddings for offsets ``-(L-1) … L-1``: zeros beyond the window, ``[1, 2L-1, kc]``.

        Padding by ``L-1`` on both sides (instead of upstream's ``max(L-w-1, 0)``) gives the same
        slice for every length without a Python branch on the sequence length.
        """
        w = self.window_size
        padded = F.pad(table, (0, 0, length - 1, length - 1))
        return padded[:, w : w + 2 * length - 1]


def _relative_to_absolute(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, 2L-1]`` logits indexed by offset → ``[B, H, L, L]`` indexed by key position."""
    b, h, length, _ = x.shape
    x = F.pad(x, (0, 1))  # (B, H, L, 2L): one spare column per row
    x = x.reshape(b, h, length * 2 * length)
    x = F.pad(x, (0, length - 1))  # room for the final (L+1)-th row
    x = x.view(b, h, length + 1, 2 * length - 1)  # each row now starts one offset later
    return x[:, :, :length, length - 1 :]


def _absolute_to_relative(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, L]`` weights indexed by key position → ``[B, H, L, 2L-1]`` indexed by offset."""
    b, h, length, _ = x.shape
    x = F.pad(x, (0, length - 1))  # (B, H, L, 2L-1)
    x = x.reshape(b, h, length * (2 * length - 1))
    x = F.pad(x, (length, 0))  # shift so that row i starts at offset -(i)
    x = x.view(b, h, length, 2 * length)
    return x[:, :, :, 1:]


class FFN(nn.Module):
    """Conv(k) → ReLU → Conv(k), "same" padding, masked (upstream ``module/attentions.py::FFN``)."""

    def __init__(
        self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(F.pad(x * mask, self.pad)))
        x = self.conv_2(F.pad(x * mask, self.pad))
        return x * mask


class RelPosEncoder(nn.Module):
    """Post-LN transformer with relative attention (window 4) and conv FFN.

    Mirrors upstream ``module/attentions.py::Encoder``. Padded key columns get -1e4, so valid
    positions never read padding; padded positions hold finite garbage that every consumer masks.
    """

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int = 1,
        window_size: int = 4,
    ) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(
                RelativeMultiHeadAttention(
                    hidden_channels, hidden_channels, n_heads, window_size=window_size
                )
            )
            self.norm_layers_1.append(ChannelLayerNorm(hidden_channels))
            self.ffn_layers.append(
                FFN(hidden_channels, hidden_channels, filter_channels, kernel_size)
            )
            self.norm_layers_2.append(ChannelLayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)  # (B, 1, T, T)
        x = x * mask
        layers = zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        )
        for attn, norm_1, ffn, norm_2 in layers:
            x = norm_1(x + attn(x, x, attn_mask))
            x = norm_2(x + ffn(x, mask))
        return x * mask


class MRTE(nn.Module):
    """Multi-reference timbre encoder: SSL frames attend to phones, plus the reference vector.

    Mirrors upstream ``module/mrte_model.py::MRTE`` (4 heads, no relative positions):
    ``c_post((attn(c_pre(ssl), text_pre(text)) + c_pre(ssl) + ge) · mask)``.
    """

    def __init__(self, content_channels: int, hidden: int, n_heads: int = 4) -> None:
        super().__init__()
        self.cross_attention = RelativeMultiHeadAttention(hidden, hidden, n_heads)
        self.c_pre = nn.Conv1d(content_channels, hidden, 1)
        self.text_pre = nn.Conv1d(content_channels, hidden, 1)
        self.c_post = nn.Conv1d(hidden, content_channels, 1)

    def forward(
        self,
        ssl: torch.Tensor,
        ssl_mask: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        ge: torch.Tensor,
    ) -> torch.Tensor:
        attn_mask = text_mask.unsqueeze(2) * ssl_mask.unsqueeze(-1)  # (B, 1, Tssl, Ttext)
        c = self.c_pre(ssl * ssl_mask)
        t = self.text_pre(text * text_mask)
        x = self.cross_attention(c * ssl_mask, t * text_mask, attn_mask) + c + ge
        return self.c_post(x * ssl_mask)


# --------------------------------------------------------------------------------------------
# flow (module/modules.py::WN, ResidualCouplingLayer, Flip; module/models.py)


class WN(nn.Module):
    """Non-causal WaveNet stack with gated tanh·sigmoid units and global conditioning.

    Mirrors upstream ``module/modules.py::WN``; all its convs are weight-normed upstream.
    """

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WN kernel_size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        if gin_channels:
            self.cond_layer = WNConv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(
                WNConv1d(
                    hidden_channels,
                    2 * hidden_channels,
                    kernel_size,
                    dilation=dilation,
                    padding=padding,
                )
            )
            # the last layer has no residual half
            res_skip = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(WNConv1d(hidden_channels, res_skip, 1))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        hc = self.hidden_channels
        output = torch.zeros_like(x)
        cond = self.cond_layer(g) if g is not None else None  # (B, 2·hc·n_layers, 1)
        for i, (in_layer, res_skip_layer) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            x_in = in_layer(x)
            if cond is not None:
                x_in = x_in + cond[:, i * 2 * hc : (i + 1) * 2 * hc, :]
            acts = torch.tanh(x_in[:, :hc]) * torch.sigmoid(x_in[:, hc:])
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :hc]) * mask
                output = output + res_skip[:, hc:]
            else:
                output = output + res_skip
        return output * mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling (upstream ``module/modules.py::ResidualCouplingLayer``)."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"coupling channels must be even, got {channels}")
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)

    def reverse(
        self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inverse transform: ``x1 ← (x1 − m(x0)) · mask``."""
        x0, x1 = torch.split(x, [self.half_channels, self.half_channels], dim=1)
        h = self.pre(x0) * mask
        h = self.enc(h, mask, g)
        m = self.post(h) * mask
        x1 = (x1 - m) * mask
        return torch.cat([x0, x1], dim=1)


class Flip(nn.Module):
    """Reverse the channel order (upstream ``module/modules.py::Flip``); parameter-free."""

    def reverse(
        self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Flip is its own inverse."""
        return torch.flip(x, [1])


class ResidualCouplingBlock(nn.Module):
    """``n_flows`` couplings interleaved with Flips (upstream ``module/models.py``, same name)."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(
                    channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels
                )
            )
            self.flows.append(Flip())

    def reverse(
        self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latent prior sample → decoder latent: the flows in reverse order."""
        for flow in reversed(self.flows):
            x = flow.reverse(x, mask, g)
        return x


# --------------------------------------------------------------------------------------------
# HiFiGAN generator (module/modules.py::ResBlock1/2, module/models.py::Generator)


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) residual pairs with leaky ReLU (upstream ``ResBlock1``)."""

    def __init__(
        self, channels: int, kernel_size: int = 3, dilation: tuple[int, ...] = (1, 3, 5)
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(
                channels,
                channels,
                kernel_size,
                dilation=d,
                padding=_same_padding(kernel_size, d),
            )
            for d in dilation
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size))
            for _ in dilation
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if mask is not None:
                xt = xt * mask
            xt = F.leaky_relu(c1(xt), LRELU_SLOPE)
            if mask is not None:
                xt = xt * mask
            x = c2(xt) + x
        return x * mask if mask is not None else x


class ResBlock2(nn.Module):
    """Dilated convs with leaky ReLU, each residual (upstream ``ResBlock2``)."""

    def __init__(
        self, channels: int, kernel_size: int = 3, dilation: tuple[int, ...] = (1, 3)
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            WNConv1d(
                channels,
                channels,
                kernel_size,
                dilation=d,
                padding=_same_padding(kernel_size, d),
            )
            for d in dilation
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for c in self.convs:
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if mask is not None:
                xt = xt * mask
            x = c(xt) + x
        return x * mask if mask is not None else x


class Generator(nn.Module):
    """HiFiGAN V1-style decoder conditioned on the reference vector (upstream ``Generator``).

    ``lengths`` (frames per row) switches on masking after every conv, so that zero padding
    behaves like the end of the signal and each row of a batch sounds as if decoded alone.
    Upstream passes no mask here; with a full-length mask the extra products are exact no-ops.
    """

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: tuple[int, ...],
        resblock_dilation_sizes: tuple[tuple[int, ...], ...],
        upsample_rates: tuple[int, ...],
        upsample_initial_channel: int,
        upsample_kernel_sizes: tuple[int, ...],
        gin_channels: int = 0,
        post_bias: bool = False,
    ) -> None:
        super().__init__()
        if resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {resblock!r}")
        block = ResBlock1 if resblock == "1" else ResBlock2
        self.num_kernels = len(resblock_kernel_sizes)
        self.upsample_rates = tuple(upsample_rates)
        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        ch = upsample_initial_channel
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            ch_in = upsample_initial_channel // (2**i)
            ch = upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(WNConvTranspose1d(ch_in, ch, k, u, padding=(k - u) // 2))
            for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block(ch, rk, tuple(rd)))
        # the SoVITS decoder's conv_post has no bias; the v4 vocoder's has one (``is_bias``)
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=post_bias)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(
        self, x: torch.Tensor, g: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latent ``[B, C, T]`` (+ ``g`` [B, gin, 1]) → waveform ``[B, 1, T · prod(rates)]``."""
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        mask = _length_mask(lengths, x) if lengths is not None else None
        if mask is not None:
            x = x * mask
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            if lengths is not None:
                lengths = lengths * self.upsample_rates[i]
                mask = _length_mask(lengths, x)
                x = x * mask
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x, mask)
            for block in blocks[1:]:
                xs = xs + block(x, mask)
            x = xs / self.num_kernels
        x = F.leaky_relu(x)  # default slope 0.01 here, as upstream
        x = torch.tanh(self.conv_post(x))
        return x * mask if mask is not None else x


def _length_mask(lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sequence_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)  # (B, 1, T)


# --------------------------------------------------------------------------------------------
# MelStyleEncoder pieces (module/modules.py)


class Mish(nn.Module):
    """``x · tanh(softplus(x))`` written out as upstream does (not ``F.mish``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


class LinearNorm(nn.Module):
    """A Linear under the name ``fc`` (upstream ``module/modules.py::LinearNorm``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ConvNorm(nn.Module):
    """A "same"-padded Conv1d under the name ``conv`` (upstream ``ConvNorm``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvNorm kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Conv1dGLU(nn.Module):
    """Conv → GLU with a residual connection (upstream ``module/modules.py::Conv1dGLU``).

    ``mask`` zeroes padding before the conv so a padded row matches the row alone (upstream
    runs one unpadded reference at a time and has no mask here).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = ConvNorm(in_channels, 2 * out_channels, kernel_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv1(x * mask if mask is not None else x)
        y1, y2 = torch.split(y, self.out_channels, dim=1)
        return x + y1 * torch.sigmoid(y2)


class StyleAttention(nn.Module):
    """Self-attention of the style encoder, temperature ``sqrt(d_model)``, residual.

    Mirrors upstream ``module/modules.py::MultiHeadAttention`` + ``ScaledDotProductAttention``
    (keys ``w_qs``, ``w_ks``, ``w_vs``, ``fc``). Padded keys get -inf.
    """

    def __init__(self, n_head: int, d_model: int, d_k: int, d_v: int) -> None:
        super().__init__()
        self.n_head, self.d_k, self.d_v = n_head, d_k, d_v
        self.temperature = math.sqrt(d_model)
        self.w_qs = nn.Linear(d_model, n_head * d_k)
        self.w_ks = nn.Linear(d_model, n_head * d_k)
        self.w_vs = nn.Linear(d_model, n_head * d_v)
        self.fc = nn.Linear(n_head * d_v, d_model)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, T, d_model]; ``key_padding`` [B, T] bool, True at padding."""
        b, t, _ = x.shape
        h = self.n_head
        q = self.w_qs(x).view(b, t, h, self.d_k).transpose(1, 2)  # (B, H, T, dk)
        k = self.w_ks(x).view(b, t, h, self.d_k).transpose(1, 2)  # (B, H, T, dk)
        v = self.w_vs(x).view(b, t, h, self.d_v).transpose(1, 2)  # (B, H, T, dv)
        attn = torch.matmul(q, k.transpose(-2, -1)) / self.temperature  # (B, H, T, T)
        if key_padding is not None:
            attn = attn.masked_fill(key_padding[:, None, None, :], float("-inf"))
        out = torch.matmul(torch.softmax(attn, dim=-1), v)  # (B, H, T, dv)
        out = out.transpose(1, 2).reshape(b, t, h * self.d_v)
        return self.fc(out) + x


# --------------------------------------------------------------------------------------------
# quantizer (module/quantize.py, module/core_vq.py)


class EuclideanCodebook(nn.Module):
    """Nearest-code lookup; keeps all four upstream buffers so checkpoints load strictly.

    Mirrors upstream ``module/core_vq.py::EuclideanCodebook`` (inference only: no k-means, no
    EMA; ``inited``, ``cluster_size`` and ``embed_avg`` are carried but unused).
    """

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", torch.zeros(codebook_size, dim))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [N, D] → code ids [N] by the largest ``-(‖x‖² − 2x·e + ‖e‖²)``, as upstream."""
        embed = self.embed.t()  # (D, K)
        dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed + embed.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (any shape) → vectors (shape + [D])."""
        return F.embedding(codes, self.embed)


class VectorQuantization(nn.Module):
    """One quantizer layer, holding ``_codebook`` (upstream ``core_vq.VectorQuantization``)."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, codebook_size)


class ResidualVectorQuantization(nn.Module):
    """The ``layers`` list (upstream ``core_vq.ResidualVectorQuantization``)."""

    def __init__(self, dim: int, codebook_size: int, n_q: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, codebook_size) for _ in range(n_q))


class ResidualVectorQuantizer(nn.Module):
    """Single-layer residual VQ used by SoVITS (upstream ``module/quantize.py``, same name)."""

    def __init__(self, dim: int, codebook_size: int, n_q: int = 1) -> None:
        super().__init__()
        self.vq = ResidualVectorQuantization(dim, codebook_size, n_q)

    @property
    def codebook(self) -> EuclideanCodebook:
        """The first (and only used) codebook."""
        return self.vq.layers[0]._codebook

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, D, T]`` → first-layer codes ``[B, T]``."""
        b, d, t = x.shape
        flat = x.transpose(1, 2).reshape(b * t, d)  # (B·T, D)
        return self.codebook.encode(flat).view(b, t)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """First-layer codes ``[B, T]`` → features ``[B, D, T]``."""
        return self.codebook.decode(codes).transpose(1, 2)
