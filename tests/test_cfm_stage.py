"""v3/v4 runtime: the CFM stage (host Euler loop, chunking, vocoder) against the torch pipeline.

The torch side is upstream's sequential ``using_vocoder_synthesis`` written with the reference
modules (``decode_features``, ``CFM.sample``, the vocoder) and fed the same start noise, so
the stage's audio must match it closely (fp32 graphs, same noise: ≥ 80 dB).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gsv_export.cfm import REF_MEL
from gsv_export.parity import snr_db
from gsv_export.sovits import _probe_audio
from gsv_models.cfm import SamplerConfig
from gsv_models.sovits_v3 import SoVITSV3Model
from gsv_models.version import ModelVersion
from gsv_runtime.acoustic import NoiseSource, VocodeJob, load_acoustic
from gsv_runtime.acoustic.cfm import CfmParams, CfmStage, Sampler
from gsv_runtime.audio_features import linear_spectrogram, log_mel_spectrogram, slaney_mel_banks
from gsv_runtime.backends import RunnerOptions
from gsv_runtime.errors import BundleError, InputError
from gsv_runtime.voice import Voice
from tests.conftest import cfm_models

V3, V4 = ModelVersion.V3, ModelVersion.V4
SNR_MIN_DB = 80.0
"""Stage audio vs the torch pipeline, same noise (measured 117–129 dB on tiny v3/v4; the
issue asked for ≥ 40)."""


def _voice(stage: CfmStage, version: ModelVersion, seed: int = 0) -> Voice:
    """A voice from a synthetic 1.2 s reference: ge through the graph, the host mel."""
    rng = np.random.default_rng(seed)
    spec = linear_spectrogram(_probe_audio(1.2, 32000, seed))
    mel = REF_MEL[version]
    wav = _probe_audio(1.2, mel["sample_rate"], seed)
    ref_mel = log_mel_spectrogram(
        wav, mel["sample_rate"], mel["n_fft"], mel["hop"], mel["win"], mel["n_mels"]
    )
    return Voice(
        prompt_tokens=rng.integers(0, 1024, 30),
        prompt_phones=rng.integers(0, 732, 12),
        prompt_bert=np.zeros((12, 1024), np.float32),
        ge=stage.reference(spec),
        ref_mel=ref_mel,
    )


def _job(voice: Voice, n_tokens: int, seed: int, speed: float = 1.0) -> VocodeJob:
    rng = np.random.default_rng(100 + seed)
    return VocodeJob(
        tokens=rng.integers(0, 1024, n_tokens),
        phones=rng.integers(0, 732, 9),
        voice=voice,
        noise=NoiseSource((seed, 0)),
        speed=speed,
    )


def torch_pipeline(
    model: SoVITSV3Model,
    vocoder: torch.nn.Module,
    job: VocodeJob,
    params: CfmParams,
    sampler: SamplerConfig,
) -> np.ndarray:
    """Upstream's ``TTS.using_vocoder_synthesis`` with the reference modules and our noise."""
    voice = job.voice

    def features(codes: np.ndarray, phones: np.ndarray, speed: float) -> torch.Tensor:
        fea, _ = model.decode_features(
            torch.from_numpy(np.asarray(codes, np.int64))[None],
            torch.tensor([len(codes)]),
            torch.from_numpy(np.asarray(phones, np.int64))[None],
            torch.tensor([len(phones)]),
            torch.from_numpy(voice.ge[:1]),
            speed,
        )
        return fea

    with torch.no_grad():
        fea_ref = features(voice.prompt_tokens, voice.prompt_phones, 1.0)
        fea_todo = features(job.tokens, job.phones, job.speed)
        mel2 = torch.from_numpy(params.normalize(voice.ref_mel))[None]
        t_min = min(mel2.shape[2], fea_ref.shape[2])
        mel2, fea_ref = mel2[:, :, :t_min], fea_ref[:, :, :t_min]
        if t_min > params.t_ref:
            mel2, fea_ref, t_min = (
                mel2[:, :, -params.t_ref :],
                fea_ref[:, :, -params.t_ref :],
                params.t_ref,
            )
        chunk_len = params.t_chunk - t_min
        outs, idx = [], 0
        while True:
            chunk = fea_todo[:, :, idx : idx + chunk_len]
            if chunk.shape[-1] == 0:
                break
            mu = torch.cat([fea_ref, chunk], 2)
            noise = torch.zeros(1, 100, mu.shape[2])
            noise[0, :, mel2.shape[2] :] = torch.from_numpy(
                job.noise.frames(100, idx, idx + chunk.shape[2])
            )
            idx += chunk_len
            res = model.cfm.sample(mu, mel2, noise, sampler)[:, :, mel2.shape[2] :]
            mel2, fea_ref = res[:, :, -t_min:], chunk[:, :, -t_min:]
            outs.append(res)
        mel = torch.from_numpy(params.denormalize(torch.cat(outs, 2).numpy()))
        return vocoder(mel)[0, 0].numpy()


