"""SoVITS graphs: export of tiny random v1/v2/v2Pro/v2ProPlus models, parity, runtime stage."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from gsv_export.graph_io import onnx_files, openvino_files
from gsv_export.parity import snr_db
from gsv_export.sovits import (
    CODE_MISMATCH_MAX,
    LOG_MEL_MAX,
    REF_RELATIVE_MAX,
    ParityCase,
    export_sovits_graphs,
    log_mel_distance,
    parity_cases,
    torch_outputs,
    verify_sovits,
)
from gsv_export.writer import write_manifest
from gsv_models.sovits import SoVITSModel, stretched_lengths
from gsv_models.testing import random_sovits, sovits_config
from gsv_models.version import ModelVersion
from gsv_runtime.acoustic.sovits import DECODER, GRAPHS, SoVITSStage, frame_lengths, mean_reference
from gsv_runtime.audio_features import linear_spectrogram
from gsv_runtime.backends import BACKENDS
from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import InputError
from tests.conftest import VERSIONS

LOW_PRECISION_VERSION = "v2ProPlus"
"""The version whose fixture also exports fp16/bf16 (and asks for int8, which is skipped)."""


@cache
def _model(version: str, seed: int = 0) -> SoVITSModel:
    return random_sovits(sovits_config(ModelVersion.parse(version), "tiny"), seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """version → (model, bundle): ONNX + OpenVINO graphs with a manifest, made once."""
    done: dict[str, tuple[SoVITSModel, Bundle]] = {}

    def get(version: str) -> tuple[SoVITSModel, Bundle]:
        if version not in done:
            model = _model(version)
            root = tmp_path_factory.mktemp(f"sovits-{version}")
            precisions = ("fp32",)
            if version == LOW_PRECISION_VERSION:
                precisions = ("fp32", "fp16", "bf16", "int8")
            specs = export_sovits_graphs(model, root, ("onnx", "openvino"), precisions)
            write_manifest(root, "voice", specs)
            done[version] = (model, Bundle.load(root))
        return done[version]

    return get


@cache
def _stage(bundle: Bundle, backend: str, precision: str = "fp32") -> SoVITSStage:
    return SoVITSStage.from_bundle(bundle, backend, precision=precision)  # type: ignore[arg-type]


def test_all_versions_are_covered() -> None:
    assert {ModelVersion.parse(v) for v in VERSIONS} == {
        ModelVersion.V1,
        ModelVersion.V2,
        ModelVersion.V2PRO,
        ModelVersion.V2PROPLUS,
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_export_and_verify(exported, version: str) -> None:
    """fp32 on both backends; on one version also fp16 (both) and bf16 (OpenVINO hint)."""
    model, bundle = exported(version)
    specs = bundle.manifest.graphs
    assert set(specs) == set(GRAPHS)
    low = model.cfg.version.value == LOW_PRECISION_VERSION
    want = {("onnx", "fp32"), ("openvino", "fp32")}
    if low:  # int8 was asked for and skipped
        want |= {("onnx", "fp16"), ("openvino", "fp16"), ("openvino", "bf16")}
    for spec in specs.values():
        assert {(v.format, v.precision) for v in spec.variants} == want
    assert ("sv" in specs["sovits_ref"].inputs) is model.is_pro
    report = verify_sovits(bundle.root, specs, model, model.cfg.version.value)
    report.raise_if_failed()
    names = [c.name for c in report.checks]
    for backend in BACKENDS:
        for case in ("b2-speed1", "b2-speed1.25", "b1-speed1"):
            assert any(f"{DECODER}/{backend}/fp32/{case}/wav_snr_db" in n for n in names)
    if low:
        dec = specs[DECODER]
        assert dec.variant("openvino", "bf16").path == dec.variant("openvino", "fp32").path
        for fmt in ("onnx", "openvino"):
            fp32, fp16 = (bundle.root / dec.variant(fmt, p).path for p in ("fp32", "fp16"))
            assert _size(fp16) < _size(fp32)  # about half for full-size weights
        mel = [c for c in report.checks if c.name.endswith("wav_log_mel")]
        assert {c.name.split("/")[3] for c in mel} == {"fp16", "bf16"}
        # lower precision deviates measurably but stays well below the floors
        assert all(0 < c.value <= 0.5 * c.limit for c in mel)


def _size(graph: Path) -> int:
    files = openvino_files(graph) if graph.suffix == ".xml" else onnx_files(graph)
    return sum(p.stat().st_size for p in files)


def _torch_row(model: SoVITSModel, codes, phones, ge, noise, scale, speed) -> np.ndarray:
    wav, n = model.decode(
        torch.from_numpy(codes)[None],
        torch.tensor([codes.size]),
        torch.from_numpy(phones)[None],
        torch.tensor([phones.size]),
        torch.from_numpy(ge),
        noise_scale=scale,
        noise=torch.from_numpy(noise)[None],
        speed=speed,
    )
    return wav[0, 0, : int(n[0])].numpy()


@pytest.mark.parametrize(
    ("version", "speed"), [(v, 1.0) for v in VERSIONS] + [("v2", 1.25), ("v2ProPlus", 1.25)]
)
def test_runtime_decode_equals_torch(exported, version: str, speed: float) -> None:
    """Batched rows of different lengths, seeded host noise: each row = torch on that row."""
    model, bundle = exported(version)
    cfg = model.cfg
    rng = np.random.default_rng(3)
    codes = [rng.integers(0, cfg.codebook_size, n) for n in (21, 9)]
    phones = [rng.integers(0, cfg.n_symbols, n) for n in (10, 4)]
    ge = torch_outputs(model, next(c for c in parity_cases(model) if c.graph == "sovits_ref"))
    ge = ge["ge"]
    scales = [0.5, 0.3]
    # the noise the stage draws: row after row, float32 standard normal
    draw = np.random.default_rng(7)
    frames = frame_lengths([c.size for c in codes], [speed] * 2)
    noise = [draw.standard_normal((cfg.inter_channels, n), dtype=np.float32) for n in frames]
    expected = [
        _torch_row(model, codes[i], phones[i], ge[i : i + 1], noise[i], scales[i], speed)
        for i in range(2)
    ]
    outputs = {}
    for backend in BACKENDS:
        stage = _stage(bundle, backend)
        rows = stage.decode(codes, phones, ge, scales, speed, rng=np.random.default_rng(7))
        one = stage.decode(codes[1:], phones[1:], ge[1], scales[1], speed, noise=noise[1:])
        for i, (want, got) in enumerate(zip(expected, rows, strict=True)):
            assert got.dtype == np.float32 and got.shape == want.shape
            assert got.shape[0] == int(frames[i]) * model.frame_hop
            assert snr_db(want, got) >= 50, (backend, i)
        assert snr_db(expected[1], one[0]) >= 50
        outputs[backend] = rows
    for a, b in zip(outputs["onnxruntime"], outputs["openvino"], strict=True):
        assert snr_db(a, b) >= 50  # the same seed gives the same audio on both backends


@pytest.mark.parametrize("version", VERSIONS)
def test_runtime_prompt_and_reference_equal_torch(exported, version: str) -> None:
    model, bundle = exported(version)
    cfg = model.cfg
    rng = np.random.default_rng(4)
    ssl = rng.standard_normal((2, cfg.ssl_dim, 51), dtype=np.float32)
    wavs = [0.1 * rng.standard_normal(int(s * cfg.sampling_rate)) for s in (1.3, 0.9)]
    specs = [linear_spectrogram(w.astype(np.float32)) for w in wavs]
    sv = np.abs(rng.standard_normal((2, cfg.sv_dim))).astype(np.float32) if model.is_pro else None
    want_codes = model.extract_latent(torch.from_numpy(ssl)).numpy()
    want_ge = np.concatenate(
        [
            model.reference_embedding(
                torch.from_numpy(s)[None],
                None,
                None if sv is None else torch.from_numpy(sv[i : i + 1]),
            ).numpy()
            for i, s in enumerate(specs)
        ]
    )
    for backend in BACKENDS:
        stage = _stage(bundle, backend)
        assert stage.is_pro is model.is_pro
        assert np.array_equal(stage.prompt_codes(ssl), want_codes)
        assert np.array_equal(stage.prompt_codes(ssl[0]), want_codes[0])
        ge = stage.reference(specs, sv=sv)
        assert ge.shape == (2, cfg.gin_channels, 1)
        assert np.abs(ge - want_ge).max() <= 1e-4 * np.abs(want_ge).max()
        one = stage.reference(specs[1], sv=None if sv is None else sv[1])
        assert np.abs(one[0] - want_ge[1]).max() <= 1e-4 * np.abs(want_ge).max()
        mean = mean_reference(ge)
        assert mean.shape == (1, cfg.gin_channels, 1)
        assert np.allclose(mean[0], want_ge.mean(0), atol=1e-4 * np.abs(want_ge).max())


@pytest.mark.parametrize("version", ["v2", "v2Pro"])
def test_runtime_input_errors(exported, version: str) -> None:
    model, bundle = exported(version)
    stage = SoVITSStage.from_bundle(bundle, "onnxruntime", graphs=("sovits_ref", DECODER))
    codes, phones = [np.arange(5)], [np.arange(3)]
    ge = np.zeros((model.cfg.gin_channels, 1), np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="exactly one"):
        stage.decode(codes, phones, ge)
    with pytest.raises(InputError, match="exactly one"):
        stage.decode(codes, phones, ge, rng=rng, noise=[np.zeros((1, 1))])
    with pytest.raises(InputError, match="ge must be"):
        stage.decode(codes, phones, np.zeros((3, 1), np.float32), rng=rng)
    with pytest.raises(InputError, match="non-empty"):
        stage.decode([np.array([], np.int64)], phones, ge, rng=rng)
    with pytest.raises(InputError, match="speed"):
        stage.decode(codes, phones, ge, speed=0.0, rng=rng)
    with pytest.raises(InputError, match="noise_scale"):
        stage.decode(codes, phones, ge, noise_scale=[0.5, 0.5], rng=rng)
    with pytest.raises(InputError, match="noise row 0"):
        stage.decode(codes, phones, ge, noise=[np.zeros((model.cfg.inter_channels, 3))])
    spec = np.ones((1025, 8), np.float32)
    with pytest.raises(InputError, match="speaker vector"):
        stage.reference(spec, sv=None if model.is_pro else np.ones(4, np.float32))
    with pytest.raises(Exception, match="sovits_prompt"):
        stage.prompt_codes(np.zeros((model.cfg.ssl_dim, 4), np.float32))


def test_model_frame_lengths_input_equals_speed() -> None:
    """The graph's speed path (target frames as data) is the model's speed path; speed 1 is an
    exact copy, and rows of one batch may have different speeds."""
    model = _model("v2")
    cfg = model.cfg
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, cfg.codebook_size, (2, 15), generator=g)
    code_lengths, phones = torch.tensor([15, 10]), torch.randint(0, 700, (2, 7), generator=g)
    ge = torch.randn(2, cfg.gin_channels, 1, generator=g)
    speeds = [1.0, 1.25]
    frames = torch.from_numpy(frame_lengths(code_lengths.tolist(), speeds))
    noise = torch.randn(2, cfg.inter_channels, int(frames.max()), generator=g)
    args = (codes, code_lengths, phones, torch.tensor([7, 4]), ge, 0.5)
    wav, n = model.decode(*args, noise=noise, frame_lengths=frames)
    for i, speed in enumerate(speeds):
        row = (codes[i : i + 1], code_lengths[i : i + 1], phones[i : i + 1])
        alone, m = model.decode(
            *row,
            args[3][i : i + 1],
            ge[i : i + 1],
            0.5,
            noise[i : i + 1, :, : int(frames[i])],
            speed,
        )
        assert int(m[0]) == int(n[i])
        assert (wav[i, :, : int(n[i])] - alone[0]).abs().max() < 1e-5
    same = noise[:, :, :30]
    exact, _ = model.decode(*args, noise=same, frame_lengths=2 * code_lengths)
    assert torch.equal(exact, model.decode(*args, noise=same)[0])
    with pytest.raises(ValueError, match="not both"):
        model.decode(*args, noise=noise, speed=1.25, frame_lengths=frames)


@pytest.mark.parametrize(("n", "speed"), [(17, 1.0), (17, 1.25), (55, 1.1), (40, 0.8), (7, 1.7)])
def test_frame_lengths_match_the_model(n: int, speed: float) -> None:
    """Host frame counts equal upstream's int(L / speed) + 1 (float64), e.g. 110 / 1.1."""
    want = int(stretched_lengths(torch.tensor([2 * n]), speed)[0])
    assert frame_lengths([n], [speed]).tolist() == [want]


