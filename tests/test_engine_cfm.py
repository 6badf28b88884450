"""v3/v4 bundles end to end: the engine (Synthesizer) and ``gsv voice add`` / ``gsv tts``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gsv_export import export_bundle
from gsv_models.testing import make_checkpoint
from gsv_models.testing.cfm_init import make_v3_checkpoint, make_v4_vocoder
from gsv_models.version import ModelVersion
from gsv_runtime.cli import main
from gsv_runtime.errors import InputError
from gsv_runtime.synthesizer import Synthesizer

PROMPT = {"prompt_text": "这是一段参考音频。", "prompt_lang": "zh"}


@pytest.fixture(scope="module")
def v4_bundle(tiny_support: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    src = tmp_path_factory.mktemp("cfm-engine-src")
    out = tmp_path_factory.mktemp("cfm-engine") / "v4.gsv"
    export_bundle(
        make_checkpoint("v2", "gpt", src / "gpt.ckpt"),
        make_v3_checkpoint(ModelVersion.V4, src / "v4.pth", seed=1),
        out,
        formats=["onnx"],
        vocoder=make_v4_vocoder(src / "vocoder.pth"),
        support=str(tiny_support),
        verify=False,
        progress=lambda _: None,
    )
    return out


def test_synthesizer_runs_a_v4_bundle(v4_bundle: Path, ref_wav: Path) -> None:
    synth = Synthesizer.load(v4_bundle, backend="onnxruntime")
    try:
        assert synth.sample_rate == 48000
        voice = synth.voice(ref_wav, **PROMPT)
        assert voice.ref_mel is not None and voice.ref_mel.shape[0] == 100
        a = synth.synthesize("你好，世界。", "zh", voice=voice, seed=3)
        b = synth.synthesize("你好，世界。", "zh", voice=voice, seed=3)
        assert a.sample_rate == 48000 and a.samples.size > 0
        np.testing.assert_array_equal(a.samples, b.samples)
        fewer = synth.synthesize("你好，世界。", "zh", voice=voice, seed=3, sample_steps=2)
        assert fewer.samples.shape == a.samples.shape
        assert not np.array_equal(fewer.samples, a.samples)
        parallel = synth.synthesize("你好，世界。", "zh", voice=voice, seed=3, parallel_infer=True)
        assert parallel.samples.size > 0 and not np.array_equal(parallel.samples, a.samples)
        with pytest.raises(InputError, match="prompt's tokens and phones"):
            synth.synthesize("你好。", "zh", ref_audio=ref_wav, ref_free=True, seed=1)
        with pytest.raises(InputError, match="cannot stream token windows"):
            synth.stream("你好。", "zh", voice=voice, stream="token")
    finally:
        synth.close()


def test_cli_voice_add_and_tts(v4_bundle: Path, ref_wav: Path, tmp_path: Path) -> None:
    import soundfile as sf

    runner = CliRunner()
    bundle = str(v4_bundle)
    added = runner.invoke(
        main,
        ["voice", "add", bundle, "-r", str(ref_wav), "-p", PROMPT["prompt_text"], "--name", "v4"],
    )
    assert added.exit_code == 0, added.output + repr(added.exception)
    out = tmp_path / "out.wav"
    spoken = runner.invoke(
        main,
        [
            "tts",
            "-m",
            bundle,
            "-v",
            "v4",
            "-t",
            "你好，世界。",
            "-o",
            str(out),
            "--seed",
            "1",
            "--sample-steps",
            "4",
        ],
    )
    assert spoken.exit_code == 0, spoken.output + repr(spoken.exception)
    data, sr = sf.read(out, dtype="int16")
    assert sr == 48000 and len(data) > 0.3 * sr
