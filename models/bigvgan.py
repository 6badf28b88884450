"""BigVGAN-v2 vocoder of v3 SoVITS: log-mel ``[B, 100, T]`` → 24 kHz waveform ``[B, 1, 256·T]``.

Mirrors NVIDIA's BigVGAN-v2 generator as vendored upstream in ``GPT_SoVITS/BigVGAN/``
(``bigvgan.py::BigVGAN`` and ``AMPBlock1``, ``activations.py::SnakeBeta``,
``alias_free_activation/torch/``), inference only. State-dict keys are upstream's, with every
weight-normed conv holding its folded ``weight`` (upstream's ``remove_weight_norm()`` form);
:func:`load_bigvgan` reads upstream's model folder (``config.json`` + ``bigvgan_generator.pt``)
in either form, as upstream's ``from_pretrained`` does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn
from torch.nn import functional as F

# the checkpoint reader's safe unpickling and per-tensor checks (repeating views, sizes)
from gsv_models.checkpoint import _to_fp32, check_weights_fit, read_payload
from gsv_models.modules import WEIGHT_NORMED, WNConv1d, WNConvTranspose1d
from gsv_models.sovits import fold_weight_norm_state, unfold_weight_norm_state
from gsv_runtime.errors import CheckpointError

CONFIG_FILE: Final = "config.json"
WEIGHTS_FILE: Final = "bigvgan_generator.pt"
MAX_CONFIG_BYTES: Final = 1 << 20
"""The published config.json is ~2 KB; anything far larger is not a config."""

ANTI_ALIAS_RATIO: Final = 2
"""Up/down-sampling factor around each SnakeBeta (upstream ``Activation1d`` defaults)."""
ANTI_ALIAS_TAPS: Final = 12
"""Kaiser-sinc filter length of both resamplers (upstream ``Activation1d`` defaults)."""
SNAKE_EPS: Final = 1e-9
"""Added to beta before dividing (upstream ``activations.py``)."""
CONV_PRE_POST_KERNEL: Final = 7


@dataclass(frozen=True)
class BigVGANConfig:
    """Generator hyperparameters, as named in BigVGAN's ``config.json``."""

    num_mels: int
    """Mel bands of the input."""
    upsample_rates: tuple[int, ...]
    """Stride of each transposed-conv stage; their product is the hop."""
    upsample_kernel_sizes: tuple[int, ...]
    """Kernel of each transposed-conv stage (``k - u`` even, so stage ``i`` has ``u_i``× length)."""
    upsample_initial_channel: int
    """Width after ``conv_pre``; halved by every stage."""
    resblock_kernel_sizes: tuple[int, ...]
    """One AMPBlock1 per kernel at every stage; their outputs are averaged."""
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    """Dilations of each AMPBlock1's ``convs1``."""
    snake_logscale: bool
    """SnakeBeta's alpha and beta are stored as logarithms."""
    sampling_rate: int
    """Output sample rate (Hz)."""
    use_tanh_at_final: bool = True
    """tanh on the output; False clamps to [-1, 1] instead (upstream's default is True)."""
    use_bias_at_final: bool = True
    """``conv_post`` has a bias (upstream's default is True)."""

    @property
    def hop(self) -> int:
        """Output samples per mel frame (the product of the upsample rates)."""
        return math.prod(self.upsample_rates)

    def stage_channels(self, stage: int) -> int:
        """Width after up-sampling stage ``stage`` (0-based), as upstream computes it."""
        return self.upsample_initial_channel // 2 ** (stage + 1)

    def validate(self) -> None:
        """Raise ValueError naming the first field that no generator can be built from."""
        scalars = (self.num_mels, self.upsample_initial_channel, self.sampling_rate)
        lists = {
            "num_mels, upsample_initial_channel and sampling_rate": scalars,
            "upsample_rates": self.upsample_rates,
            "upsample_kernel_sizes": self.upsample_kernel_sizes,
            "resblock_kernel_sizes": self.resblock_kernel_sizes,
            "resblock_dilation_sizes": sum(self.resblock_dilation_sizes, ()),
        }
        for name, values in lists.items():
            if any(v < 1 for v in values):
                raise ValueError(f"{name} must be positive, got {list(values)}")
        if not self.upsample_rates or len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(
                "upsample_rates and upsample_kernel_sizes must be non-empty and of equal length, "
                f"got {list(self.upsample_rates)} and {list(self.upsample_kernel_sizes)}"
            )
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            if k < u or (k - u) % 2:
                raise ValueError(
                    f"upsample kernel {k} for rate {u}: need kernel >= rate and an even "
                    "difference (otherwise a stage does not multiply the length exactly)"
                )
        if not self.resblock_kernel_sizes or len(self.resblock_kernel_sizes) != len(
            self.resblock_dilation_sizes
        ):
            raise ValueError(
                "resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and of equal "
                f"length, got {list(self.resblock_kernel_sizes)} and "
                f"{[list(d) for d in self.resblock_dilation_sizes]}"
            )
        if any(k % 2 == 0 for k in self.resblock_kernel_sizes):
            raise ValueError(
                f"resblock_kernel_sizes must be odd (same-length convs), got "
                f"{list(self.resblock_kernel_sizes)}"
            )
        if self.stage_channels(len(self.upsample_rates) - 1) < 1:
            raise ValueError(
                f"upsample_initial_channel {self.upsample_initial_channel} cannot be halved "
                f"{len(self.upsample_rates)} times"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BigVGANConfig:
        """Read BigVGAN's ``config.json`` contents; training-only keys are ignored.

        Raises:
            CheckpointError: a generator field is missing, of the wrong type, or names a
                variant this model does not implement (only ``resblock`` "1" with
                ``activation`` "snakebeta", BigVGAN-v2's, is).
        """
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise CheckpointError(f"BigVGAN config lacks {missing}")
        if str(raw["resblock"]) != "1":
            raise CheckpointError(
                f"BigVGAN resblock {raw['resblock']!r} is not supported (only '1', AMPBlock1)"
            )
        if raw["activation"] != "snakebeta":
            raise CheckpointError(
                f"BigVGAN activation {raw['activation']!r} is not supported (only 'snakebeta')"
            )
        try:
            cfg = cls(
                num_mels=_ints(raw, "num_mels", 0),
                upsample_rates=_ints(raw, "upsample_rates", 1),
                upsample_kernel_sizes=_ints(raw, "upsample_kernel_sizes", 1),
                upsample_initial_channel=_ints(raw, "upsample_initial_channel", 0),
                resblock_kernel_sizes=_ints(raw, "resblock_kernel_sizes", 1),
                resblock_dilation_sizes=_ints(raw, "resblock_dilation_sizes", 2),
                snake_logscale=_bool(raw, "snake_logscale"),
                sampling_rate=_ints(raw, "sampling_rate", 0),
                use_tanh_at_final=_bool(raw, "use_tanh_at_final", True),
                use_bias_at_final=_bool(raw, "use_bias_at_final", True),
            )
            cfg.validate()
        except ValueError as exc:
            raise CheckpointError(f"BigVGAN config: {exc}") from None
        hop = raw.get("hop_size")
        if hop is not None and hop != cfg.hop:
            raise CheckpointError(
                f"BigVGAN config: hop_size {hop} disagrees with the upsample rates "
                f"{list(cfg.upsample_rates)} (product {cfg.hop})"
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The generator's part of ``config.json``, with upstream's key names and values."""
        return {
            "resblock": "1",
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "upsample_initial_channel": self.upsample_initial_channel,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "use_tanh_at_final": self.use_tanh_at_final,
            "use_bias_at_final": self.use_bias_at_final,
            "activation": "snakebeta",
            "snake_logscale": self.snake_logscale,
            "num_mels": self.num_mels,
            "hop_size": self.hop,
            "sampling_rate": self.sampling_rate,
        }


_REQUIRED: Final = (
    "resblock",
    "activation",
    "num_mels",
    "upsample_rates",
    "upsample_kernel_sizes",
    "upsample_initial_channel",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "snake_logscale",
    "sampling_rate",
)
"""Keys upstream's generator reads without a default (plus the output rate the runtime needs)."""

FULL_CONFIG: Final = BigVGANConfig(
    num_mels=100,
    upsample_rates=(4, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
    upsample_initial_channel=1536,
    resblock_kernel_sizes=(3, 7, 11),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
    snake_logscale=True,
    sampling_rate=24000,
    use_tanh_at_final=False,
    use_bias_at_final=False,
)
"""nvidia/bigvgan_v2_24khz_100band_256x, the vocoder upstream loads for v3."""


def _ints(raw: Mapping[str, Any], key: str, depth: int) -> Any:
    """``raw[key]`` as an int (depth 0) or as tuples nested ``depth`` deep around ints."""

    def convert(value: Any, depth: int) -> Any:
        if depth == 0:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must hold integers, got {raw[key]!r}")
            return value
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} must be a {'nested ' * (depth - 1)}list, got {raw[key]!r}")
        return tuple(convert(v, depth - 1) for v in value)

    return convert(raw[key], depth)


def _bool(raw: Mapping[str, Any], key: str, default: bool | None = None) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# anti-aliased SnakeBeta (alias_free_activation/torch/*.py, activations.py)


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """Windowed-sinc low-pass ``[1, 1, taps]`` with unit DC gain (cutoff in cycles/sample).

    Kaiser window whose β comes from Kaiser's empirical formulas for the attenuation a filter
    of half the taps reaches over a transition band of ``4 · half_width``; taps sit at
    half-integer offsets for even lengths. Same design as upstream's
    ``alias_free_activation/torch/filter.py::kaiser_sinc_filter1d``.
    """
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, periodic=False, beta=beta)
    offsets = torch.arange(taps, dtype=torch.float32) - (taps - 1) / 2
    response = 2 * cutoff * window * torch.sinc(2 * cutoff * offsets)
    return (response / response.sum()).view(1, 1, taps)


def _resampling_filter() -> torch.Tensor:
    """The low-pass both resamplers use: half the output band, transition 0.6 / ratio."""
    return kaiser_sinc_filter(0.5 / ANTI_ALIAS_RATIO, 0.6 / ANTI_ALIAS_RATIO, ANTI_ALIAS_TAPS)


class SnakeBeta(nn.Module):
    """``x + sin²(α·x) / β`` per channel; α, β stored as logs when ``logscale``."""

    def __init__(self, channels: int, logscale: bool) -> None:
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]  # (1, C, 1)
        beta = self.beta[None, :, None]
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return x + (1.0 / (beta + SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


class UpSample2(nn.Module):
    """×2 band-limited up-sampling: edge padding, zero-stuffing transposed conv, crop.

    Upstream ``resample.py::UpSample1d`` with ratio 2 and 12 taps: pads 5 edge samples per
    side, so the crop of 15 samples per side leaves exactly ``2·T``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filter", _resampling_filter())
        self.channels = channels  # the depthwise taps are expanded to this many channels
        self.pad = ANTI_ALIAS_TAPS // ANTI_ALIAS_RATIO - 1
        self.crop = self.pad * ANTI_ALIAS_RATIO + (ANTI_ALIAS_TAPS - ANTI_ALIAS_RATIO) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad, self.pad), mode="replicate")  # (B, C, T + 2·pad)
        taps = self.filter.expand(self.channels, -1, -1)
        x = ANTI_ALIAS_RATIO * F.conv_transpose1d(
            x, taps, stride=ANTI_ALIAS_RATIO, groups=self.channels
        )  # (B, C, 2T + 2·crop)
        return x[..., self.crop : x.shape[-1] - self.crop]


class LowPass(nn.Module):
    """Strided depthwise low-pass with edge padding (upstream ``filter.py::LowPassFilter1d``)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.register_buffer("filter", _resampling_filter())
        self.channels = channels  # the depthwise taps are expanded to this many channels
        self.stride = stride
        # even taps: one sample more on the right keeps the output centred
        self.pads = (ANTI_ALIAS_TAPS // 2 - 1, ANTI_ALIAS_TAPS // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pads, mode="replicate")
        taps = self.filter.expand(self.channels, -1, -1)
        return F.conv1d(x, taps, stride=self.stride, groups=self.channels)


class DownSample2(nn.Module):
    """×2 decimation behind the anti-alias low-pass (upstream ``resample.py::DownSample1d``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lowpass = LowPass(channels, ANTI_ALIAS_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


UP_REACH: Final = 3
"""Input samples either side of a pair of up-sampled outputs that the 12-tap filter reads."""


def _polyphase_kernels(taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ×2 resampling pair of :class:`AntiAliasedSnakeBeta`'s export form, as the taps of
    stride-1 convolutions at the input rate.

    ``up [2, 7]``: output ``2q + p`` of :class:`UpSample2` (gain 2 included) is
    ``Σ_k up[p, k] · x[q − 3 + k]`` (``x`` clamped at its ends): output ``n`` reads tap
    ``n + 5 − 2t`` of input ``t``, so each phase uses every other tap and one of the seven
    entries is zero. ``down [2, 6]``: output ``n`` of :class:`LowPass` (stride 2, edge pads
    5 | 6) is ``Σ_j down[0, j] · s[2(n − 2 + j)] + Σ_j down[1, j] · s[2(n − 3 + j) + 1]``, the
    odd taps over the even phase and the even taps over the odd one.
    """
    f = taps.flatten()
    up = torch.zeros(ANTI_ALIAS_RATIO, 2 * UP_REACH + 1, dtype=f.dtype)
    for phase in range(ANTI_ALIAS_RATIO):
        for k in range(2 * UP_REACH + 1):
            tap = ANTI_ALIAS_TAPS - 1 + phase - 2 * k
            if 0 <= tap < ANTI_ALIAS_TAPS:
                up[phase, k] = ANTI_ALIAS_RATIO * f[tap]
    down = torch.stack([f[1::2], f[0::2]])
    return up, down


class AntiAliasedSnakeBeta(nn.Module):
    """SnakeBeta evaluated at twice the rate, so its harmonics above Nyquist are filtered out.

    Upstream ``alias_free_activation/torch/act.py::Activation1d`` around ``SnakeBeta``.

    Exported (ONNX) in polyphase form: the even and odd samples of the ×2 signal are computed
    at the input rate by two depthwise convolutions, SnakeBeta runs on each phase, and the
    stride-2 low-pass is one depthwise convolution per phase, summed; the edge padding of both
    resamplers becomes one edge pad of the input and two short concatenations. Nothing runs at
    the doubled rate and nothing is interleaved, and OpenVINO runs depthwise convolutions on
    its vectorised kernels. Activations that read the same input (each stage's three residual
    blocks) share the up-sampling convolutions once traced. Against the previous export form
    (windows of the ×2 signal times banded constant matrices, whose window slices, concatenations
    and pads ran on OpenVINO's reference kernels), full-size BigVGAN, 2 s of audio, 2 threads on
    the 2-core EPYC, interleaved rounds: OpenVINO bf16 hint 1.93 → 1.78 s, f32 3.16 → 2.85 s;
    onnxruntime 3.90 → 3.27 s (outputs 122 dB apart). Eager PyTorch keeps upstream's form (the
    baseline).
    """

    def __init__(self, channels: int, logscale: bool) -> None:
        super().__init__()
        self.act = SnakeBeta(channels, logscale)
        self.upsample = UpSample2(channels)
        self.downsample = DownSample2(channels)
        up, down = _polyphase_kernels(_resampling_filter())
        self.register_buffer("phase_up", up[:, None, None, :], persistent=False)
        self.register_buffer("phase_down", down[:, None, None, :], persistent=False)
        self.channels = channels  # a Python int: a static kernel shape for ONNX export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return self.forward_polyphase(x)
        return self.downsample(self.act(self.upsample(x)))

    def forward_polyphase(self, x: torch.Tensor) -> torch.Tensor:
        """The export form (see the class docstring); the same map for any length ≥ 1."""
        c = self.channels
        up, down = self.phase_up.expand(-1, c, -1, -1), self.phase_down.expand(-1, c, -1, -1)
        x = F.pad(x, (UP_REACH, UP_REACH), mode="replicate")
        even = self.act(F.conv1d(x, up[0], groups=c))
        odd = self.act(F.conv1d(x, up[1], groups=c))
        # the ×2 signal clamped at its ends: its first sample is even[0], its last odd[-1]
        first, last = even[..., :1], odd[..., -1:]
        even = torch.cat([first, first, even, last, last, last], dim=-1)
        odd = torch.cat([first, first, first, odd, last, last], dim=-1)
        return F.conv1d(even, down[0], groups=c) + F.conv1d(odd, down[1], groups=c)


# --------------------------------------------------------------------------------------------
# generator (bigvgan.py)


def _same_padding(kernel: int, dilation: int) -> int:
    return (kernel * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """Residual pairs ``x += conv2(act(conv1(act(x))))``, ``conv1`` dilated, ``conv2`` not.

    Upstream ``bigvgan.py::AMPBlock1`` (``activations`` interleave: even entries precede
    ``convs1``, odd ones ``convs2``); all convs are weight-normed upstream.
    """

    def __init__(
        self, channels: int, kernel: int, dilations: Sequence[int], logscale: bool
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel, dilation=d, padding=_same_padding(kernel, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel, padding=_same_padding(kernel, 1))
            for _ in dilations
        )
        self.activations = nn.ModuleList(
            AntiAliasedSnakeBeta(channels, logscale) for _ in range(2 * len(dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = zip(
            self.convs1, self.convs2, self.activations[::2], self.activations[1::2], strict=True
        )
        for conv1, conv2, act1, act2 in pairs:
            x = x + conv2(act2(conv1(act1(x))))
        return x


class BigVGAN(nn.Module):
    """BigVGAN-v2 generator (inference, weight norm folded).

    ``conv_pre`` → per stage: transposed-conv up-sampling, mean of the stage's AMPBlock1s →
    anti-aliased SnakeBeta → ``conv_post`` → tanh or clamp to [-1, 1]. There is no activation
    before the up-sampling convs, unlike HiFi-GAN. Rows of a batch are independent, but a row
    padded on the right hears its padding near its end (no masks, as upstream).
    """

    def __init__(self, cfg: BigVGANConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        c0 = cfg.upsample_initial_channel
        self.conv_pre = WNConv1d(
            cfg.num_mels, c0, CONV_PRE_POST_KERNEL, padding=CONV_PRE_POST_KERNEL // 2
        )
        # a one-element list per stage: upstream's key names are ups.{i}.0.*
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            c_in, c_out = c0 // 2**i, cfg.stage_channels(i)
            up = WNConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2)
            self.ups.append(nn.ModuleList([up]))
            for kernel, dilations in zip(
                cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True
            ):
                self.resblocks.append(AMPBlock1(c_out, kernel, dilations, cfg.snake_logscale))
        c_last = cfg.stage_channels(len(cfg.upsample_rates) - 1)
        self.activation_post = AntiAliasedSnakeBeta(c_last, cfg.snake_logscale)
        self.conv_post = WNConv1d(
            c_last,
            1,
            CONV_PRE_POST_KERNEL,
            padding=CONV_PRE_POST_KERNEL // 2,
            bias=cfg.use_bias_at_final,
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, num_mels, T]`` → waveform ``[B, 1, T · hop]`` in [-1, 1]."""
        n_blocks = len(self.cfg.resblock_kernel_sizes)
        x = self.conv_pre(mel)  # (B, C0, T)
        for i, up in enumerate(self.ups):
            x = up[0](x)  # (B, C0 / 2^(i+1), T · u_0 ⋯ u_i)
            blocks = self.resblocks[i * n_blocks : (i + 1) * n_blocks]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / n_blocks
        x = self.conv_post(self.activation_post(x))  # (B, 1, T · hop)
        return torch.tanh(x) if self.cfg.use_tanh_at_final else x.clamp(-1.0, 1.0)

    def weight_norm_prefixes(self) -> list[str]:
        """Module names upstream weight-norms: conv_pre, ups, every AMPBlock conv, conv_post."""
        return [name for name, mod in self.named_modules() if isinstance(mod, WEIGHT_NORMED)]


def bigvgan_weight_norm_prefixes(cfg: BigVGANConfig) -> list[str]:
    """:meth:`BigVGAN.weight_norm_prefixes` for ``cfg``, built on the meta device (no memory)."""
    with torch.device("meta"):
        return BigVGAN(cfg).weight_norm_prefixes()


def to_upstream_state(model: BigVGAN) -> dict[str, torch.Tensor]:
    """The state dict upstream saves (``weight_g``/``weight_v`` per weight-normed conv)."""
    return unfold_weight_norm_state(model.state_dict(), model.weight_norm_prefixes())


# --------------------------------------------------------------------------------------------
# loading


def read_bigvgan_config(path: str | Path) -> BigVGANConfig:
    """Parse a BigVGAN ``config.json``.

    Raises:
        CheckpointError: missing, oversized, non-JSON or invalid config (see
            :meth:`BigVGANConfig.from_dict`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (a BigVGAN model folder holds {CONFIG_FILE})")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not a config")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a JSON config ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    try:
        return BigVGANConfig.from_dict(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _generator_state(path: Path, cfg: BigVGANConfig) -> dict[str, torch.Tensor]:
    """Read ``{"generator": state}`` safely and fold weight norm if the file carries it."""
    payload, header = read_payload(path)
    if header != b"PK":
        raise CheckpointError(f"{path}: not a torch zip file (starts with {header!r})")
    state = payload.get("generator")
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path}: expected {{'generator': state_dict}}, found keys {list(payload)[:5]}"
        )
    state = _to_fp32(state, path)
    # upstream's from_pretrained accepts both the training form and the folded one
    if not any(k.endswith((".weight_g", ".weight_v")) for k in state):
        return state
    try:
        return fold_weight_norm_state(state, bigvgan_weight_norm_prefixes(cfg))
    except KeyError as exc:
        raise CheckpointError(f"{path}: weight-norm pairs missing ({exc.args[0]})") from None


def load_bigvgan(model_dir: str | Path) -> BigVGAN:
    """Load upstream's BigVGAN folder (``config.json`` + ``bigvgan_generator.pt``), eval mode.

    The weights are unpickled with torch's ``weights_only`` loader and the project's checks
    (zip bombs, repeating views); the network is laid out on the meta device and compared with
    them before anything is allocated. The anti-alias filters are taken from the file, as
    upstream's strict ``load_state_dict`` does.

    Raises:
        CheckpointError: missing, unsafe, corrupt or inconsistent config or weights.
    """
    model_dir = Path(model_dir)
    cfg = read_bigvgan_config(model_dir / CONFIG_FILE)
    path = model_dir / WEIGHTS_FILE
    state = _generator_state(path, cfg)
    with torch.device("meta"):
        expected = BigVGAN(cfg).state_dict()
    check_weights_fit(path, "BigVGAN of its config.json", expected, state)
    model = BigVGAN(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()
