"""SoVITS graphs (v1/v2/v2Pro/v2ProPlus): declarations, traceable wrappers, export and parity.

Three graphs; ``B`` is the batch, rows are padded on the right and described by lengths. Host
side (numpy, :mod:`gsv_runtime.audio_features`): HuBERT features come from the support bundle's
SSL graph, the linear spectrogram of a reference is computed on the host
(``audio_features.linear_spectrogram``, 1025 bins), the speaker vector ``sv`` of v2Pro/ProPlus
comes from the support bundle's SV graph, several references are averaged on the host (mean of
``ge``, as upstream ``TTS.py``), and the prior noise is drawn on the host so seeded runs are
identical on every backend.

``sovits_prompt`` (HuBERT features → prompt semantic codes; ``ssl_proj`` + nearest code)::

    in   ssl            float32 [B, 768, ssl_frames]   50 Hz, right-padded
    out  codes          int64   [B, code_frames]       code_frames = ssl_frames // 2;
                                                       a row of n valid frames has n // 2 codes

``sovits_ref`` (reference spectrogram → reference vector ``ge``)::

    in   spec           float32 [B, 1025, spec_frames] host linear spectrogram, right-padded
    in   spec_lengths   int64   [B]                    valid frames per row
    in   sv             float32 [B, 20480]             v2Pro/v2ProPlus only (ERes2NetV2)
    out  ge             float32 [B, gin, 1]            Pro: already PReLU(ge + sv_emb(sv))

``sovits_decoder`` (codes + phones + ``ge`` + noise → 32 kHz waveform)::

    in   codes          int64   [B, codes]             25 Hz semantic codes, right-padded
    in   code_lengths   int64   [B]
    in   phones         int64   [B, phones]            phone ids, right-padded
    in   phone_lengths  int64   [B]
    in   ge             float32 [B, gin, 1]            from sovits_ref (or a mean of several)
    in   noise          float32 [B, 192, frames]       standard normal; frames = max(frame_lengths)
    in   noise_scale    float32 [B]                    upstream default 0.5
    in   frame_lengths  int64   [B]                    prior frames per row after the speed
                                                       change: 2·n at speed 1, else
                                                       int(2·n / speed) + 1 (upstream)
    out  wav            float32 [B, samples]           zero past each row's length
    out  wav_lengths    int64   [B]                    frame_lengths · 640

Speed is data: the graph resamples the prior linearly from ``2·code_lengths`` to
``frame_lengths`` frames per row (an exact copy where they are equal), so one graph serves every
speed, per row. The host computes ``frame_lengths`` in Python float64 — exactly upstream's
``int(L / speed) + 1`` — because it must size the noise anyway, and a float32 speed tensor
would round ``L / speed`` differently at some lengths (e.g. ``110 / 1.1``).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np
import torch
from torch import nn

from gsv_export.graph_io import (
    GraphDecl,
    export_onnx,
    tensor,
    to_numpy,
    to_openvino,
)
from gsv_export.parity import Check, ParityReport, relative_max_diff, snr_db
from gsv_export.precision import onnx_fp16
from gsv_models.sovits import SoVITSModel
from gsv_models.version import ModelVersion
from gsv_runtime.acoustic.sovits import DECODER, PROMPT, REF, frame_lengths, pad_rows
from gsv_runtime.audio_features import linear_spectrogram
from gsv_runtime.backends import RunnerOptions, make_runner
from gsv_runtime.bundle import GraphFile, GraphSpec

_LOGGER = logging.getLogger(__name__)


SNR_MIN_DB: Final = 50.0
"""fp32 decoder audio vs torch, same injected noise."""
CODE_MISMATCH_MAX: Final[dict[str, float]] = {"fp32": 0.0, "fp16": 0.05, "bf16": 0.1}
"""Fraction of prompt codes that may differ from torch: rounding moves near-ties between codes
(measured: fp16 ≤ 0.03, bf16 ≤ 0.06 on random features; a wrong codebook gives ≈ 1)."""
REF_RELATIVE_MAX: Final[dict[str, float]] = {"fp32": 1e-4, "fp16": 0.003, "bf16": 0.02}
"""``ge`` max difference relative to its scale (measured: fp16 ≤ 7e-4, bf16 ≤ 8e-3; before
2026-12 the limits were 0.01 and 0.05)."""
LOG_MEL_MAX: Final[dict[str, float]] = {"fp16": 0.02, "bf16": 0.06}
"""Mean |Δ log-mel| (natural log, :func:`log_mel_distance`) of lower-precision decoder audio vs
torch fp32. Measured on tiny and full-size random models: fp16 ≤ 0.004, bf16 ≤ 0.035 (before
2026-12 the limits were 0.05 and 0.1). Broken audio scores above both: a disconnected noise
input ≈ 0.13, another checkpoint or white noise ≥ 0.8, half gain 1.39, silence ≈ 15
(``test_floors_catch_garbage``)."""
NOISE_SCALE: Final = 0.5
SPEEDS: Final = (1.0, 1.25)

_BACKEND_OF_FORMAT: Final = {"onnx": "onnxruntime", "openvino": "openvino"}


# --------------------------------------------------------------------------------------------
# declarations and wrappers


def sovits_decls(model: SoVITSModel) -> dict[str, GraphDecl]:
    """The three graph declarations for ``model``'s config (see the module docstring)."""
    cfg = model.cfg
    meta = {"gsv.model_version": cfg.version.value}
    ref_inputs = {
        "spec": tensor("float32", "batch", cfg.spec_channels, "spec_frames"),
        "spec_lengths": tensor("int64", "batch"),
    }
    if model.is_pro:
        ref_inputs["sv"] = tensor("float32", "batch", cfg.sv_dim)
    return {
        PROMPT: GraphDecl(
            PROMPT,
            {"ssl": tensor("float32", "batch", cfg.ssl_dim, "ssl_frames")},
            {"codes": tensor("int64", "batch", "code_frames")},
            atol=0.0,
            metadata=meta,
        ),
        REF: GraphDecl(
            REF,
            ref_inputs,
            {"ge": tensor("float32", "batch", cfg.gin_channels, 1)},
            atol=REF_RELATIVE_MAX["fp32"],
            metadata=meta,
        ),
        DECODER: GraphDecl(
            DECODER,
            {
                "codes": tensor("int64", "batch", "codes"),
                "code_lengths": tensor("int64", "batch"),
                "phones": tensor("int64", "batch", "phones"),
                "phone_lengths": tensor("int64", "batch"),
                "ge": tensor("float32", "batch", cfg.gin_channels, 1),
                "noise": tensor("float32", "batch", cfg.inter_channels, "frames"),
                "noise_scale": tensor("float32", "batch"),
                "frame_lengths": tensor("int64", "batch"),
            },
            {
                "wav": tensor("float32", "batch", "samples"),
                "wav_lengths": tensor("int64", "batch"),
            },
            atol=1e-4,
            metadata={**meta, "gsv.samples_per_frame": str(model.frame_hop)},
        ),
    }


