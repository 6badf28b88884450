"""gsv bench on a tiny v4 (CFM) voice: sample steps as a sweep dimension, the encoder / DiT /
vocoder stages of the runtime and of the torch baseline, and the report's v3/v4 table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gsv_bench import run_benchmark
from gsv_bench.assets import bundle_assets
from gsv_bench.cli import _points
from gsv_bench.scenarios import Settings, Sweep, builtin_texts, expand
from gsv_export import export_bundle
from gsv_models.testing import make_checkpoint
from gsv_models.testing.cfm_init import make_v3_checkpoint, make_v4_vocoder
from gsv_models.version import ModelVersion
from gsv_runtime.cli import bench_cmd

TOKENS = 8


def _cfm_assets(version: ModelVersion, support: Path, ref_wav: Path, tmp: Path):
    """A tiny voice of ``version`` exported (ONNX) with its prepared bench voice."""
    torch.set_num_threads(2)
    src = tmp / "src"
    gpt = make_checkpoint("v2", "gpt", src / "gpt.ckpt")
    sovits = make_v3_checkpoint(version, src / "sovits.pth", seed=1)
    vocoder = make_v4_vocoder(src / "vocoder.pth")
    bundle = tmp / "voice.gsv"
    export_bundle(
        gpt,
        sovits,
        bundle,
        formats=["onnx"],
        vocoder=vocoder,
        support=str(support),
        verify=False,
        progress=lambda _: None,
    )
    return bundle_assets(
        bundle,
        ref_wav=ref_wav,
        prompt_text="This is a reference.",
        prompt_lang="en",
        support=support,
        gpt=gpt,
        sovits=sovits,
        vocoder=vocoder,
        cache_dir=src / "cache",
        progress=lambda _: None,
    )


@pytest.fixture(scope="module")
def v4_assets(tiny_support: Path, ref_wav: Path, tmp_path_factory: pytest.TempPathFactory):
    return _cfm_assets(ModelVersion.V4, tiny_support, ref_wav, tmp_path_factory.mktemp("v4"))


def test_sample_steps_is_a_sweep_dimension() -> None:
    points = expand([Sweep(engines=("torch", "onnxruntime"), sample_steps=(4, 8))])
    assert [p.name for p in points] == [
        "torch/cpu/fp32 t2 b1 c1 s4",
        "onnxruntime/cpu/fp32 t2 b1 c1 s4",
        "torch/cpu/fp32 t2 b1 c1 s8",
        "onnxruntime/cpu/fp32 t2 b1 c1 s8",
    ]
    args = ["--random", "v4", "--threads", "2", "--engines", "onnxruntime"]
    args += ["--sample-steps", "4,32", "--vocoder", "voc.pth"]
    opts = bench_cmd.make_context("bench", args).params
    assert opts["vocoder"] == Path("voc.pth")
    cli_points, _ = _points(opts)
    assert [p.sample_steps for p in cli_points] == [4, 32]


def test_bench_times_the_cfm_stages_against_torch(v4_assets, tmp_path: Path) -> None:
    points = expand([Sweep(engines=("torch", "onnxruntime"), threads=(1,), sample_steps=(2, 3))])
    settings = Settings(
        warmup=1,
        repeats=1,
        fixed_length=TOKENS,
        measure_reference=False,
        isolate=False,
        texts=tuple(builtin_texts(["en"], 1)),
    )
    result = run_benchmark(v4_assets, points, settings, tmp_path, charts=False)
    records = {r["name"]: r for r in result.records}
    assert all(r["status"] == "ok" for r in records.values()), [
        r.get("reason") for r in records.values()
    ]
    for steps in (2, 3):
        ort = records[f"onnxruntime/cpu/fp32 t1 b1 c1 s{steps}"]
        base = records[f"torch/cpu/fp32 t1 b1 c1 s{steps}"]
        assert ort["effective"]["sample_steps"] == base["effective"]["sample_steps"] == steps
        m, b = ort["metrics"], base["metrics"]
        # one sentence → one chunk (the target is far shorter than a chunk): one DiT call a step
        assert m["cfm"]["dit_steps_per_pass"] == b["cfm"]["dit_steps_per_pass"] == steps
        assert m["cfm"]["dit_frames_mean"] == b["cfm"]["dit_frames_mean"]
        assert m["cfm"]["dit_rows_mean"] == b["cfm"]["dit_rows_mean"] == 1
        assert m["audio_s"]["median"] == pytest.approx(b["audio_s"]["median"])
        for metrics in (m, b):
            stages = {k: v["median"] for k, v in metrics["stages_s"].items()}
            assert stages["cfm_encoder"] > 0 and stages["cfm_vocoder"] > 0
            # the DiT stage holds every step (and the text embedding)
            assert 1e3 * stages["cfm_dit"] >= steps * metrics["cfm"]["dit_step_ms"]["min"]
            assert metrics["cfm"]["vocoder_ms_per_audio_s"] > 0
            assert metrics["gpt_step_ms"]["n"] == TOKENS - 1
    report = (tmp_path / "report.md").read_text()
    assert "## v3/v4: encoder, DiT, vocoder" in report
    section = report.split("## v3/v4: encoder, DiT, vocoder")[1].splitlines()
    row = next(line for line in section if "onnxruntime/cpu/fp32 t1 b1 c1 s3 |" in line)
    assert f"| {TOKENS} | 3 |" in row and "×" in row  # measured against torch at 3 steps
    saved = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["point"]["sample_steps"] for r in saved} == {2, 3}


def test_torch_baseline_chunks_a_long_target(v4_assets) -> None:
    """Chunks after the first carry the previous chunk's tail as prompt, the last one short."""
    from dataclasses import replace

    import numpy as np

    from gsv_bench.timers import StageClock
    from gsv_bench.torch_cfm import TorchCfm
    from gsv_models.load import load_model
    from gsv_runtime.acoustic import NoiseSource
    from gsv_runtime.bundle import Bundle
    from gsv_runtime.voice import Voice

    audio = Bundle.load(v4_assets.voice_dir).manifest.audio
    voice = Voice.load(v4_assets.voice_root, v4_assets.voice_name)
    clock = StageClock()
    cfm = TorchCfm.load(
        load_model(v4_assets.sovits, "sovits")[1], v4_assets.vocoder, audio, clock, "cpu"
    )
    prompt = min(voice.ref_mel.shape[1], cfm.params.t_ref)
    cfm.params = replace(cfm.params, t_chunk=prompt + 30)  # 30 target frames per chunk
    codes = np.random.default_rng(0).integers(0, 1024, 20)  # 20 codes → 80 frames: 30 + 30 + 20
    with torch.no_grad():
        samples = cfm.synthesize(codes, np.arange(5), voice, NoiseSource((0, 0)), 2)
    assert samples == 80 * cfm.params.hop
    assert [s.context for s in clock.dit] == [prompt + 30] * 2 + [60] * 2 + [50] * 2