@pytest.mark.parametrize(
    ("version", "backend", "speed"),
    [(V3, "onnxruntime", 1.0), (V4, "onnxruntime", 1.0), (V4, "openvino", 1.25)],
)
def test_stage_matches_torch_pipeline(cfm_bundles, version, backend, speed) -> None:
    """Three chunks (a small T_chunk) of a 40-token target, 4 Euler steps, same noise."""
    stage = CfmStage.from_bundle(cfm_bundles(version), backend)
    stage.params = replace(stage.params, t_ref=24, t_chunk=64, steps=4)
    voice = _voice(stage, version)
    job = _job(voice, 40, seed=1, speed=speed)
    wav, mel = stage.synthesize(job)
    chunk_len = stage.params.t_chunk - min(voice.ref_mel.shape[1], stage.params.t_ref)
    assert mel.shape[1] > 2 * chunk_len  # really chunked
    model, vocoder = cfm_models(version)
    expected = torch_pipeline(model, vocoder, job, stage.params, SamplerConfig(steps=4))
    assert wav.shape == expected.shape == (mel.shape[1] * stage.params.hop,)
    assert snr_db(expected, wav) >= SNR_MIN_DB
    assert 0.01 < float(np.sqrt(np.mean(wav**2))) < 1


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_stage_tracks_torch(cfm_bundles, backend) -> None:
    """int8 (OpenVINO: statically quantized DiT step, bf16 around it; onnxruntime: dynamic
    int8 projections): the pipeline of ``test_stage_matches_torch_pipeline`` stays close to
    torch, and really runs another graph."""
    stage = load_acoustic(cfm_bundles(V4), backend, RunnerOptions(), "int8")
    fp32 = load_acoustic(cfm_bundles(V4), backend, RunnerOptions(), "fp32")
    assert isinstance(stage, CfmStage) and isinstance(fp32, CfmStage)
    for s in (stage, fp32):
        s.params = replace(s.params, t_ref=24, t_chunk=64, steps=4)
    voice = _voice(fp32, V4)
    job = _job(voice, 40, seed=1)
    wav, _ = stage.synthesize(job)
    model, vocoder = cfm_models(V4)
    expected = torch_pipeline(model, vocoder, job, stage.params, SamplerConfig(steps=4))
    assert wav.shape == expected.shape
    assert snr_db(expected, wav) >= 30  # OpenVINO 39.4–40.7 dB, onnxruntime 57.6 (fp32: ≥ 60)
    assert snr_db(fp32.synthesize(job)[0], wav) < SNR_MIN_DB


def test_guided_sampling_matches_torch(cfm_bundles) -> None:
    """CFG's two passes run as one batch of two and combine as upstream's ``CFM``."""
    stage = CfmStage.from_bundle(cfm_bundles(V3), "onnxruntime")
    model, _ = cfm_models(V3)
    rng = np.random.default_rng(3)
    mu = rng.standard_normal((stage.text_dim, 30), dtype=np.float32)
    prompt = np.tanh(rng.standard_normal((100, 8), dtype=np.float32))
    noise = rng.standard_normal((100, 30), dtype=np.float32)
    for drops in (True, False):
        sampler = Sampler(steps=3, temperature=0.8, cfg_rate=0.7, cfg_drops_text=drops)
        got = stage.sample(mu, prompt, noise, sampler)
        ref = model.cfm.sample(
            torch.from_numpy(mu)[None],
            torch.from_numpy(prompt)[None],
            torch.from_numpy(noise)[None],
            SamplerConfig(steps=3, temperature=0.8, cfg_rate=0.7, cfg_drops_text=drops),
        )[0].numpy()
        assert snr_db(ref, got) >= 60
        assert float(np.abs(got[:, :8]).max()) == 0


