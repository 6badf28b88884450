"""v3/v4/v5 SoVITS graphs (CFM + vocoder): declarations, traceable wrappers, export and parity.

Six graphs; ``B`` is the batch. The Euler loop, the sampler settings, chunking, the reference
mel and the start noise stay on the host (:mod:`gsv_runtime.acoustic.cfm`).

``sovits_prompt`` and ``sovits_ref``: as for v2 (:mod:`gsv_export.sovits`); v3/v4 take no
speaker vector.

``cfm_encoder`` (upstream ``SynthesizerTrnV3.decode_encp`` after ``ge``)::

    in   codes            int64   [B, codes]          25 Hz semantic codes, right-padded
    in   code_lengths     int64   [B]
    in   phones           int64   [B, phones]         v2 phone ids, right-padded
    in   phone_lengths    int64   [B]
    in   ge               float32 [B, gin, 1]
    in   frame_lengths    int64   [B]                 50 Hz frames after the speed change:
                                                      2·n, else int(2·n / speed) + 1
    in   feature_lengths  int64   [B]                 unmasked mel-rate frames (upstream's
                                                      wns1 mask, see acoustic.cfm)
    out  features         float32 [B, text_dim, frames]  frames = floor(max(frame_lengths) ·
                                                      1.875 (v3) | 2 (v4)); zero past a row's
                                                      feature_lengths

``cfm_embed`` (once per chunk: the DiT's text and step-size embeddings)::

    in   features         float32 [B, text_dim, T]    [prompt | chunk] features, unpadded
    in   dt               float32 [B]                 1 / sample_steps (v3/v4 only)
    out  text             float32 [B, T, text_dim]
    out  step             float32 [B, dim]            (v3/v4 only: v5's DiT has no step
                                                      embedding, so neither ``dt`` nor ``step``)

``cfm_step`` (one DiT velocity; the host integrates ``x += dt · v``)::

    in   x                float32 [B, mel, T]         noisy mel (prompt frames zero)
    in   cond             float32 [B, mel, T]         prompt mel, zero past the prompt
    in   text             float32 [B, T, text_dim]    from cfm_embed
    in   time             float32 [B]                 flow time in [0, 1)
    in   step             float32 [B, dim]            from cfm_embed (v3/v4 only)
    in   lengths          int64   [B]                 valid frames (keys past them masked)
    out  v                float32 [B, mel, T]

``cfm_vocoder`` (v3: BigVGAN-v2 24 kHz; v4/v5: HiFiGAN-style generator 48 kHz)::

    in   mel              float32 [B, mel, frames]    denormalised log-mel
    out  wav              float32 [B, samples]        frames · 256 (v3) | 480 (v4)
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gsv_export.graph_io import GraphDecl, export_onnx, tensor, to_numpy, to_openvino
from gsv_export.parity import Check, ParityReport, relative_max_diff, snr_db
from gsv_export.precision import onnx_fp16, onnx_int8, openvino_int8_static
from gsv_export.sovits import PromptGraph, RefGraph, _probe_audio
from gsv_models.cfm import (
    V5_MAX_TARGET_FRAMES,
    V5_REFERENCE_FRAMES,
    V5_TAIL_FRAMES,
    V5_TOTAL_FRAMES,
    sampler_for,
)
from gsv_models.modules import sequence_mask
from gsv_models.sovits_v3 import MASK_FRAMES_PER_CODE, SoVITSV3Model
from gsv_models.version import ModelVersion
from gsv_runtime.acoustic import NoiseSource, VocodeJob
from gsv_runtime.acoustic.cfm import (
    EMBED,
    ENCODER,
    STEP,
    VOCODER,
    CfmParams,
    CfmStage,
    feature_lengths,
    stretched_frames,
)
from gsv_runtime.acoustic.sovits import PROMPT, REF, pad_rows
from gsv_runtime.audio_features import linear_spectrogram
from gsv_runtime.backends import GraphRunner, RunnerOptions, make_runner
from gsv_runtime.bundle import GraphFile, GraphFormat, GraphSpec
from gsv_runtime.errors import CheckpointError
from gsv_runtime.variants import variant_options
from gsv_runtime.voice import Voice

SNR_MIN_DB: Final = 60.0
"""fp32 outputs vs torch, per output and case."""
LOW_PRECISION_SNR_MIN_DB: Final[dict[str, float]] = {"fp16": 40.0, "bf16": 25.0, "int8": 20.0}
"""Lower-precision variants vs torch fp32, per output. Measured on tiny v3/v4: fp16 (ONNX
float16 compute, OpenVINO fp16 weights) 48.9–70 dB, OpenVINO bf16 31.5–46 dB; a graph fed
the wrong input or weights scores near 0 dB. int8 (the DiT step; the other graphs' int8
variant is their bf16 compile, held to bf16's floor): tiny v4 / v5turbo 26.1–36.1 dB; end to
end, tiny v4 audio 40.7 dB from torch (``test_int8_stage_tracks_torch``)."""
REF_RELATIVE_MAX: Final = 1e-4
T_REF: Final[dict[ModelVersion, int]] = {
    ModelVersion.V3: 468,
    ModelVersion.V4: 500,
    ModelVersion.V5DEV: V5_REFERENCE_FRAMES,
    ModelVersion.V5TURBO: V5_REFERENCE_FRAMES,
}
"""Most prompt frames a chunk carries (upstream ``TTS.py::init_vocoder``, ``v5_inference``)."""
T_CHUNK: Final[dict[ModelVersion, int]] = {
    ModelVersion.V3: 934,
    ModelVersion.V4: 1000,
    ModelVersion.V5DEV: V5_TOTAL_FRAMES,
    ModelVersion.V5TURBO: V5_TOTAL_FRAMES,
}
"""Prompt + target frames of one chunk."""
REF_MEL: Final[dict[ModelVersion, dict[str, Any]]] = {
    ModelVersion.V3: {
        "sample_rate": 24000,
        "n_fft": 1024,
        "hop": 256,
        "win": 1024,
        "n_mels": 100,
        "fmin": 0.0,
        "fmax": None,
    },
    ModelVersion.V4: {
        "sample_rate": 32000,
        "n_fft": 1280,
        "hop": 320,
        "win": 1280,
        "n_mels": 100,
        "fmin": 0.0,
        "fmax": None,
    },
}
REF_MEL[ModelVersion.V5DEV] = REF_MEL[ModelVersion.V5TURBO] = REF_MEL[ModelVersion.V4]
"""Reference mel of upstream ``TTS.py`` (``mel_fn`` / ``mel_fn_v4``; v5 uses v4's)."""
SPEC_MIN: Final = -12.0
SPEC_MAX: Final = 2.0
SPEEDS: Final = (1.0, 1.25)

_BACKEND_OF_FORMAT: Final = {"onnx": "onnxruntime", "openvino": "openvino"}


# --------------------------------------------------------------------------------------------
# vocoder and manifest


def load_vocoder(version: ModelVersion, path: str | Path) -> nn.Module:
    """The vocoder a v3 (BigVGAN model folder) or v4 (``vocoder.pth``) voice uses, eval mode.

    Raises:
        CheckpointError: a missing path, or a vocoder of the other kind.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: vocoder not found")
    if version is ModelVersion.V3:
        from gsv_models.bigvgan import load_bigvgan

        if not path.is_dir():
            raise CheckpointError(
                f"{path}: a v3 voice needs the BigVGAN model folder (config.json + "
                "bigvgan_generator.pt, upstream's models--nvidia--bigvgan_v2_24khz_100band_256x)"
            )
        return load_bigvgan(path).eval()
    from gsv_models.vocoder_v4 import load_v4_vocoder

    if path.is_dir():
        raise CheckpointError(
            f"{path}: a {version.value} voice needs upstream's vocoder.pth, not a folder"
        )
    return load_v4_vocoder(path).eval()


def vocoder_rate(version: ModelVersion, vocoder: nn.Module) -> tuple[int, int]:
    """``(sample_rate, samples per mel frame)`` of a vocoder."""
    if version is ModelVersion.V3:
        return int(vocoder.cfg.sampling_rate), int(vocoder.cfg.hop)  # type: ignore[union-attr]
    return 48000, int(math.prod(vocoder.upsample_rates))  # type: ignore[arg-type]


def cfm_audio_section(
    model: SoVITSV3Model, vocoder: nn.Module, steps: int | None = None
) -> dict[str, Any]:
    """The manifest's ``audio`` section of a v3/v4/v5 voice (what ``acoustic.cfm`` reads): the
    sampler defaults and limits of its version and its chunking policy."""
    version = model.cfg.version
    sampler = sampler_for(version, steps)
    v5 = version.is_v5
    s2 = model.cfg.sovits
    rate, hop = vocoder_rate(version, vocoder)
    mel = REF_MEL[version]
    if rate * (mel["hop"] / mel["sample_rate"]) != hop:
        raise CheckpointError(
            f"the vocoder makes {hop} samples per frame at {rate} Hz; a {version.value} voice's "
            f"mels need {rate * mel['hop'] // mel['sample_rate']}"
        )
    return {
        "family": "cfm",
        "sample_rate": rate,
        "samples_per_frame": hop,
        "samples_per_token": round(2 * model.cfg.feature_upsample * hop),
        "hop_length": s2.hop_length,
        "ref_sample_rate": s2.sampling_rate,
        "ssl_sample_rate": 16000,
        "spec": {"n_fft": s2.filter_length, "hop": s2.hop_length, "win": s2.win_length},
        "mel": dict(mel),
        "cfm": {
            "feature_upsample": model.cfg.feature_upsample,
            "mask_frames_per_code": MASK_FRAMES_PER_CODE[version],
            "spec_min": SPEC_MIN,
            "spec_max": SPEC_MAX,
            "t_ref": T_REF[version],
            "t_chunk": T_CHUNK[version],
            "steps": sampler.steps,
            "temperature": sampler.temperature,
            "cfg_rate": sampler.cfg_rate,
            "cfg_drops_text": sampler.cfg_drops_text,
            "allowed_steps": list(sampler.allowed_steps) if sampler.allowed_steps else None,
            "max_cfg_rate": sampler.max_cfg_rate,
            "tail_frames": V5_TAIL_FRAMES if v5 else 0,
            "max_target_frames": V5_MAX_TARGET_FRAMES if v5 else 0,
        },
    }


# --------------------------------------------------------------------------------------------
# declarations and wrappers


def cfm_decls(model: SoVITSV3Model, vocoder: nn.Module) -> dict[str, GraphDecl]:
    """The six graph declarations (see the module docstring)."""
    s2, dit = model.cfg.sovits, model.cfg.dit
    meta = {"gsv.model_version": model.cfg.version.value}
    _, hop = vocoder_rate(model.cfg.version, vocoder)
    mel, text = dit.mel_dim, dit.text_dim
    # v5's DiT has no step embedding: no dt into cfm_embed, no step out of it or into cfm_step
    embed_in = {"features": tensor("float32", "batch", text, "frames")}
    embed_out = {"text": tensor("float32", "batch", "frames", text)}
    step_in = {
        "x": tensor("float32", "batch", mel, "frames"),
        "cond": tensor("float32", "batch", mel, "frames"),
        "text": tensor("float32", "batch", "frames", text),
        "time": tensor("float32", "batch"),
    }
    if dit.step_embedding:
        embed_in["dt"] = tensor("float32", "batch")
        embed_out["step"] = tensor("float32", "batch", dit.dim)
        step_in["step"] = tensor("float32", "batch", dit.dim)
    step_in["lengths"] = tensor("int64", "batch")
    return {
        PROMPT: GraphDecl(
            PROMPT,
            {"ssl": tensor("float32", "batch", s2.ssl_dim, "ssl_frames")},
            {"codes": tensor("int64", "batch", "code_frames")},
            atol=0.0,
            metadata=meta,
        ),
        REF: GraphDecl(
            REF,
            {
                "spec": tensor("float32", "batch", s2.spec_channels, "spec_frames"),
                "spec_lengths": tensor("int64", "batch"),
            },
            {"ge": tensor("float32", "batch", s2.gin_channels, 1)},
            atol=REF_RELATIVE_MAX,
            metadata=meta,
        ),
        ENCODER: GraphDecl(
            ENCODER,
            {
                "codes": tensor("int64", "batch", "codes"),
                "code_lengths": tensor("int64", "batch"),
                "phones": tensor("int64", "batch", "phones"),
                "phone_lengths": tensor("int64", "batch"),
                "ge": tensor("float32", "batch", s2.gin_channels, 1),
                "frame_lengths": tensor("int64", "batch"),
                "feature_lengths": tensor("int64", "batch"),
            },
            {"features": tensor("float32", "batch", text, "frames")},
            metadata=meta,
        ),
        EMBED: GraphDecl(EMBED, embed_in, embed_out, metadata=meta),
        STEP: GraphDecl(
            STEP, step_in, {"v": tensor("float32", "batch", mel, "frames")}, metadata=meta
        ),
        VOCODER: GraphDecl(
            VOCODER,
            {"mel": tensor("float32", "batch", mel, "frames")},
            {"wav": tensor("float32", "batch", "samples")},
            metadata={**meta, "gsv.samples_per_frame": str(hop)},
        ),
    }


class EncoderGraph(nn.Module):
    """``cfm_encoder``: :meth:`SoVITSV3Model.decode_features` with the speed as per-row lengths.

    The host computes ``frame_lengths`` and ``feature_lengths`` in float64 exactly as upstream
    (a float speed inside the graph would round some lengths differently).
    """

    def __init__(self, model: SoVITSV3Model) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        codes: torch.Tensor,
        code_lengths: torch.Tensor,
        phones: torch.Tensor,
        phone_lengths: torch.Tensor,
        ge: torch.Tensor,
        frame_lengths: torch.Tensor,
        feature_lengths: torch.Tensor,
    ) -> torch.Tensor:
        m = self.model
        quantized = m.quantizer.decode(codes)  # (B, ssl_dim, T)
        quantized = F.interpolate(quantized, size=2 * quantized.shape[2], mode="nearest")
        x, _, _ = m.enc_p.content(
            quantized, 2 * code_lengths, phones, phone_lengths, ge, frame_lengths=frame_lengths
        )
        fea = F.interpolate(m.bridge(x), scale_factor=m.cfg.feature_upsample, mode="nearest")
        mask = sequence_mask(feature_lengths, fea.shape[2]).unsqueeze(1).to(fea.dtype)
        return m.wns1(fea, mask, ge)  # (B, text_dim, F)


class EmbedGraph(nn.Module):
    """``cfm_embed``: the DiT's per-chunk text embedding and step-size embedding (the latter
    only with a step embedding: ``dt`` is then the second input)."""

    def __init__(self, model: SoVITSV3Model) -> None:
        super().__init__()
        self.dit = model.cfm.estimator

    def forward(self, features: torch.Tensor, *dt: torch.Tensor) -> Any:
        text = self.dit.embed_text(features)
        return (text, self.dit.embed_step(dt[0])) if dt else text


class StepGraph(nn.Module):
    """``cfm_step``: one :meth:`DiT.velocity` call."""

    def __init__(self, model: SoVITSV3Model) -> None:
        super().__init__()
        self.dit = model.cfm.estimator

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        time: torch.Tensor,
        *step_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """``step_lengths``: ``(step, lengths)``, or ``(lengths,)`` for a DiT without a step
        embedding (v5)."""
        step = step_lengths[0] if len(step_lengths) == 2 else None
        return self.dit.velocity(x, cond, text, time, step, step_lengths[-1])


class VocoderGraph(nn.Module):
    """``cfm_vocoder``: mel → waveform without the channel axis."""

    def __init__(self, vocoder: nn.Module) -> None:
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vocoder(mel).squeeze(1)


class _StaticLayerNorm:
    """``torch.nn.functional`` whose ``layer_norm`` takes its shape as plain ints.

    The DiT normalises with ``x.shape[-1:]``, which the TorchScript tracer records as a
    dynamic shape that ONNX's LayerNormalization cannot take; the width is fixed anyway.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)

    @staticmethod
    def layer_norm(x: torch.Tensor, shape: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return F.layer_norm(x, tuple(int(s) for s in shape), *args, **kwargs)


@contextmanager
def _patched_for_export() -> Iterator[None]:
    """Patch the DiT module's functional namespace while tracing (the model is unchanged)."""
    import gsv_models.dit as dit_module

    original = dit_module.F
    dit_module.F = _StaticLayerNorm()  # type: ignore[assignment]
    try:
        yield
    finally:
        dit_module.F = original


def _wrapper(model: SoVITSV3Model, vocoder: nn.Module, name: str) -> nn.Module:
    wrappers = {
        PROMPT: lambda: PromptGraph(model),  # type: ignore[arg-type]
        REF: lambda: RefGraph(model),  # type: ignore[arg-type]
        ENCODER: lambda: EncoderGraph(model),
        EMBED: lambda: EmbedGraph(model),
        STEP: lambda: StepGraph(model),
        VOCODER: lambda: VocoderGraph(vocoder),
    }
    return wrappers[name]()


def _trace_inputs(model: SoVITSV3Model, name: str) -> tuple[torch.Tensor, ...]:
    """Small inputs whose dynamic dims are all distinct (so tracing keeps them symbolic)."""
    s2, dit = model.cfg.sovits, model.cfg.dit
    g = torch.Generator().manual_seed(0)
    if name == PROMPT:
        return (torch.randn(2, s2.ssl_dim, 22, generator=g),)
    if name == REF:
        return (torch.rand(2, s2.spec_channels, 19, generator=g), torch.tensor([19, 13]))
    if name == ENCODER:
        n = [11, 7]
        frames = stretched_frames(n, [1.25, 1.25])
        version = model.cfg.version
        lengths = feature_lengths(
            n, [1.25, 1.25], model.cfg.feature_upsample, MASK_FRAMES_PER_CODE[version]
        )
        return (
            torch.randint(0, s2.codebook_size, (2, 11), generator=g),
            torch.tensor(n),
            torch.randint(0, s2.n_symbols, (2, 5), generator=g),
            torch.tensor([5, 3]),
            torch.randn(2, s2.gin_channels, 1, generator=g),
            torch.from_numpy(frames),
            torch.from_numpy(lengths),
        )
    if name == EMBED:
        dt = (torch.full((2,), 1 / 8),) if dit.step_embedding else ()
        return (torch.randn(2, dit.text_dim, 17, generator=g), *dt)
    if name == STEP:
        t = 17
        step = (torch.randn(2, dit.dim, generator=g),) if dit.step_embedding else ()
        return (
            torch.randn(2, dit.mel_dim, t, generator=g),
            torch.randn(2, dit.mel_dim, t, generator=g),
            torch.randn(2, t, dit.text_dim, generator=g),
            torch.tensor([0.25, 0.5]),
            *step,
            torch.tensor([17, 12]),
        )
    return (torch.randn(2, dit.mel_dim, 9, generator=g) - 5,)


# --------------------------------------------------------------------------------------------
# export


def export_cfm_graphs(
    model: SoVITSV3Model,
    vocoder: nn.Module,
    work_dir: Path,
    formats: Sequence[str] = ("onnx", "openvino"),
    precisions: Sequence[str] = ("fp32",),
) -> dict[str, GraphSpec]:
    """Write the six v3/v4 graphs under ``work_dir`` and return their manifest entries.

    fp32 is always written. fp16: ONNX converted to float16 inside (float32 I/O) and OpenVINO
    IR with fp16-compressed weights; bf16: an OpenVINO compile hint on the fp32 IR (as for
    v2); int8: on OpenVINO the DiT step statically quantized by NNCF (weights and
    activations, calibrated on :func:`step_calibration`), every graph compiled with the bf16
    hint (``variant_options``), so the other graphs' int8 variant is their bf16 one; on ONNX
    the DiT step's weights per output channel with activations quantized at run time
    (onnxruntime's dynamic int8), the other graphs' int8 variant their fp32 file.

    Raises:
        ValueError: an unknown format.
        gsv_export.graph_io.ExportError: a graph failed to export or convert.
    """
    unknown = [f for f in formats if f not in _BACKEND_OF_FORMAT]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; accepted: onnx, openvino")
    work_dir = Path(work_dir)
    model, vocoder = model.eval(), vocoder.eval()
    keep_onnx = "onnx" in formats
    onnx_dir = work_dir / "onnx" if keep_onnx else work_dir / ".cfm-onnx-tmp"
    specs: dict[str, GraphSpec] = {}
    try:
        for name, decl in cfm_decls(model, vocoder).items():
            with _patched_for_export():
                onnx_path = export_onnx(
                    _wrapper(model, vocoder, name),
                    _trace_inputs(model, name),
                    decl,
                    onnx_dir / f"{name}.onnx",
                )
            specs[name] = decl.spec(_write_variants(onnx_path, work_dir, formats, precisions))
    finally:
        if not keep_onnx:
            shutil.rmtree(onnx_dir, ignore_errors=True)
    if "int8" in precisions and "onnx" in formats:
        specs = _add_onnx_int8(work_dir, specs)
    if "int8" in precisions and "openvino" in formats:
        specs = _add_int8(model, vocoder, work_dir, specs)
    return specs


def _add_onnx_int8(work_dir: Path, specs: dict[str, GraphSpec]) -> dict[str, GraphSpec]:
    """The ONNX int8 variant of every graph: the DiT step with dynamic int8 projections (except
    :data:`DIT_FLOAT_NODES`), the others' fp32 file. Full-size v3 step over 655 frames on 2
    AVX2 cores (no VNNI), interleaved: 1426–1666 vs 2093–2465 ms fp32, velocity 39.4 dB from
    fp32 on random feeds."""
    step = work_dir / _fp32_path(specs[STEP], "onnx")
    onnx8 = onnx_int8(step, step.with_name(f"{STEP}-int8.onnx"), STEP, DIT_FLOAT_NODES)
    return _with_int8(specs, "onnx", onnx8.relative_to(work_dir).as_posix())


def _add_int8(
    model: SoVITSV3Model, vocoder: nn.Module, work_dir: Path, specs: dict[str, GraphSpec]
) -> dict[str, GraphSpec]:
    """The OpenVINO int8 variant of every graph: the quantized DiT step, the others' fp32 IR."""
    calibration = step_calibration(model, vocoder, work_dir, specs)
    step = work_dir / _fp32_path(specs[STEP], "openvino")
    xml8 = openvino_int8_static(
        step, step.with_name(f"{STEP}-int8.xml"), calibration, DIT_FLOAT_NODES
    )
    return _with_int8(specs, "openvino", xml8.relative_to(work_dir).as_posix())


def _with_int8(specs: dict[str, GraphSpec], fmt: GraphFormat, step: str) -> dict[str, GraphSpec]:
    """Every graph with an int8 variant of format ``fmt``: ``step`` for the DiT step, the
    graph's fp32 file of that format for the others."""
    return {
        name: replace(
            spec,
            variants=(
                *spec.variants,
                GraphFile(fmt, "int8", step if name == STEP else _fp32_path(spec, fmt)),
            ),
        )
        for name, spec in specs.items()
    }


def _fp32_path(spec: GraphSpec, fmt: GraphFormat) -> str:
    variant = spec.variant(fmt, "fp32")
    assert variant is not None  # export_cfm_graphs wrote it
    return variant.path


DIT_FLOAT_NODES: Final = ("/input_embed/proj/MatMul", "/proj_out/MatMul")
"""DiT projections the int8 step keeps float (bf16): the input projection (noisy mel, prompt
mel and text in) and the output one (the velocity out). Full-size v5turbo, calibrated on the
synthetic voice of :func:`step_calibration` and heard on another voice: audio 28.4 dB from
fp32 (log-mel distance 0.038) with both kept float, 14.8 dB (0.176) with everything int8;
same speed (2.93 s for a 2 s segment at 4 steps)."""
CALIBRATION_JOBS: Final = 3
CALIBRATION_STEPS: Final = 4


def step_calibration(
    model: SoVITSV3Model, vocoder: nn.Module, work_dir: Path, specs: dict[str, GraphSpec]
) -> list[dict[str, np.ndarray]]:
    """DiT step feeds for int8 calibration, recorded from the runtime's own CFM stage on the
    fp32 OpenVINO graphs: a synthetic reference voice, :data:`CALIBRATION_JOBS` segments of 50
    random tokens, :data:`CALIBRATION_STEPS` Euler steps with the version's guidance.

    Real step inputs matter: calibrated on the parity cases' short synthetic feeds instead, a
    full-size v5turbo's int8 audio was 13.6 dB from fp32 (log-mel distance 0.20), all layers
    int8 either way; see :data:`DIT_FLOAT_NODES` for what generalises to other voices.
    """
    audio = cfm_audio_section(model, vocoder)
    params = replace(CfmParams.from_audio(audio, str(work_dir)), steps=CALIBRATION_STEPS)
    options = RunnerOptions()
    runners = {
        name: make_runner(work_dir / _fp32_path(spec, "openvino"), "openvino", options)
        for name, spec in specs.items()
    }
    recorded: list[dict[str, np.ndarray]] = []
    runners[STEP] = _Recording(runners[STEP], recorded)
    stage = CfmStage(specs, runners, params)
    rng = np.random.default_rng(0)
    s2 = model.cfg.sovits
    wav = _probe_audio(3.0, s2.sampling_rate, 0)
    voice = Voice(
        prompt_tokens=rng.integers(0, s2.codebook_size, 75),
        prompt_phones=rng.integers(0, s2.n_symbols, 20),
        prompt_bert=np.zeros((20, 1024), np.float32),
        ge=stage.reference(linear_spectrogram(wav)),
        ref_mel=stage.reference_mel(wav, s2.sampling_rate),
    )
    for seed in range(CALIBRATION_JOBS):
        tokens = rng.integers(0, s2.codebook_size, 50)
        phones = rng.integers(0, s2.n_symbols, 20)
        stage.synthesize(VocodeJob(tokens, phones, voice, NoiseSource((seed, 0))))
    return recorded


class _Recording:
    """A graph runner that keeps a copy of every feed it runs."""

    def __init__(self, inner: GraphRunner, into: list[dict[str, np.ndarray]]) -> None:
        self._inner, self._into = inner, into
        self.input_names, self.output_names = inner.input_names, inner.output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._into.append({k: np.array(v) for k, v in feeds.items()})
        return self._inner.run(feeds)


def _write_variants(
    onnx_path: Path, work_dir: Path, formats: Sequence[str], precisions: Sequence[str]
) -> list[GraphFile]:
    name = onnx_path.stem
    variants: list[GraphFile] = []

    def rel(path: Path) -> str:
        return path.relative_to(work_dir).as_posix()

    if "onnx" in formats:
        variants.append(GraphFile("onnx", "fp32", rel(onnx_path)))
        if "fp16" in precisions:
            path = onnx_fp16(onnx_path, onnx_path.with_name(f"{name}-fp16.onnx"), name)
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


@dataclass(frozen=True)
class ParityCase:
    """One input set of one graph; ``speed`` is what the torch encoder decodes at."""

    graph: str
    name: str
    feeds: dict[str, np.ndarray]
    speed: float = 1.0


def _randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def parity_cases(model: SoVITSV3Model, seed: int = 0) -> list[ParityCase]:
    """Feeds for every graph on a small grid; downstream inputs come from torch upstream
    stages (``ge`` → features → text embedding), so they are realistic."""
    s2, dit = model.cfg.sovits, model.cfg.dit
    version = model.cfg.version
    rng = np.random.default_rng(seed)
    specs = [
        linear_spectrogram(_probe_audio(s, s2.sampling_rate, seed + i))
        for i, s in enumerate((1.6, 1.0))
    ]
    ref = {
        "spec": pad_rows(specs),
        "spec_lengths": np.array([s.shape[-1] for s in specs], dtype=np.int64),
    }
    ge = torch_outputs(model, None, ParityCase(REF, "b2", ref))["ge"]
    cases = [
        ParityCase(PROMPT, "b2", {"ssl": _randn(rng, 2, s2.ssl_dim, 41)}),
        ParityCase(REF, "b2", ref),
    ]
    n_codes, n_phones = [23, 14], [11, 6]
    codes = [rng.integers(0, s2.codebook_size, n) for n in n_codes]
    phones = [rng.integers(0, s2.n_symbols, n) for n in n_phones]
    up, ratio = model.cfg.feature_upsample, MASK_FRAMES_PER_CODE[version]
    grid = [(f"b2-speed{s:g}", [0, 1], s) for s in SPEEDS] + [("b1-speed1", [1], 1.0)]
    for case, rows, speed in grid:
        n = [n_codes[i] for i in rows]
        feeds = {
            "codes": pad_rows([codes[i] for i in rows], 7, "int64"),
            "code_lengths": np.array(n, dtype=np.int64),
            "phones": pad_rows([phones[i] for i in rows], 3, "int64"),
            "phone_lengths": np.array([n_phones[i] for i in rows], dtype=np.int64),
            "ge": np.ascontiguousarray(ge[rows]),
            "frame_lengths": stretched_frames(n, [speed] * len(rows)),
            "feature_lengths": feature_lengths(n, [speed] * len(rows), up, ratio),
        }
        cases.append(ParityCase(ENCODER, case, feeds, speed))
    features = torch_outputs(model, None, cases[-1])["features"]  # (1, text_dim, F)
    t = features.shape[2]
    mu = np.concatenate([features, np.zeros_like(features)])  # a CFG pair: with and without
    embed = {"features": mu}
    if dit.step_embedding:
        embed["dt"] = np.full(2, 1 / 32, "f4")
    cases.append(ParityCase(EMBED, "b2-cfg", embed))
    emb = torch_outputs(model, None, cases[-1])
    prompt = 10
    x = _randn(rng, 2, dit.mel_dim, t)
    x[..., :prompt] = 0
    cond = np.zeros_like(x)
    cond[0, :, :prompt] = np.tanh(_randn(rng, dit.mel_dim, prompt))
    step = {
        "x": x,
        "cond": cond,
        "text": emb["text"],
        "time": np.array([0.0, 0.0], np.float32),
        "lengths": np.array([t, t], np.int64),
    }
    if dit.step_embedding:
        step["step"] = emb["step"]
    cases.append(ParityCase(STEP, "b2-t0", step))
    later = {**step, "time": np.array([0.75, 0.5], "f4"), "lengths": np.array([t, t - 5])}
    cases.append(ParityCase(STEP, "b2-masked", later))
    slope = np.linspace(-2.0, -9.0, dit.mel_dim, dtype=np.float32)[None, :, None]
    mel = np.clip(slope + 1.5 * _randn(rng, 2, 1, 21) + _randn(rng, 2, dit.mel_dim, 21), -11, 2)
    cases.append(ParityCase(VOCODER, "b2", {"mel": mel.astype(np.float32)}))
    return cases


def torch_outputs(
    model: SoVITSV3Model, vocoder: nn.Module | None, case: ParityCase
) -> dict[str, np.ndarray]:
    """The reference outputs of a case from the torch modules."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in case.feeds.items()}
    dit = model.cfm.estimator
    with torch.no_grad():
        if case.graph == PROMPT:
            return {"codes": to_numpy(model.extract_latent(t["ssl"]))}
        if case.graph == REF:
            return {"ge": to_numpy(model.reference_embedding(t["spec"], t["spec_lengths"]))}
        if case.graph == ENCODER:
            fea, _ = model.decode_features(
                t["codes"],
                t["code_lengths"],
                t["phones"],
                t["phone_lengths"],
                t["ge"],
                case.speed,
            )
            return {"features": to_numpy(fea)}
        if case.graph == EMBED:
            out = {"text": to_numpy(dit.embed_text(t["features"]))}
            if "dt" in t:
                out["step"] = to_numpy(dit.embed_step(t["dt"]))
            return out
        if case.graph == STEP:
            step = t.get("step")
            v = dit.velocity(t["x"], t["cond"], t["text"], t["time"], step, t["lengths"])
            return {"v": to_numpy(v)}
        assert vocoder is not None
        return {"wav": to_numpy(vocoder(t["mel"])[:, 0])}


def verify_cfm(
    work_dir: Path,
    specs: dict[str, GraphSpec],
    model: SoVITSV3Model,
    vocoder: nn.Module,
    options: RunnerOptions | None = None,
) -> ParityReport:
    """Run every variant of every graph on its backend and compare with torch.

    fp32: prompt codes identical, ``ge`` within :data:`REF_RELATIVE_MAX` relative, every other
    output at an SNR of at least :data:`SNR_MIN_DB` and of the torch shape. fp16 and bf16: SNR
    at least :data:`LOW_PRECISION_SNR_MIN_DB`.
    """
    options = options or RunnerOptions()
    version = model.cfg.version.value
    cases = [c for c in parity_cases(model) if c.graph in specs]
    expected = [torch_outputs(model, vocoder, c) for c in cases]
    report = ParityReport()
    for name, spec in specs.items():
        for variant in spec.variants:
            backend = _BACKEND_OF_FORMAT[variant.format]
            compiled = variant_options(backend, variant.precision, options, "acoustic")
            runner = make_runner(Path(work_dir) / variant.path, backend, compiled)
            prefix = f"{version}/{name}/{backend}/{variant.precision}"
            for case, ref in zip(cases, expected, strict=True):
                if case.graph != name:
                    continue
                got = runner.run(case.feeds)
                for what, value, limit, higher in _checks(case, ref, got, variant.precision):
                    report.add(Check(f"{prefix}/{case.name}/{what}", value, limit, higher))
    return report


def _checks(
    case: ParityCase, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], precision: str
) -> list[tuple[str, float, float, bool]]:
    """(what, value, limit, higher_is_better) for one run of one case."""
    if case.graph == PROMPT:
        same = ref["codes"].shape == got["codes"].shape
        wrong = float(np.mean(ref["codes"] != got["codes"])) if same else 1.0
        return [("codes_mismatch", wrong, 0.0 if precision == "fp32" else 0.1, False)]
    if case.graph == REF and precision == "fp32":
        return [("ge_rel", relative_max_diff(ref["ge"], got["ge"]), REF_RELATIVE_MAX, False)]
    floor = SNR_MIN_DB if precision == "fp32" else LOW_PRECISION_SNR_MIN_DB[precision]
    if precision == "int8" and case.graph != STEP:
        floor = LOW_PRECISION_SNR_MIN_DB["bf16"]  # their int8 variant is the bf16 compile
    out = []
    for key, value in ref.items():
        snr = snr_db(value, got[key]) if value.shape == got[key].shape else -math.inf
        out.append((f"{key}_snr_db", min(snr, 999.0), floor, True))
    return out
