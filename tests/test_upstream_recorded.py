"""The runtime (onnxruntime) against upstream outputs recorded on the tiny test checkpoints.

``tests/data/upstream/record.py`` ran upstream GPT-SoVITS (the commit in each file's ``meta``)
on the checkpoints the fixtures make; this module checks, without upstream, that the fixtures
still make those checkpoints bit for bit and that the exported graphs and the host code give
upstream's outputs, with the tolerances of the live ``upstream``-marked tests. Those tests stay
the full check (more cases, sampled decoding, full-size models) where a checkout is available.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gsv_runtime import audio_features
from gsv_runtime.acoustic.sovits import SoVITSStage
from gsv_runtime.backends import RunnerOptions
from gsv_runtime.bundle import Bundle
from gsv_runtime.gpt.decode import DecodeRow, decode
from gsv_runtime.gpt.sampling import MIN_STEPS_BEFORE_EOS, SamplingParams, decode_step
from gsv_runtime.gpt.sampling import logits_to_probs as runtime_probs
from gsv_runtime.gpt.t2s import open_t2s
from gsv_runtime.support import SupportModels
from tests.conftest import VERSIONS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

DATA = Path(__file__).parent / "data" / "upstream"
OPTIONS = RunnerOptions(threads=2)
DESIGNS = ["canonical", "gqa"]
GPT_REL_TOL = 1e-4
"""Logit difference relative to the run's largest |logit| (test_upstream_t2s.REL_TOL)."""
AUDIO_REL_TOL = 1e-4
"""Waveform difference relative to upstream's peak (test_upstream_sovits.REL_TOL)."""
GE_REL_TOL = 1e-5
"""``ge`` (test_upstream_sovits.test_reference_embedding)."""
SV_REL_TOL = 1e-4
"""fbank and speaker embedding (test_upstream_sv)."""
SPEC_REL_TOL = 1e-5
"""Linear spectrogram (test_upstream_sv.test_linear_spectrogram_matches_upstream)."""
FIXED_LENGTH = 160
"""EOS-masked greedy tokens recorded per GPT (record.py)."""

TALLY: Counter[str] = Counter()
"""Comparisons with a recorded upstream output, per kind (printed at the end of the module)."""


class Record:
    """One recorded file: its arrays and its meta (upstream commit, torch, checkpoint hashes)."""

    def __init__(self, name: str) -> None:
        with np.load(DATA / name, allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files if k != "meta"}
            self.meta: dict[str, Any] = json.loads(str(z["meta"]))

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


RECORDS = {name: Record(f"{name}.npz") for name in ("gpt", "sampler", "sovits", "sv", "features")}


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-6))


def _close(kind: str, ours: np.ndarray, ref: np.ndarray, tol: float) -> None:
    diff = _rel(ours, ref)
    assert diff <= tol, f"{kind}: max relative difference {diff:.3g} > {tol:g}"
    TALLY[kind] += 1


def _equal(kind: str, ours: np.ndarray, ref: np.ndarray) -> None:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{kind}: shape {ours.shape} != upstream {ref.shape}"
    bad = np.flatnonzero(ours.ravel() != ref.ravel())
    assert bad.size == 0, f"{kind}: {bad.size} of {ref.size} differ, first at {bad[0]}"
    TALLY[kind] += 1


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and TALLY:
        counts = ", ".join(f"{k} {n}" for k, n in sorted(TALLY.items()))
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nrecorded upstream comparisons: {sum(TALLY.values())} ({counts})"
            )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- provenance -------------------------------------------------------------------------------


def test_records_name_their_source() -> None:
    for name, rec in RECORDS.items():
        assert len(rec.meta["upstream"]["commit"]) == 40, name
        assert rec.meta["torch"].startswith("2."), name
    total = sum((DATA / f"{name}.npz").stat().st_size for name in RECORDS)
    assert total < 1.5e6


def test_fixtures_rebuild_the_recorded_checkpoints(tiny_voice, support_sv: Path) -> None:
    """The checkpoints the outputs were recorded on are the ones the fixtures make today."""
    expected: dict[str, str] = {}
    for name in ("gpt", "sovits", "sv"):
        expected.update(RECORDS[name].meta["checkpoints"])
        expected.update(RECORDS[name].meta.get("voice_checkpoints", {}))
    assert {k.split("/")[0] for k in expected} == {*VERSIONS, "support"}
    for key, digest in sorted(expected.items()):
        folder, file = key.split("/")
        path = support_sv if folder == "support" else tiny_voice(folder)[Path(file).stem]
        assert _sha256(path) == digest, f"{key}: the fixture no longer makes this checkpoint"


# --- bundles ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def support_sv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The support bundle's speaker model, made as tests/conftest.py's ``tiny_support`` does."""
    from gsv_models.testing import make_checkpoint

    return make_checkpoint("v2Pro", "sv", tmp_path_factory.mktemp("sv-src") / "sv.ckpt", "tiny")