def test_seed_reproduces_and_noise_matters(cfm_bundles) -> None:
    stage = CfmStage.from_bundle(cfm_bundles(V4), "onnxruntime")
    stage.params = replace(stage.params, steps=2)
    voice = _voice(stage, V4, seed=2)
    a = stage.vocode([_job(voice, 12, seed=5)])[0]
    b = stage.vocode([_job(voice, 12, seed=5)])[0]
    c = stage.vocode([_job(voice, 12, seed=6)])[0]
    np.testing.assert_array_equal(a, b)
    assert a.shape == c.shape == (12 * stage.samples_per_token,)
    assert snr_db(a, c) < 20


def test_load_acoustic_picks_the_cfm_family(cfm_bundles) -> None:
    stage = load_acoustic(cfm_bundles(V3), "onnxruntime", RunnerOptions(), "fp32")
    assert isinstance(stage, CfmStage)
    assert (stage.sample_rate, stage.samples_per_token) == (24000, 960)


def test_bad_inputs_are_refused_clearly(cfm_bundles) -> None:
    bundle = cfm_bundles(V3)
    stage = CfmStage.from_bundle(bundle, "onnxruntime")
    voice = _voice(stage, V3)
    with pytest.raises(InputError, match="needs its reference mel"):
        stage.vocode([_job(replace(voice, ref_mel=None), 5, 0)])
    with pytest.raises(InputError, match="prompt's tokens and phones"):
        stage.vocode([_job(replace(voice, prompt_phones=np.zeros(0, np.int64)), 5, 0)])
    with pytest.raises(InputError, match="sample_steps must be an integer in"):
        stage.synthesize(_job(voice, 5, 0), Sampler(steps=0))
    with pytest.raises(InputError, match="cfg_rate must be finite"):
        stage.synthesize(_job(voice, 5, 0), Sampler(cfg_rate=math.nan))
    with pytest.raises(InputError, match="speed must be in"):
        stage.synthesize(_job(voice, 5, 0, speed=0.0))
    with pytest.raises(InputError, match="ids ≥ 0"):
        stage.features([np.array([-1, 2])], [np.array([1])], voice.ge)
    with pytest.raises(InputError, match="mel must be"):
        stage.vocoder(np.zeros((80, 4), np.float32))
    with pytest.raises(InputError, match="no speaker vector"):
        stage.reference(np.ones((1025, 9), np.float32), sv=np.ones(4, np.float32))
    with pytest.raises(BundleError, match="CFM audio section is incomplete"):
        CfmParams.from_audio({"sample_rate": 24000})
    with pytest.raises(BundleError, match="needs the graphs cfm_encoder, cfm_embed, cfm_step"):
        CfmStage({}, {}, stage.params)
    with pytest.raises(BundleError, match="built without the sovits_prompt graph"):
        CfmStage.from_bundle(
            bundle, graphs=("cfm_encoder", "cfm_embed", "cfm_step", "cfm_vocoder")
        ).prompt_codes(np.zeros((64, 4), np.float32))


def test_voice_with_ref_mel_saves_and_loads(cfm_bundles, tmp_path: Path) -> None:
    stage = CfmStage.from_bundle(cfm_bundles(V4), "onnxruntime")
    voice = _voice(stage, V4)
    voice.save(tmp_path, "cfm")
    loaded = Voice.load(tmp_path, "cfm")
    np.testing.assert_array_equal(loaded.ref_mel, voice.ref_mel)
    assert replace(voice, ref_mel=None).save(tmp_path, "plain")
    assert Voice.load(tmp_path, "plain").ref_mel is None


def _torch_log_mel(wav: np.ndarray, cfg: dict) -> np.ndarray:
    """Upstream ``mel_spectrogram_torch`` (reflect pad, STFT center=False, sqrt, mel, log)."""
    pad = (cfg["n_fft"] - cfg["hop"]) // 2
    y = torch.nn.functional.pad(torch.from_numpy(wav)[None, None], (pad, pad), mode="reflect")[0]
    spec = torch.stft(
        y,
        cfg["n_fft"],
        hop_length=cfg["hop"],
        win_length=cfg["win"],
        window=torch.hann_window(cfg["win"]),
        center=False,
        return_complex=True,
    )
    spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-8)
    bank = torch.from_numpy(
        np.array(slaney_mel_banks(cfg["sample_rate"], cfg["n_fft"], cfg["n_mels"]))
    )
    return torch.log(torch.clamp(bank @ spec, min=1e-5))[0].numpy()