def _ov_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_runtime_lower_precisions(exported) -> None:
    """The stage loads the fp16 (both backends) and bf16 (OpenVINO) variants; audio stays close."""
    model, bundle = exported(LOW_PRECISION_VERSION)
    codes, phones = [np.arange(12) * 37], [np.arange(6)]
    ge = np.ones((model.cfg.gin_channels, 1), np.float32)
    base = _stage(bundle, "openvino").decode(codes, phones, ge, rng=np.random.default_rng(0))[0]
    for backend, precision in (("onnxruntime", "fp16"), ("openvino", "fp16"), ("openvino", "bf16")):
        stage = SoVITSStage.from_bundle(bundle, backend, precision=precision)  # type: ignore[arg-type]
        got = stage.decode(codes, phones, ge, rng=np.random.default_rng(0))[0]
        distance = log_mel_distance(base, got)
        if precision == "bf16" and not _ov_has_bf16():
            assert distance == 0.0  # the plugin computes in f32 on this CPU (and logs it)
            continue
        assert 0 < distance <= LOG_MEL_MAX[precision], (backend, precision)


def test_openvino_reports_its_real_precision(exported, caplog: pytest.LogCaptureFixture) -> None:
    """A bf16 request on a CPU without bf16 units runs in f32, and the runner says so."""
    from gsv_runtime.backends import RunnerOptions
    from gsv_runtime.backends.ov import OvRunner

    _, bundle = exported(LOW_PRECISION_VERSION)
    path = bundle.root / bundle.manifest.graphs[DECODER].variant("openvino", "bf16").path
    runner = OvRunner(path, RunnerOptions(precision_hint="bf16"))
    if _ov_has_bf16():
        assert runner.inference_precision == "bf16"
    else:
        assert runner.inference_precision == "f32"
        assert "cannot compute in bf16" in caplog.text