class PromptGraph(nn.Module):
    """``sovits_prompt``: ``ssl_proj`` (k2 s2) + nearest code."""

    def __init__(self, model: SoVITSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ssl: torch.Tensor) -> torch.Tensor:
        return self.model.extract_latent(ssl)


class RefGraph(nn.Module):
    """``sovits_ref`` of v1/v2: spectrogram → ``ge``."""

    def __init__(self, model: SoVITSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor, spec_lengths: torch.Tensor) -> torch.Tensor:
        return self.model.reference_embedding(spec, spec_lengths)


class ProRefGraph(RefGraph):
    """``sovits_ref`` of v2Pro/v2ProPlus: spectrogram + speaker vector → fused ``ge``."""

    def forward(  # type: ignore[override]
        self, spec: torch.Tensor, spec_lengths: torch.Tensor, sv: torch.Tensor
    ) -> torch.Tensor:
        return self.model.reference_embedding(spec, spec_lengths, sv)


class DecoderGraph(nn.Module):
    """``sovits_decoder``: :meth:`SoVITSModel.decode` with per-row target frames and a [B] noise
    scale; the waveform loses its channel axis."""

    def __init__(self, model: SoVITSModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        codes: torch.Tensor,
        code_lengths: torch.Tensor,
        phones: torch.Tensor,
        phone_lengths: torch.Tensor,
        ge: torch.Tensor,
        noise: torch.Tensor,
        noise_scale: torch.Tensor,
        frame_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        wav, lengths = self.model.decode(
            codes,
            code_lengths,
            phones,
            phone_lengths,
            ge,
            noise_scale=noise_scale,
            noise=noise,
            frame_lengths=frame_lengths,
        )
        return wav.squeeze(1), lengths


def _trace_inputs(model: SoVITSModel, name: str) -> tuple[torch.Tensor, ...]:
    """Small inputs whose dynamic dims are all distinct (so tracing keeps them symbolic)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    if name == PROMPT:
        return (torch.randn(2, cfg.ssl_dim, 22, generator=g),)
    if name == REF:
        spec = torch.rand(2, cfg.spec_channels, 19, generator=g)
        args: tuple[torch.Tensor, ...] = (spec, torch.tensor([19, 13]))
        return (*args, torch.rand(2, cfg.sv_dim, generator=g)) if model.is_pro else args
    code_lengths = torch.tensor([11, 7])
    frames = torch.from_numpy(frame_lengths(code_lengths.tolist(), [1.25, 1.25]))
    return (
        torch.randint(0, cfg.codebook_size, (2, 11), generator=g),
        code_lengths,
        torch.randint(0, cfg.n_symbols, (2, 5), generator=g),
        torch.tensor([5, 3]),
        torch.randn(2, cfg.gin_channels, 1, generator=g),
        torch.randn(2, cfg.inter_channels, int(frames.max()), generator=g),
        torch.full((2,), NOISE_SCALE),
        frames,
    )


def _wrapper(model: SoVITSModel, name: str) -> nn.Module:
    if name == PROMPT:
        return PromptGraph(model)
    if name == REF:
        return ProRefGraph(model) if model.is_pro else RefGraph(model)
    return DecoderGraph(model)


# --------------------------------------------------------------------------------------------
# export


def export_sovits_graphs(
    model: SoVITSModel,
    work_dir: Path,
    formats: Sequence[str] = ("onnx", "openvino"),
    precisions: Sequence[str] = ("fp32",),
) -> dict[str, GraphSpec]:
    """Write the SoVITS graphs under ``work_dir`` and return their manifest entries.

    Files: ``onnx/<graph>[-<precision>].onnx`` and ``openvino/<graph>[-<precision>].xml``
    (GraphSpec paths are relative to ``work_dir``). fp32 is always written. fp16: ONNX converted
    to float16 inside with float32 inputs/outputs (onnxruntime runs it on CPU, slower than fp32
    where the CPU lacks native fp16) and OpenVINO IR with fp16-compressed weights (computed in
    the precision the device is compiled with). bf16: an OpenVINO compile hint only, recorded
    as a variant pointing at the fp32 IR. int8: not offered for SoVITS (the decoder is
    conv-heavy audio where weight quantization is audible and the speed-up small); skipped.

    Raises:
        ValueError: an unknown format or precision.
        gsv_export.graph_io.ExportError: a graph failed to export or convert.
    """
    unknown = [f for f in formats if f not in _BACKEND_OF_FORMAT]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; accepted: onnx, openvino")
    bad = [p for p in precisions if p not in ("fp32", "fp16", "bf16", "int8")]
    if bad:
        raise ValueError(f"unknown precisions {bad}; accepted: fp32, fp16, bf16, int8")
    if "int8" in precisions:
        _LOGGER.info("SoVITS graphs: int8 is not offered (audio decoder); skipping it")
    work_dir = Path(work_dir)
    model = model.eval()
    keep_onnx = "onnx" in formats
    onnx_dir = work_dir / "onnx" if keep_onnx else work_dir / ".sovits-onnx-tmp"
    specs: dict[str, GraphSpec] = {}
    try:
        for name, decl in sovits_decls(model).items():
            onnx_path = export_onnx(
                _wrapper(model, name), _trace_inputs(model, name), decl, onnx_dir / f"{name}.onnx"
            )
            variants = _write_variants(name, onnx_path, work_dir, formats, precisions)
            specs[name] = decl.spec(variants)
    finally:
        if not keep_onnx:
            shutil.rmtree(onnx_dir, ignore_errors=True)
    return specs


def _write_variants(
    name: str,
    onnx_path: Path,
    work_dir: Path,
    formats: Sequence[str],
    precisions: Sequence[str],
) -> list[GraphFile]:
    variants: list[GraphFile] = []

    def rel(path: Path) -> str:
        return path.relative_to(work_dir).as_posix()

    if "onnx" in formats:
        variants.append(GraphFile("onnx", "fp32", rel(onnx_path)))
        if "fp16" in precisions:
            path = onnx_path.with_name(f"{name}-fp16.onnx")
            onnx_fp16(onnx_path, path, name)
            variants.append(GraphFile("onnx", "fp16", rel(path)))
    if "openvino" in formats:
        xml = to_openvino(onnx_path, work_dir / "openvino" / f"{name}.xml")
        variants.append(GraphFile("openvino", "fp32", rel(xml)))
        if "fp16" in precisions:
            xml16 = to_openvino(onnx_path, xml.with_name(f"{name}-fp16.xml"), fp16_weights=True)
            variants.append(GraphFile("openvino", "fp16", rel(xml16)))
        if "bf16" in precisions:
            variants.append(GraphFile("openvino", "bf16", rel(xml)))
    return variants


# --------------------------------------------------------------------------------------------
# parity


def log_mel(
    wav: np.ndarray, sample_rate: int = 32000, n_fft: int = 1024, n_mels: int = 80
) -> np.ndarray:
    """Natural-log mel spectrogram ``[frames, n_mels]`` (Hann, hop n_fft/4, HTK mel, floor 1e-5)."""
    wav = np.asarray(wav, dtype=np.float64).ravel()
    hop = n_fft // 4
    if wav.size < n_fft:
        wav = np.pad(wav, (0, n_fft - wav.size))
    frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2  # (F, n_fft/2+1)
    top = 2595.0 * np.log10(1.0 + sample_rate / 2 / 700.0)  # HTK mel of Nyquist
    edges = 700.0 * (10 ** (np.linspace(0, top, n_mels + 2) / 2595.0) - 1)  # Hz
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return np.log(np.maximum(power @ bank.T, 1e-5))


def log_mel_distance(reference: np.ndarray, test: np.ndarray, sample_rate: int = 32000) -> float:
    """Mean |Δ log-mel| between two waveforms of equal length (0 = identical spectra).

    Scale: ~0.001 for fp16 and ~0.01–0.035 for bf16 rounding of the decoder; ≈ 0.13 when the
    prior noise is dropped, ≈ 0.19 for another noise draw, ≥ 0.8 for white noise of the same
    loudness or another checkpoint's audio, log(4) for half gain. Unequal lengths score
    infinity.
    """
    reference, test = np.ravel(reference), np.ravel(test)
    if reference.shape != test.shape:
        return math.inf
    return float(np.mean(np.abs(log_mel(reference, sample_rate) - log_mel(test, sample_rate))))


def _probe_audio(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """A harmonic tone with a little noise: a stand-in reference clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 100.0 + 150.0 * rng.random()
    wav = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 9))
    return (0.1 * wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@dataclass(frozen=True)
class ParityCase:
    """One input set of one graph; ``speed`` is what the torch reference decodes at."""

    graph: str
    name: str
    feeds: dict[str, np.ndarray]
    speed: float = 1.0


def parity_cases(model: SoVITSModel, seed: int = 0) -> list[ParityCase]:
    """Feeds for every graph on a small shape grid.

    Decoder cases: a batch of two rows of different lengths at each of :data:`SPEEDS` and a
    batch of one; ``ge`` comes from torch on two synthetic references, so it is realistic.
    """
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    specs = [
        linear_spectrogram(_probe_audio(s, cfg.sampling_rate, seed + i))
        for i, s in enumerate((1.6, 1.0))
    ]
    ref = {
        "spec": pad_rows(specs),
        "spec_lengths": np.array([s.shape[-1] for s in specs], dtype=np.int64),
    }
    if model.is_pro:
        ref["sv"] = np.abs(rng.standard_normal((2, cfg.sv_dim))).astype(np.float32)
    ge = torch_outputs(model, ParityCase(REF, "b2", ref))["ge"]
    cases = [
        ParityCase(PROMPT, "b2", {"ssl": _randn(rng, 2, cfg.ssl_dim, 201)}),
        ParityCase(PROMPT, "b1", {"ssl": _randn(rng, 1, cfg.ssl_dim, 60)}),
        ParityCase(REF, "b2", ref),
    ]
    n_codes, n_phones = [23, 14], [11, 6]
    codes = [rng.integers(0, cfg.codebook_size, n) for n in n_codes]
    phones = [rng.integers(0, cfg.n_symbols, n) for n in n_phones]
    grid = [(f"b2-speed{s:g}", [0, 1], s) for s in SPEEDS] + [("b1-speed1", [1], 1.0)]
    for case, rows, speed in grid:
        frames = frame_lengths([n_codes[i] for i in rows], [speed] * len(rows))
        feeds = {
            "codes": pad_rows([codes[i] for i in rows], 7, "int64"),
            "code_lengths": np.array([n_codes[i] for i in rows], dtype=np.int64),
            "phones": pad_rows([phones[i] for i in rows], 3, "int64"),
            "phone_lengths": np.array([n_phones[i] for i in rows], dtype=np.int64),
            "ge": np.ascontiguousarray(ge[rows]),
            "noise": _randn(rng, len(rows), cfg.inter_channels, int(frames.max())),
            "noise_scale": np.full(len(rows), NOISE_SCALE, dtype=np.float32),
            "frame_lengths": frames,
        }
        cases.append(ParityCase(DECODER, case, feeds, speed))
    return cases


def _randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def torch_outputs(model: SoVITSModel, case: ParityCase) -> dict[str, np.ndarray]:
    """The reference outputs for a case, from the torch model (decoder: at ``case.speed``)."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in case.feeds.items()}
    with torch.no_grad():
        if case.graph == PROMPT:
            return {"codes": to_numpy(model.extract_latent(t["ssl"]))}
        if case.graph == REF:
            ge = model.reference_embedding(t["spec"], t["spec_lengths"], t.get("sv"))
            return {"ge": to_numpy(ge)}
        wav, lengths = model.decode(
            t["codes"],
            t["code_lengths"],
            t["phones"],
            t["phone_lengths"],
            t["ge"],
            noise_scale=t["noise_scale"],
            noise=t["noise"],
            speed=case.speed,
        )
        return {"wav": to_numpy(wav[:, 0]), "wav_lengths": to_numpy(lengths)}


def verify_sovits(
    work_dir: Path,
    specs: dict[str, GraphSpec],
    model: SoVITSModel,
    version: ModelVersion | str | None = None,
    options: RunnerOptions | None = None,
) -> ParityReport:
    """Run every variant of every graph on its backend and compare with torch.

    fp32: prompt codes identical; ``ge`` within the graph's relative tolerance; decoder audio
    within the relative tolerance, with the same lengths and an SNR of at least
    :data:`SNR_MIN_DB` per row (same injected noise, noise scale 0.5, speeds 1 and 1.25).
    fp16/bf16: code mismatch, ``ge`` deviation and the decoder's log-mel distance against the
    floors :data:`CODE_MISMATCH_MAX`, :data:`REF_RELATIVE_MAX`, :data:`LOG_MEL_MAX`.

    Args:
        work_dir: the directory the GraphSpec paths are relative to.
        specs: what :func:`export_sovits_graphs` returned (any subset of the graphs).
        model: the torch model that was exported.
        version: the checkpoint's version, checked against the model's and used in check names.
        options: runner device/threads (the precision hint is set per variant: bf16 for the
            bf16 variant, f32 otherwise).

    Raises:
        ValueError: ``version`` differs from the model's.
    """
    model_version = model.cfg.version
    if isinstance(version, str) and not isinstance(version, ModelVersion):
        version = ModelVersion.parse(version)
    if version is not None and version is not model_version:
        raise ValueError(f"version {version} does not match the model's {model_version.value}")
    options = options or RunnerOptions()
    cases = [c for c in parity_cases(model) if c.graph in specs]
    expected = [torch_outputs(model, c) for c in cases]
    report = ParityReport()
    for name, spec in specs.items():
        for variant in spec.variants:
            backend = _BACKEND_OF_FORMAT[variant.format]
            hint = "bf16" if variant.precision == "bf16" else "f32"
            runner = make_runner(
                Path(work_dir) / variant.path, backend, replace(options, precision_hint=hint)
            )
            prefix = f"{model_version.value}/{name}/{backend}/{variant.precision}"
            for case, ref in zip(cases, expected, strict=True):
                if case.graph == name:
                    got = runner.run(case.feeds)
                    checks = _checks(case, ref, got, variant.precision, spec.atol)
                    for what, value, limit, higher in checks:
                        report.add(Check(f"{prefix}/{case.name}/{what}", value, limit, higher))
    return report


def _checks(
    case: ParityCase,
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    precision: str,
    atol: float,
) -> list[tuple[str, float, float, bool]]:
    """(what, value, limit, higher_is_better) for one run of one case."""
    if case.graph == PROMPT:
        same = ref["codes"].shape == got["codes"].shape
        wrong = float(np.mean(ref["codes"] != got["codes"])) if same else 1.0
        return [("codes_mismatch", wrong, CODE_MISMATCH_MAX[precision], False)]
    if case.graph == REF:
        limit = atol if precision == "fp32" else REF_RELATIVE_MAX[precision]
        return [("ge_rel", relative_max_diff(ref["ge"], got["ge"]), limit, False)]
    lengths_ok = np.array_equal(ref["wav_lengths"], got["wav_lengths"])
    out = [("wav_lengths_mismatch", 0.0 if lengths_ok else 1.0, 0.0, False)]
    if not lengths_ok or ref["wav"].shape != got["wav"].shape:
        return [*out, ("wav_shape_mismatch", 1.0, 0.0, False)]
    rows = [
        (ref["wav"][i, :n], got["wav"][i, :n]) for i, n in enumerate(ref["wav_lengths"].tolist())
    ]
    if precision == "fp32":
        snr = min(snr_db(r, g) for r, g in rows)
        return [
            *out,
            ("wav_rel", relative_max_diff(ref["wav"], got["wav"]), atol, False),
            ("wav_snr_db", snr, SNR_MIN_DB, True),
        ]
    distance = max(log_mel_distance(r, g) for r, g in rows)
    return [*out, ("wav_log_mel", distance, LOG_MEL_MAX[precision], False)]