@pytest.fixture(scope="module")
def support(support_sv: Path, tmp_path_factory: pytest.TempPathFactory) -> SupportModels:
    """An ONNX support bundle with only the ``sv`` graph (the shared fixture adds OpenVINO,
    HuBERT and BERT, which these checks do not use)."""
    from gsv_export.support import export_support_graphs
    from gsv_export.writer import staging_dir, write_manifest

    out = tmp_path_factory.mktemp("recorded") / "support"
    with staging_dir(out) as work:
        specs, info = export_support_graphs(None, None, support_sv, work, formats=("onnx",))
        write_manifest(work, "support", specs, **{k: info[k] for k in ("text", "audio", "source")})
    return SupportModels.load(out, "onnxruntime", OPTIONS)


@pytest.fixture(scope="module")
def voice(tiny_voice, tmp_path_factory: pytest.TempPathFactory):
    """version → an ONNX fp32 voice bundle of the fixture's tiny checkpoints (made once)."""
    from gsv_export import export_bundle

    cache: dict[str, Bundle] = {}

    def get(version: str) -> Bundle:
        if version not in cache:
            ckpts = tiny_voice(version)
            out = tmp_path_factory.mktemp("recorded") / f"voice-{version}"
            export_bundle(
                ckpts["gpt"],
                ckpts["sovits"],
                out,
                formats=("onnx",),
                verify=False,
                progress=lambda _: None,
            )
            cache[version] = Bundle.load(out)
        return cache[version]

    return get


# --- GPT --------------------------------------------------------------------------------------


def _gpt_key(version: str) -> str:
    return RECORDS["gpt"].meta["same_as"].get(version, version)


def _row(prefix: str, prompt: bool = True) -> DecodeRow:
    rec = RECORDS["gpt"]
    return DecodeRow(
        rec[f"{prefix}/phones"],
        rec[f"{prefix}/bert"],
        rec[f"{prefix}/prompt"] if prompt else np.zeros(0, np.int64),
    )


def _decode(bundle: Bundle, design: str, rows: list[DecodeRow], seed: int = 0, **kw: Any):
    session = open_t2s(bundle, "onnxruntime", OPTIONS, design=design)
    params = kw.pop("params", SamplingParams(top_k=1))
    rngs = [np.random.default_rng(seed) for _ in rows]
    return decode(session, rows, params, rngs, **kw)


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("version", VERSIONS)
def test_gpt_logits_teacher_forced(voice, version: str, design: str) -> None:
    """Upstream's tokens fed back step by step: the logits of the recorded steps match."""
    rec, key = RECORDS["gpt"], f"{_gpt_key(version)}/prompted"
    row, tokens = _row(key), rec[f"{key}/tokens"]
    steps = rec[f"{key}/logit_steps"].tolist()
    session = open_t2s(voice(version), "onnxruntime", OPTIONS, design=design)
    logits = [
        session.prefill(
            row.phones[None],
            np.array([len(row.phones)]),
            row.bert[None],
            row.prompt[None],
            np.array([len(row.prompt)]),
        )[0]
    ]
    for t in range(max(steps)):
        logits.append(session.step(tokens[t : t + 1])[0])
    scale = float(rec[f"{key}/logit_scale"])
    for i, step in enumerate(steps):
        diff = float(np.abs(logits[step] - rec[f"{key}/logits"][i]).max())
        assert diff <= GPT_REL_TOL * scale, f"step {step}: |Δlogit| {diff:.3g} at scale {scale:.3g}"
        TALLY["gpt logits (one step)"] += 1


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("version", VERSIONS)
def test_gpt_greedy_tokens(voice, version: str, design: str) -> None:
    """infer_panel_naive (prompted, ref-free, EOS masked) and infer_panel_batch_infer, greedy."""
    rec, key, bundle = RECORDS["gpt"], _gpt_key(version), voice(version)
    (got,) = _decode(bundle, design, [_row(f"{key}/prompted")])
    _equal("gpt greedy tokens", got, rec[f"{key}/prompted/tokens"])
    (got,) = _decode(bundle, design, [_row(f"{key}/ref_free", prompt=False)])
    _equal("gpt greedy tokens", got, rec[f"{key}/ref_free/tokens"])
    (got,) = _decode(bundle, design, [_row(f"{key}/prompted")], fixed_length=FIXED_LENGTH)
    _equal("gpt fixed-length tokens", got, rec[f"{key}/prompted/fixed_tokens"])
    rows = [_row(f"{key}/batch/{i}") for i in range(3)]
    for i, got in enumerate(_decode(bundle, design, rows)):
        _equal("gpt batch greedy tokens", got, rec[f"{key}/batch/{i}/tokens"])


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("version", VERSIONS)
def test_gpt_sampled_tokens_with_recorded_noise(voice, version: str, design: str) -> None:
    """top_k 15: upstream's loop drew its Exp(1) noise from default_rng(seed), as decode does."""
    rec, key = RECORDS["gpt"], _gpt_key(version)
    for seed in (0, 1):
        (got,) = _decode(
            voice(version), design, [_row(f"{key}/prompted")], seed, params=SamplingParams()
        )
        _equal("gpt sampled tokens", got, rec[f"{key}/prompted/sampled_tokens_{seed}"])