@pytest.mark.parametrize("version", [V3, V4])
def test_reference_mel_matches_torch(version: ModelVersion) -> None:
    cfg = REF_MEL[version]
    wav = _probe_audio(0.8, cfg["sample_rate"], 4)
    got = log_mel_spectrogram(
        wav, cfg["sample_rate"], cfg["n_fft"], cfg["hop"], cfg["win"], cfg["n_mels"]
    )
    expected = _torch_log_mel(wav, cfg)
    assert got.shape == expected.shape == (100, 1 + (wav.size - cfg["hop"]) // cfg["hop"])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_slaney_filters() -> None:
    """Shape, Slaney area normalisation, and librosa's values when librosa is installed."""
    bank = slaney_mel_banks(24000, 1024, 100)
    assert bank.shape == (100, 513) and bank.dtype == np.float32
    assert float(bank.min()) >= 0 and (bank.max(axis=1) > 0).all()
    freqs = np.linspace(0, 12000, 513)
    # area of each triangle (in Hz) is 1 after the 2 / (right − left) scaling
    areas = np.trapezoid(bank, freqs, axis=1)
    assert np.allclose(areas[60:], 1.0, rtol=0.01)  # narrow low filters sample too coarsely
    assert abs(float(areas.mean()) - 1) < 0.01
    librosa = pytest.importorskip("librosa")
    for sr, n_fft in ((24000, 1024), (32000, 1280)):
        np.testing.assert_allclose(
            slaney_mel_banks(sr, n_fft, 100),
            librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=100, fmin=0, fmax=None),
            atol=1e-7,
        )


def _torch_sola(fragments: list[torch.Tensor], overlap: int, search: int = 320) -> torch.Tensor:
    """Upstream ``TTS.sola_algorithm`` in torch (conv1d correlation, Hann cross-fade)."""
    frags = list(fragments)
    for i in range(len(frags) - 1):
        f1, f2 = frags[i], frags[i + 1]
        w1, w2 = f1[-overlap:], f2[: overlap + search]
        corr = torch.nn.functional.conv1d(w2.view(1, 1, -1), w1.view(1, 1, -1)).view(-1)
        den = torch.nn.functional.conv1d(
            w2.view(1, 1, -1) ** 2, torch.ones_like(w1).view(1, 1, -1)
        ).view(-1)
        idx = int((corr / (den + 1e-8).sqrt()).argmax())
        frags[i] = f1[:-overlap]
        f2_ = f2[idx:].clone()
        window = torch.hann_window(2 * overlap)
        f2_[:overlap] = window[:overlap] * f2_[:overlap] + window[overlap:] * f1[-overlap:]
        frags[i + 1] = f2_
    return torch.cat(frags)


def torch_parallel(model, vocoder, jobs, params: CfmParams, sampler: SamplerConfig) -> list:
    """Upstream's ``using_vocoder_synthesis_batched_infer`` with the reference modules."""
    voice, ov, hop = jobs[0].voice, 12, params.hop
    ge = torch.from_numpy(voice.ge[:1])

    def features(codes, phones, speed):
        fea, _ = model.decode_features(
            torch.from_numpy(np.asarray(codes, np.int64))[None],
            torch.tensor([len(codes)]),
            torch.from_numpy(np.asarray(phones, np.int64))[None],
            torch.tensor([len(phones)]),
            ge,
            speed,
        )
        return fea

    with torch.no_grad():
        fea_ref = features(voice.prompt_tokens, voice.prompt_phones, 1.0)
        mel2 = torch.from_numpy(params.normalize(voice.ref_mel))[None]
        t_min = min(mel2.shape[2], fea_ref.shape[2])
        mel2, fea_ref = mel2[:, :, :t_min], fea_ref[:, :, :t_min]
        if t_min > params.t_ref:
            mel2, fea_ref = mel2[:, :, -params.t_ref :], fea_ref[:, :, -params.t_ref :]
            t_min = params.t_ref
        chunk_len = params.t_chunk - t_min
        feats = [features(j.tokens, j.phones, j.speed) for j in jobs]
        padded = torch.nn.functional.pad(torch.cat(feats, 2), (ov, 0))
        chunks, noises, pos, padding = [], [], 0, 0
        while True:
            if pos != 0:
                pos -= ov
            chunk = padded[:, :, pos : pos + chunk_len]
            start, pos = pos, pos + chunk_len
            if chunk.shape[-1] == 0:
                break
            padding = chunk_len - chunk.shape[2]
            chunks.append(torch.nn.functional.pad(chunk, (0, padding)))
            noise = torch.zeros(1, 100, t_min + chunk_len)
            noise[0, :, t_min:] = torch.from_numpy(jobs[0].noise.frames(100, start, pos))
            noises.append(noise)
        b = len(chunks)
        mu = torch.cat([fea_ref.repeat(b, 1, 1), torch.cat(chunks)], 2)
        pred = model.cfm.sample(mu, mel2.repeat(b, 1, 1), torch.cat(noises), sampler)
        pred = pred[:, :, -chunk_len:].permute(1, 0, 2).reshape(100, -1)[None]
        audio = vocoder(torch.from_numpy(params.denormalize(pred.numpy())))[0, 0]
        step = chunk_len * hop
        audio = _torch_sola([audio[i : i + step] for i in range(0, len(audio), step)], ov * hop)
        audio = audio[ov * hop : len(audio) - padding * hop]
        out = []
        for f in feats:
            out.append(audio[: f.shape[2] * hop].numpy())
            audio = audio[f.shape[2] * hop :]
        return out


