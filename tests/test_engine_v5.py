"""v5 bundles end to end: ``gsv export`` of a v5turbo voice, the engine with ``sample_steps`` and
``cfg_rate`` as request fields, ``gsv tts --cfg-rate`` and ``gsv info``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gsv_models.testing import make_checkpoint
from gsv_models.testing.cfm_init import make_v3_checkpoint, make_v4_vocoder
from gsv_models.version import ModelVersion
from gsv_runtime.cli import main
from gsv_runtime.errors import InputError
from gsv_runtime.synthesizer import Synthesizer

PROMPT = {"prompt_text": "这是一段参考音频。", "prompt_lang": "zh"}


@pytest.fixture(scope="module")
def v5_bundle(tiny_support: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    src = tmp_path_factory.mktemp("v5-engine-src")
    out = tmp_path_factory.mktemp("v5-engine") / "v5.gsv"
    sovits = make_v3_checkpoint(ModelVersion.V5TURBO, src / "v5turbo.pth", seed=1)
    result = CliRunner().invoke(
        main,
        [
            "export",
            "--gpt",
            str(make_checkpoint("v2", "gpt", src / "gpt.ckpt")),
            "--sovits",
            str(sovits),
            "--vocoder",
            str(make_v4_vocoder(src / "vocoder.pth")),
            "--support",
            str(tiny_support),
            "--format",
            "onnx",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_synthesizer_runs_a_v5_bundle(v5_bundle: Path, ref_wav: Path) -> None:
    synth = Synthesizer.load(v5_bundle, backend="onnxruntime")
    try:
        assert synth.sample_rate == 48000
        voice = synth.voice(ref_wav, **PROMPT)
        a = synth.synthesize("你好，世界。", "zh", voice=voice, seed=3)
        b = synth.synthesize("你好，世界。", "zh", voice=voice, seed=3, sample_steps=4, cfg_rate=0)
        np.testing.assert_array_equal(a.samples, b.samples)  # v5turbo: 4 steps, no guidance
        guided = synth.synthesize("你好，世界。", "zh", voice=voice, seed=3, cfg_rate=1.3)
        assert guided.samples.shape == a.samples.shape
        assert not np.array_equal(guided.samples, a.samples)
        with pytest.raises(InputError, match="sample_steps must be one of 4, 8, 16, 32"):
            synth.synthesize("你好。", "zh", voice=voice, seed=1, sample_steps=5)
        with pytest.raises(InputError, match=r"cfg_rate must be finite and in \[0, 2\]"):
            synth.synthesize("你好。", "zh", voice=voice, seed=1, cfg_rate=3.0)
        with pytest.raises(InputError, match="cfg_rate must be"):
            synth.synthesize("你好。", "zh", voice=voice, seed=1, cfg_rate=float("nan"))
    finally:
        synth.close()


def test_cli_tts_cfg_rate_and_info(v5_bundle: Path, ref_wav: Path, tmp_path: Path) -> None:
    import soundfile as sf

    runner = CliRunner()
    bundle = str(v5_bundle)
    base = ["tts", "-m", bundle, "-r", str(ref_wav), "-p", PROMPT["prompt_text"]]
    base += ["--prompt-lang", "zh", "-t", "你好，世界。", "--seed", "1"]
    out = tmp_path / "out.wav"
    spoken = runner.invoke(main, [*base, "-o", str(out), "--cfg-rate", "0.5"])
    assert spoken.exit_code == 0, spoken.output + repr(spoken.exception)
    data, sr = sf.read(out, dtype="int16")
    assert sr == 48000 and len(data) > 0
    for bad, message in [
        (["--sample-steps", "5"], "sample_steps must be one of 4, 8, 16, 32"),
        (["--cfg-rate", "3"], "cfg_rate must be finite and in [0, 2]"),
    ]:
        failed = runner.invoke(main, [*base, "-o", str(out), *bad])
        assert failed.exit_code == 1 and message in failed.output, failed.output
        assert "Traceback" not in failed.output
    info = runner.invoke(main, ["info", bundle])
    assert info.exit_code == 0 and "v5turbo" in info.output, info.output


def test_api_v2_cfg_rate_and_sample_steps(v5_bundle: Path, ref_wav: Path, tmp_path: Path) -> None:
    """api_v2's ``cfg_rate`` and ``sample_steps`` reach the stage; out-of-range values are 400."""
    import httpx

    from tests.test_server import Running

    allow = tmp_path / "allowed"
    allow.mkdir()
    (allow / "ref.wav").write_bytes(ref_wav.read_bytes())
    running = Running(v5_bundle, allow)
    try:
        base = {"text": "你好。", "text_lang": "zh", "ref_audio_path": str(allow / "ref.wav")}
        base |= {"prompt_text": PROMPT["prompt_text"], "prompt_lang": "zh", "seed": "1"}
        url = f"{running.url}/tts"
        plain = httpx.get(url, params=base, timeout=60)
        guided = httpx.get(url, params={**base, "cfg_rate": "1.3", "sample_steps": "8"}, timeout=60)
        assert plain.status_code == guided.status_code == 200, guided.text
        assert plain.content != guided.content
        for bad, message in [
            ({"sample_steps": "5"}, "sample_steps must be one of 4, 8, 16, 32"),
            ({"cfg_rate": "3"}, "cfg_rate must be finite and in [0, 2]"),
            ({"cfg_rate": "nan"}, "cfg_rate must be"),
        ]:
            r = httpx.get(url, params={**base, **bad}, timeout=60)
            assert r.status_code == 400 and message in r.json()["message"], r.text
    finally:
        running.stop()