def test_torch_baseline_chunks_v5_as_synthesize_v5_mel(
    tiny_support: Path, ref_wav: Path, tmp_path: Path
) -> None:
    """v5: chunks of min(1000 − R, 640) target frames, each behind the R reference frames."""
    from dataclasses import replace

    import numpy as np

    from gsv_bench.timers import StageClock
    from gsv_bench.torch_cfm import TorchCfm
    from gsv_models.load import load_model
    from gsv_runtime.acoustic import NoiseSource
    from gsv_runtime.bundle import Bundle
    from gsv_runtime.voice import Voice

    assets = _cfm_assets(ModelVersion.V5TURBO, tiny_support, ref_wav, tmp_path)
    audio = Bundle.load(assets.voice_dir).manifest.audio
    voice = Voice.load(assets.voice_root, assets.voice_name)
    assert voice.ref_mel.shape[1] > 300
    voice = replace(voice, ref_mel=voice.ref_mel[:, :300])
    clock = StageClock()
    model = load_model(assets.sovits, "sovits")[1]
    cfm = TorchCfm.load(model, assets.vocoder, audio, clock, "cpu")
    assert cfm.params.tail_frames > 0
    codes = np.random.default_rng(0).integers(0, 1024, 200)  # 800 frames: 640 + 160
    with torch.no_grad():
        samples = cfm.synthesize(codes, np.arange(5), voice, NoiseSource((0, 0)), 4)
    assert samples == 800 * cfm.params.hop
    # R = 300 reference frames (≤ 360 leaves a full 640-frame chunk) before every chunk
    assert [s.context for s in clock.dit] == [300 + 640] * 4 + [300 + 160] * 4