def test_numpy_noise_stream_is_the_recorded_one() -> None:
    """The sampled records assume numpy's default_rng Exp(1) stream (stable since numpy 1.17)."""
    draw = np.random.default_rng(0).standard_exponential(4, dtype=np.float32)
    np.testing.assert_array_equal(
        draw, np.array([0.6517228, 2.49884, 0.96077895, 1.6576133], np.float32)
    )


def test_sampler_matches_upstream_sample() -> None:
    """AR.models.utils.sample on fixed logits with the noise it drew: same probs, same ids."""
    rec = RECORDS["sampler"]
    i = 0
    while f"{i}/params" in rec.arrays:
        params = SamplingParams(**json.loads(str(rec[f"{i}/params"])))
        probs, _ = runtime_probs(rec["logits"], rec["previous"], params)
        np.testing.assert_allclose(probs, rec[f"{i}/probs"], rtol=1e-6, atol=1e-9)
        TALLY["sampler probs"] += 1
        res = decode_step(
            rec["logits"], rec["previous"], MIN_STEPS_BEFORE_EOS, params, noise=rec[f"{i}/noise"]
        )
        _equal("sampler tokens", res.tokens, rec[f"{i}/tokens"])
        i += 1
    assert i == 3


# --- SoVITS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sovits(voice):
    cache: dict[str, SoVITSStage] = {}

    def get(version: str) -> SoVITSStage:
        if version not in cache:
            cache[version] = SoVITSStage.from_bundle(voice(version), "onnxruntime", OPTIONS)
        return cache[version]

    return get


def _ref_spec() -> np.ndarray:
    return audio_features.linear_spectrogram(RECORDS["sovits"]["ref32k"].astype(np.float32))


@pytest.mark.parametrize("version", VERSIONS)
def test_sovits_prompt_codes(sovits, version: str) -> None:
    rec = RECORDS["sovits"]
    _equal(
        "sovits prompt codes",
        sovits(version).prompt_codes(rec[f"{version}/ssl"]),
        rec[f"{version}/prompt_codes"],
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_sovits_ge_and_decode(sovits, version: str) -> None:
    """ge of the reference clip, then decode (noise_scale 0) at speeds 1 and 1.25."""
    rec, stage = RECORDS["sovits"], sovits(version)
    sv = rec[f"{version}/sv"] if f"{version}/sv" in rec.arrays else None
    ge = stage.reference(_ref_spec(), sv=sv)
    _close("sovits ge", ge[0], rec[f"{version}/ge"], GE_REL_TOL)
    codes, phones = rec[f"{version}/codes"], rec[f"{version}/phones"]
    for speed in (1.0, 1.25):
        ref = rec[f"{version}/wav_speed{speed}"]
        noise = [np.zeros((stage.noise_channels, ref.shape[0] // 640 + 1), np.float32)]
        (wav,) = stage.decode([codes], [phones], ge, noise_scale=0.0, speed=speed, noise=noise)
        _close("sovits audio", wav, ref, AUDIO_REL_TOL)


# --- SV and features ----------------------------------------------------------------------------


def test_sv_fbank_and_embedding(support: SupportModels) -> None:
    rec = RECORDS["sv"]
    wavs = rec["wav16k"].astype(np.float32)
    feats = np.stack([audio_features.kaldi_fbank(w) for w in wavs])
    _close("sv fbank", feats, rec["fbank"], SV_REL_TOL)
    for n in (400, 1234):
        _close("sv fbank", audio_features.kaldi_fbank(wavs[0, :n]), rec[f"fbank_{n}"], SV_REL_TOL)
    runner = support.runner("sv")
    got = runner.run({"fbank": rec["fbank"].astype(np.float32)})["sv"]
    _close("sv embedding", got, rec["embedding"], SV_REL_TOL)
    got = runner.run({"fbank": feats.astype(np.float32)})["sv"]  # the host fbank → graph chain
    _close("sv embedding", got, rec["embedding"], SV_REL_TOL)


def test_linear_spectrogram() -> None:
    rec = RECORDS["features"]
    wav = rec["wav32k"].astype(np.float32)
    for n in (5000, 12899):
        got = audio_features.linear_spectrogram(wav[:n])
        _close("spectrogram", got, rec[f"spec_{n}"], SPEC_REL_TOL)