@pytest.mark.parametrize("version", [V3, V4])
def test_parallel_chunking_matches_torch(cfm_bundles, version) -> None:
    """Three segments in upstream's parallel mode: windows over their concatenation, one CFM
    batch, SOLA joins, cut back per segment."""
    stage = CfmStage.from_bundle(cfm_bundles(version), "onnxruntime")
    stage.params = replace(stage.params, t_ref=24, t_chunk=64, steps=3)
    voice = _voice(stage, version, seed=3)
    jobs = [_job(voice, n, seed=7) for n in (20, 9, 14)]
    jobs = [replace(j, noise=jobs[0].noise) for j in jobs]
    got = stage.synthesize_parallel(jobs)
    model, vocoder = cfm_models(version)
    expected = torch_parallel(model, vocoder, jobs, stage.params, SamplerConfig(steps=3))
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert snr_db(e, g) >= SNR_MIN_DB
    with pytest.raises(InputError, match="one voice and one speed"):
        stage.synthesize_parallel([jobs[0], replace(jobs[1], speed=1.1)])


def _layer_types(runner) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for node in runner.compiled.get_runtime_model().get_ordered_ops():
        kind = node.get_rt_info()["layerType"].astype(str)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def test_openvino_vocoder_fuses_its_elementwise_ops(cfm_bundles, tmp_path, monkeypatch, caplog):
    """BigVGAN on OpenVINO's CPU plugin compiles its dynamic-shape SnakeBeta chains into fused
    kernels (the graph's tweak), to the same waveform as unfused within f32 rounding; where
    the plugin refuses the fused compile, the graph compiles unfused instead, with a warning."""
    from gsv_export.graph_io import to_openvino
    from gsv_runtime.acoustic.cfm import VOCODER
    from gsv_runtime.backends import GraphTweaks
    from gsv_runtime.backends import ov as ov_backend
    from gsv_runtime.variants import graph_tweaks

    bundle = cfm_bundles(V3)
    xml = to_openvino(bundle.graph_path(VOCODER, "onnxruntime", "fp32"), tmp_path / "voc.xml")
    tweaks = graph_tweaks(VOCODER, "openvino", RunnerOptions())
    assert tweaks.fuse_elementwise
    assert graph_tweaks(VOCODER, "onnxruntime", RunnerOptions()) == GraphTweaks()
    fused = ov_backend.OvRunner(xml, RunnerOptions(), tweaks)
    plain = ov_backend.OvRunner(xml, RunnerOptions())
    fused_kinds, plain_kinds = _layer_types(fused), _layer_types(plain)
    assert fused_kinds.get("Subgraph", 0) > plain_kinds.get("Subgraph", 0)
    assert fused_kinds.get("Eltwise", 0) < plain_kinds["Eltwise"]
    mel = np.random.default_rng(3).normal(-4.0, 2.0, (1, 100, 37)).astype(np.float32)
    want = plain.run({"mel": mel})["wav"]
    np.testing.assert_allclose(fused.run({"mel": mel})["wav"], want, rtol=0, atol=1e-5)

    monkeypatch.setattr(ov_backend, "_FUSED_ELEMENTWISE", {"SNIPPETS_MODE": "NO_SUCH_MODE"})
    fallback = ov_backend.OvRunner(xml, RunnerOptions(), tweaks)
    assert "compiling it unfused" in caplog.text
    assert _layer_types(fallback) == plain_kinds
    np.testing.assert_array_equal(fallback.run({"mel": mel})["wav"], want)
