"""SoVITS synthesizer (v1/v2/v2Pro/v2ProPlus), inference subset of upstream ``SynthesizerTrn``.

Mirrors ``GPT_SoVITS/module/models.py`` (``SynthesizerTrn``, ``TextEncoder``): semantic codes +
phones + reference vector → 32 kHz waveform. Differences from upstream, all by design:

* no ``enc_q`` (posterior encoder, training only) — its keys are the only ones missing;
* weight-normed convs hold their folded ``weight``; :func:`weight_norm_prefixes` names them and
  :func:`fold_weight_norm_state` / :func:`unfold_weight_norm_state` convert state dicts;
* batch-first with per-row lengths: rows padded on the right decode as if alone (masks after
  every conv of the decoder; per-row speed resampling), and noise can be injected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from gsv_models.config import SoVITSConfig
from gsv_models.modules import (
    MRTE,
    WEIGHT_NORMED,
    Generator,
    RelPosEncoder,
    ResidualCouplingBlock,
    ResidualVectorQuantizer,
    fold_weight_norm,
    sequence_mask,
    unfold_weight_norm,
)
from gsv_models.ref_encoder import MelStyleEncoder, fuse_speaker_vector, style_vector

FLOW_KERNEL, FLOW_DILATION, FLOW_LAYERS, FLOW_COUPLINGS = 5, 1, 4, 4
"""ResidualCouplingBlock shape; upstream hard-codes it in ``SynthesizerTrn.__init__``."""
UPSTREAM_ONLY_PREFIXES = ("enc_q.",)
"""Upstream state-dict keys this model does not have (training-only posterior encoder)."""


def stretched_lengths(lengths: torch.Tensor, speed: float) -> torch.Tensor:
    """Frames after the speed change: ``int(L / speed) + 1`` (upstream), or ``L`` at speed 1."""
    if speed == 1:
        return lengths
    return torch.floor(lengths.double() / speed).long() + 1


def _stretch(y: torch.Tensor, lengths: torch.Tensor, speed: float) -> torch.Tensor:
    """Per-row linear resampling of ``y`` [B, C, T] to :func:`stretched_lengths` at ``speed``."""
    return resample_frames(y, lengths, stretched_lengths(lengths, speed))


def resample_frames(
    y: torch.Tensor, lengths: torch.Tensor, out_lengths: torch.Tensor
) -> torch.Tensor:
    """Per-row linear resampling of ``y`` [B, C, T] from ``lengths`` to ``out_lengths`` frames.

    For each row this computes what ``F.interpolate(row, size, mode="linear")`` (align_corners
    False) computes for the row alone: source index ``(j + 0.5) · s − 0.5`` clamped at 0, with
    the float32 scale ``s = L_in / L_out``. torch's CPU kernel evaluates the index with one
    fused multiply-add; doing it in float64 and rounding once reproduces that (a plain float32
    evaluation is off by up to an ulp of the index, ~1e-4 of a frame at 1000 frames). The final
    blend may differ from torch's by 1 ulp. A row whose length does not change is copied
    exactly (``s = 1``, zero blend weight). The output has ``max(out_lengths)`` frames (sized
    from data, not from a Python int, so an exported graph keeps it dynamic and the target
    lengths can be a graph input); frames past a row's new length are junk.
    """
    b, c, t_in = y.shape
    scale = lengths.to(torch.float32) / out_lengths.to(torch.float32)  # (B,)
    j = torch.arange(out_lengths.max(), device=y.device).to(torch.float32) + 0.5  # (T',)
    t_out = j.shape[0]
    src = scale.double()[:, None] * j.double()[None, :] - 0.5  # the product is exact in f64
    src = src.to(torch.float32).clamp_min(0)  # (B, T')
    i0 = torch.minimum(src.long(), (lengths - 1)[:, None])
    lam = (src - i0.to(src.dtype)).clamp(0, 1)
    i1 = torch.minimum(i0 + 1, (lengths - 1)[:, None])
    i0 = i0.clamp(0, t_in - 1).unsqueeze(1).expand(b, c, t_out)
    i1 = i1.clamp(0, t_in - 1).unsqueeze(1).expand(b, c, t_out)
    lam = lam.to(y.dtype).unsqueeze(1)  # (B, 1, T')
    return torch.gather(y, 2, i0) * (1 - lam) + torch.gather(y, 2, i1) * lam


class TextEncoder(nn.Module):
    """Prior encoder ``enc_p``: SSL codes and phones → prior mean/log-std over frames.

    Mirrors upstream ``module/models.py::TextEncoder``: ``ssl_proj`` (1×1) → ``encoder_ssl``
    (n_layers/2) ; phones → ``encoder_text`` (n_layers) ; ``mrte`` ; ``encoder2`` (n_layers/2) ;
    optional speed resampling ; ``proj`` → (m, logs).
    """

    def __init__(self, cfg: SoVITSConfig) -> None:
        super().__init__()
        h, f, nh, nl, k = (
            cfg.hidden_channels,
            cfg.filter_channels,
            cfg.n_heads,
            cfg.n_layers,
            cfg.kernel_size,
        )
        self.out_channels = cfg.inter_channels
        self.ssl_proj = nn.Conv1d(cfg.ssl_dim, h, 1)
        self.encoder_ssl = RelPosEncoder(h, f, nh, nl // 2, k)
        self.encoder_text = RelPosEncoder(h, f, nh, nl, k)
        self.text_embedding = nn.Embedding(cfg.n_symbols, h)
        self.mrte = MRTE(h, cfg.mrte_hidden)
        self.encoder2 = RelPosEncoder(h, f, nh, nl // 2, k)
        self.proj = nn.Conv1d(h, 2 * cfg.inter_channels, 1)

    def forward(
        self,
        y: torch.Tensor,
        y_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        ge: torch.Tensor,
        speed: float = 1.0,
        frame_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(m [B, C, T'], logs [B, C, T'], mask [B, 1, T'], lengths [B])``.

        ``frame_lengths`` (per-row frames after the speed change, used instead of ``speed``)
        resamples unconditionally, so an exported graph takes the speed as data.
        """
        y, y_mask, lengths = self.content(
            y, y_lengths, text, text_lengths, ge, speed, frame_lengths
        )
        stats = self.proj(y) * y_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs, y_mask, lengths

    def content(
        self,
        y: torch.Tensor,
        y_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        ge: torch.Tensor,
        speed: float = 1.0,
        frame_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The hidden frames before ``proj``: ``(y [B, h, T'], mask [B, 1, T'], lengths [B])``.

        v3/v4 decode from these (upstream's ``TextEncoder`` returns them first); after a speed
        change ``y`` is not masked, as upstream leaves it.
        """
        y_mask = sequence_mask(y_lengths, y.shape[2]).unsqueeze(1).to(y.dtype)  # (B, 1, T)
        y = self.ssl_proj(y * y_mask) * y_mask
        y = self.encoder_ssl(y * y_mask, y_mask)
        text_mask = sequence_mask(text_lengths, text.shape[1]).unsqueeze(1).to(y.dtype)
        t = self.text_embedding(text).transpose(1, 2)  # (B, h, N)
        t = self.encoder_text(t * text_mask, text_mask)
        y = self.mrte(y, y_mask, t, text_mask, ge)
        y = self.encoder2(y * y_mask, y_mask)
        lengths = y_lengths
        if frame_lengths is None and speed != 1:
            frame_lengths = stretched_lengths(y_lengths, speed)
        if frame_lengths is not None:
            y = resample_frames(y, y_lengths, frame_lengths)
            lengths = frame_lengths
            y_mask = sequence_mask(lengths, y.shape[2]).unsqueeze(1).to(y.dtype)
        return y, y_mask, lengths


class SoVITSModel(nn.Module):
    """SynthesizerTrn for inference; state-dict keys are upstream's minus ``enc_q.*``.

    Shapes: codes ``[B, T]`` at 25 Hz; latent frames at 50 Hz (2 per code);
    ``cfg.hop_length`` samples per frame. Rows are padded on the right and described by
    per-row lengths.
    """

    def __init__(self, cfg: SoVITSConfig) -> None:
        super().__init__()
        if not cfg.version.is_pro and cfg.gin_channels != cfg.mrte_hidden:
            raise ValueError(
                f"{cfg.version.value}: MRTE adds ge itself, so gin_channels ({cfg.gin_channels}) "
                f"must equal mrte_hidden ({cfg.mrte_hidden})"
            )
        self.cfg = cfg
        self.is_pro = cfg.version.is_pro
        self.enc_p = TextEncoder(cfg)
        self.dec = Generator(
            cfg.inter_channels,
            cfg.resblock,
            cfg.resblock_kernel_sizes,
            cfg.resblock_dilation_sizes,
            cfg.upsample_rates,
            cfg.upsample_initial_channel,
            cfg.upsample_kernel_sizes,
            gin_channels=cfg.gin_channels,
        )
        self.flow = ResidualCouplingBlock(
            cfg.inter_channels,
            cfg.hidden_channels,
            FLOW_KERNEL,
            FLOW_DILATION,
            FLOW_LAYERS,
            FLOW_COUPLINGS,
            gin_channels=cfg.gin_channels,
        )
        self.ref_enc = MelStyleEncoder(cfg.ref_channels, cfg.gin_channels)
        # 50 Hz HuBERT features → 25 Hz (kernel 2, stride 2), then nearest code
        self.ssl_proj = nn.Conv1d(cfg.ssl_dim, cfg.ssl_dim, 2, stride=2)
        self.quantizer = ResidualVectorQuantizer(cfg.ssl_dim, cfg.codebook_size, n_q=1)
        if self.is_pro:
            self.sv_emb = nn.Linear(cfg.sv_dim, cfg.gin_channels)
            self.ge_to512 = nn.Linear(cfg.gin_channels, cfg.mrte_hidden)
            self.prelu = nn.PReLU(num_parameters=cfg.gin_channels)

    @property
    def frame_hop(self) -> int:
        """Waveform samples per latent frame (``prod(upsample_rates)`` = ``hop_length``)."""
        hop = 1
        for r in self.cfg.upsample_rates:
            hop *= r
        return hop

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """HuBERT features ``[B, ssl_dim, T50]`` → semantic codes ``[B, T50 // 2]`` (int64).

        Each code depends on two input frames only, so right padding never changes valid codes
        (a row of ``n`` valid frames has ``n // 2`` valid codes).
        """
        return self.quantizer.encode(self.ssl_proj(ssl))

    @torch.no_grad()
    def reference_embedding(
        self,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor | None = None,
        sv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reference vector ``ge`` ``[B, gin, 1]``, one per reference row.

        Args:
            spec: linear spectrogram ``[B, bins, T]`` (all 1025 bins, or at least
                ``cfg.ref_channels``), rows right-padded.
            spec_lengths: valid frames per row; None means all ``T``.
            sv: v2Pro/v2ProPlus only: ERes2NetV2 embedding ``[B, sv_dim]`` of each reference.

        Returns:
            ``ge``; for Pro versions already fused (``PReLU(ge + sv_emb(sv))``). Several
            references of one voice are combined with
            :func:`gsv_models.ref_encoder.mean_reference` before :meth:`decode`.

        Raises:
            ValueError: if ``sv`` is missing on a Pro version or given on another one.
        """
        if self.is_pro and sv is None:
            raise ValueError(f"{self.cfg.version.value} needs the speaker vector sv")
        if not self.is_pro and sv is not None:
            raise ValueError(f"{self.cfg.version.value} takes no speaker vector (sv)")
        if spec_lengths is None:
            spec_lengths = torch.full((spec.shape[0],), spec.shape[2], device=spec.device)
        ge = style_vector(self.ref_enc, spec, spec_lengths, self.cfg.ref_channels)
        if self.is_pro:
            ge = fuse_speaker_vector(ge, sv, self.sv_emb, self.prelu)
        return ge

    def text_condition(self, ge: torch.Tensor) -> torch.Tensor:
        """What MRTE adds: ``ge`` itself, or ``ge_to512(ge)`` ``[B, mrte_hidden, 1]`` on Pro."""
        if not self.is_pro:
            return ge
        return self.ge_to512(ge.transpose(1, 2)).transpose(1, 2)

    def frame_lengths(self, code_lengths: torch.Tensor, speed: float = 1.0) -> torch.Tensor:
        """Latent frames per row for codes of ``code_lengths`` at ``speed`` (noise length)."""
        return stretched_lengths(2 * code_lengths, speed)

    @torch.no_grad()
    def decode(
        self,
        codes: torch.Tensor,
        code_lengths: torch.Tensor,
        phones: torch.Tensor,
        phone_lengths: torch.Tensor,
        ge: torch.Tensor,
        noise_scale: float | torch.Tensor = 0.5,
        noise: torch.Tensor | None = None,
        speed: float = 1.0,
        frame_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic codes + phones + reference vector → waveform.

        Args:
            codes: ``[B, T]`` int64 semantic codes (25 Hz), right-padded with any valid id.
            code_lengths: ``[B]`` valid codes per row.
            phones: ``[B, N]`` int64 phone ids, right-padded with any valid id.
            phone_lengths: ``[B]`` valid phones per row.
            ge: ``[B, gin, 1]`` from :meth:`reference_embedding` (averaged if several refs).
            noise_scale: prior noise scale (upstream default 0.5); float or ``[B]``.
            noise: standard-normal ``[B, inter_channels, T']``: ``T' = 2T`` at speed 1,
                else ``max(frame_lengths(code_lengths, speed))`` (``int(2T / speed) + 1`` when
                the longest row fills ``T``), or ``max(frame_lengths)`` when those are given.
                None draws ``torch.randn_like`` at the same point as upstream, so a batch of
                one with the same torch seed reproduces upstream.
            speed: time stretch of the prior (>1 is faster), linear per row as upstream.
            frame_lengths: ``[B]`` prior frames per row after the speed change, instead of
                ``speed`` (per-row speeds; the exported decoder takes speed this way). Equal
                to ``2 · code_lengths`` for a row at speed 1 (that row is then copied exactly).

        Returns:
            ``(wav [B, 1, T' · hop], sample_lengths [B])``, zero past each row's length.

        Raises:
            ValueError: on a noise tensor of the wrong shape, or both speed and frame_lengths.
        """
        if frame_lengths is not None and speed != 1:
            raise ValueError("give speed or frame_lengths, not both")
        quantized = self.quantizer.decode(codes)  # (B, ssl_dim, T)
        quantized = F.interpolate(quantized, size=2 * quantized.shape[2], mode="nearest")
        m, logs, mask, lengths = self.enc_p(
            quantized,
            2 * code_lengths,
            phones,
            phone_lengths,
            self.text_condition(ge),
            speed,
            frame_lengths,
        )
        if noise is None:
            noise = torch.randn_like(m)
        elif noise.shape != m.shape:
            raise ValueError(f"noise must have shape {tuple(m.shape)}, got {tuple(noise.shape)}")
        if isinstance(noise_scale, torch.Tensor) and noise_scale.dim() == 1:
            noise_scale = noise_scale.view(-1, 1, 1)
        z_p = m + noise * torch.exp(logs) * noise_scale
        z = self.flow.reverse(z_p, mask, ge)
        wav = self.dec(z * mask, ge, lengths)
        return wav, lengths * self.frame_hop

    def weight_norm_prefixes(self) -> list[str]:
        """Module names that upstream keeps under legacy weight norm (``weight_g``/``weight_v``)."""
        return [name for name, mod in self.named_modules() if isinstance(mod, WEIGHT_NORMED)]


def weight_norm_prefixes(cfg: SoVITSConfig) -> list[str]:
    """Module names upstream weight-norms for ``cfg``: ``dec.ups.*``, ``dec.resblocks.*`` convs
    and the flow's WN convs (``cond_layer``, ``in_layers.*``, ``res_skip_layers.*``).

    Built on the meta device, so it costs no memory even for full-size configs.
    """
    with torch.device("meta"):
        return SoVITSModel(cfg).weight_norm_prefixes()


def fold_weight_norm_state(
    state: Mapping[str, torch.Tensor], prefixes: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Upstream state dict → ours: each ``p.weight_g``/``p.weight_v`` becomes ``p.weight``.

    Bit-identical to the weight upstream computes in its forward pass (see
    :func:`gsv_models.modules.fold_weight_norm`). Other keys pass through unchanged.

    Raises:
        KeyError: if a prefix lacks its ``weight_g`` or ``weight_v``.
    """
    wanted = set(prefixes)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        if stem in wanted and leaf in ("weight_g", "weight_v"):
            if stem + ".weight" not in out:
                out[stem + ".weight"] = fold_weight_norm(
                    state[stem + ".weight_g"], state[stem + ".weight_v"]
                )
            continue
        out[key] = value
    missing = [p for p in prefixes if p + ".weight" not in out]
    if missing:
        raise KeyError(f"no weight_g/weight_v for weight-normed modules: {missing[:5]}")
    return out


def unfold_weight_norm_state(
    state: Mapping[str, torch.Tensor], prefixes: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Ours → upstream: ``p.weight`` becomes ``p.weight_g`` (norm) and ``p.weight_v`` (weight).

    The pair is placed after the module's other keys (``p.bias``), as torch's legacy
    ``weight_norm`` orders them.

    Raises:
        KeyError: if a prefix has no ``weight``.
    """
    wanted = set(prefixes)
    missing = [p for p in prefixes if p + ".weight" not in state]
    if missing:
        raise KeyError(f"no weight for weight-normed modules: {missing[:5]}")
    keys = list(state)
    last_index = {key.rpartition(".")[0]: i for i, key in enumerate(keys)}
    out: dict[str, torch.Tensor] = {}
    for i, key in enumerate(keys):
        stem, _, leaf = key.rpartition(".")
        if not (stem in wanted and leaf == "weight"):
            out[key] = state[key]
        if stem in wanted and last_index[stem] == i:
            g, v = unfold_weight_norm(state[stem + ".weight"])
            out[stem + ".weight_g"] = g
            out[stem + ".weight_v"] = v
    return out