@pytest.mark.parametrize("version", ["v2", "v2ProPlus"])
def test_openvino_decoder_runs_one_row_without_length_masks(exported, version: str) -> None:
    """On the CPU plugin the decoder drops its length masks and decodes a batch row by row:
    the same audio as the masked graph's one batched call, at any speed."""
    import openvino as ov

    from gsv_runtime.backends import make_runner
    from gsv_runtime.backends.ov import drop_length_masks

    model, bundle = exported(version)
    ir = ov.Core().read_model(bundle.root / bundle.graph(DECODER).variant("openvino", "fp32").path)
    multiplies = sum(n.get_type_name() == "Multiply" for n in ir.get_ordered_ops())
    dropped = drop_length_masks(ir)
    assert 0 < dropped < multiplies and drop_length_masks(ir) == 0
    one_row = _stage(bundle, "openvino")
    path = bundle.graph_path(DECODER, "openvino", "fp32")
    masked = SoVITSStage({DECODER: bundle.graph(DECODER)}, {DECODER: make_runner(path, "openvino")})
    assert one_row.one_row_decoder and not masked.one_row_decoder
    assert not _stage(bundle, "onnxruntime").one_row_decoder
    rng = np.random.default_rng(4)
    codes = [rng.integers(0, model.cfg.codebook_size, n) for n in (7, 23, 15)]
    phones = [rng.integers(0, model.cfg.n_symbols, n) for n in (3, 11, 8)]
    ge = np.full((model.cfg.gin_channels, 1), 0.1, np.float32)
    for speed in (1.0, 0.8):
        want = masked.decode(codes, phones, ge, speed=speed, rng=np.random.default_rng(2))
        got = one_row.decode(codes, phones, ge, speed=speed, rng=np.random.default_rng(2))
        for a, b in zip(want, got, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_floors_catch_garbage() -> None:
    """Broken audio scores far above the lower-precision floor; tiny perturbations below it."""
    model, other = _model("v2"), _model("v2", seed=1)
    case = next(c for c in parity_cases(model) if c.name == "b1-speed1")
    want = torch_outputs(model, case)["wav"][0]
    silent_prior = ParityCase(
        DECODER, case.name, {**case.feeds, "noise_scale": np.zeros(1, np.float32)}
    )
    rms = float(np.sqrt(np.mean(want**2)))
    garbage = {
        "silence": np.zeros_like(want),
        "white noise": rms * np.random.default_rng(0).standard_normal(want.size),
        "other checkpoint": torch_outputs(other, case)["wav"][0],
        "half gain": 0.5 * want,
        "clipped": np.clip(want, -0.1, 0.1),
        "noise ignored": torch_outputs(model, silent_prior)["wav"][0],
    }
    floor = max(LOG_MEL_MAX.values())
    for name, wav in garbage.items():
        assert log_mel_distance(want, wav) > floor, name
    tiny = want + 1e-4 * np.random.default_rng(1).standard_normal(want.size)
    assert log_mel_distance(want, tiny) < 0.1 * min(LOG_MEL_MAX.values())
    assert log_mel_distance(want, want[:-1]) == float("inf")
    assert CODE_MISMATCH_MAX["fp32"] == 0 and REF_RELATIVE_MAX["fp32"] <= 1e-4


def test_verify_catches_a_wrong_export(exported) -> None:
    """Graphs of one checkpoint checked against another fail on every graph."""
    model, bundle = exported("v2")
    onnx_only = {
        name: replace(spec, variants=tuple(v for v in spec.variants if v.format == "onnx"))
        for name, spec in bundle.manifest.graphs.items()
    }
    report = verify_sovits(bundle.root, onnx_only, _model("v2", seed=1))
    failed = {c.name.split("/")[1] for c in report.failures}
    assert failed == set(GRAPHS)
    with pytest.raises(ValueError, match="does not match"):
        verify_sovits(bundle.root, bundle.manifest.graphs, model, "v1")


def test_runtime_module_does_not_import_torch() -> None:
    code = "import sys, gsv_runtime.acoustic.sovits; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
