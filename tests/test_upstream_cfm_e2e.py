"""v3/v4 end to end against upstream's own ``TTS.using_vocoder_synthesis``.

Upstream's function (and the module-level mel and normalisation helpers it calls) is read from
the GSV_UPSTREAM_DIR checkout at test time and run on a stand-in ``TTS`` object holding
upstream's ``SynthesizerTrnV3`` and vocoder, loaded from the same random files our bundle is
exported from. Importing ``TTS.py`` itself would pull in its whole application (torchaudio,
ffmpeg, the text frontend); the function needs none of that when the reference audio is already
at the mel's rate. Our side is the torch-free CFM stage (onnxruntime, fp32) fed the start noise
upstream drew, recorded per chunk. Small ``T_ref``/``T_chunk`` force several chunks.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from gsv_export.cfm import REF_MEL, cfm_audio_section, export_cfm_graphs, verify_cfm
from gsv_export.parity import snr_db
from gsv_export.sovits import _probe_audio
from gsv_export.writer import write_manifest
from gsv_models.bigvgan import load_bigvgan
from gsv_models.load import load_model
from gsv_models.testing.bigvgan_init import make_bigvgan_dir
from gsv_models.testing.cfm_init import make_v3_checkpoint, make_v4_vocoder
from gsv_models.version import ModelVersion
from gsv_models.vocoder_v4 import load_v4_vocoder
from gsv_runtime.acoustic import NoiseSource, VocodeJob
from gsv_runtime.acoustic.cfm import CfmStage
from gsv_runtime.audio_features import linear_spectrogram, log_mel_spectrogram
from gsv_runtime.bundle import Bundle
from gsv_runtime.voice import Voice
from tests.test_upstream_cfm import _upstream_net, upstream_v4_vocoder
from tests.upstream_oracle import import_upstream, upstream_bigvgan, upstream_root

pytestmark = pytest.mark.upstream

V3, V4 = ModelVersion.V3, ModelVersion.V4
MIN_SNR_DB = 40.0
"""The issue's end-to-end floor (fp32, same noise)."""
T_REF, T_CHUNK, STEPS = 24, 64, 4
_HELPERS = ("spec_min", "spec_max", "norm_spec", "denorm_spec", "mel_fn", "mel_fn_v4")


def _upstream_synthesis() -> Any:
    """Upstream's ``TTS.using_vocoder_synthesis`` compiled from the checkout, with its helpers."""
    path = upstream_root() / "GPT_SoVITS" / "TTS_infer_pack" / "TTS.py"
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    wanted: list[str] = []
    for node in ast.parse(source).body:
        names = {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)}
        if names & set(_HELPERS) or getattr(node, "name", None) in _HELPERS:
            wanted.append("\n".join(lines[node.lineno - 1 : node.end_lineno]))
        if isinstance(node, ast.ClassDef) and node.name == "TTS":
            method = next(
                n for n in node.body if getattr(n, "name", "") == "using_vocoder_synthesis"
            )
            wanted.append(textwrap.dedent("\n".join(lines[method.lineno - 1 : method.end_lineno])))
    assert len(wanted) == len(_HELPERS) + 1, "upstream's TTS.py changed shape"
    mel_processing = import_upstream("module.mel_processing")

    def resample(*_: Any) -> None:
        raise AssertionError("the reference audio is given at the mel's rate")

    namespace: dict[str, Any] = {
        "torch": torch,
        "mel_spectrogram_torch": mel_processing.mel_spectrogram_torch,
        "resample": resample,
    }
    exec(compile("\n\n".join(wanted), str(path), "exec"), namespace)
    return namespace["using_vocoder_synthesis"]


class _RecordedNoise(NoiseSource):
    """The target frames of the start noise upstream drew, chunk after chunk."""

    def __init__(self, frames: np.ndarray) -> None:
        super().__init__((0,))
        self._frames = frames

    def frames(self, channels: int, start: int, stop: int) -> np.ndarray:
        assert channels == self._frames.shape[0] and stop <= self._frames.shape[1]
        return np.ascontiguousarray(self._frames[:, start:stop])


@pytest.mark.parametrize(("version", "speed"), [(V3, 1.0), (V4, 1.25)], ids=["v3", "v4"])
def test_stage_audio_matches_upstream_tts(
    tmp_path: Path, version: ModelVersion, speed: float, capsys: pytest.CaptureFixture
) -> None:
    synthesis = _upstream_synthesis()
    torch.set_num_threads(2)
    sovits = make_v3_checkpoint(version, tmp_path / "s2.pth", seed=4, half=False)
    if version is V3:
        vocoder_file = make_bigvgan_dir(tmp_path / "bigvgan", "tiny", 0)
        ours_vocoder = load_bigvgan(vocoder_file)
    else:
        vocoder_file = make_v4_vocoder(tmp_path / "vocoder.pth", seed=0)
        ours_vocoder = load_v4_vocoder(vocoder_file)
    ckpt, model = load_model(sovits)
    root = tmp_path / "bundle"
    specs = export_cfm_graphs(model, ours_vocoder, root, ("onnx",), ("fp32",))
    assert not verify_cfm(root, specs, model, ours_vocoder).failures
    write_manifest(root, "voice", specs, audio=cfm_audio_section(model, ours_vocoder))
    stage = CfmStage.from_bundle(Bundle.load(root), "onnxruntime")
    stage.params = replace(stage.params, t_ref=T_REF, t_chunk=T_CHUNK, steps=STEPS)

    rng = np.random.default_rng(3)
    prompt_tokens, prompt_phones = rng.integers(0, 1024, 30), rng.integers(0, 732, 12)
    tokens, phones = rng.integers(0, 1024, 40), rng.integers(0, 732, 9)
    spec = linear_spectrogram(_probe_audio(1.2, 32000, 0))
    mel = REF_MEL[version]
    rate = mel["sample_rate"]
    wav = _probe_audio(1.2, rate, 1)

    net = _upstream_net(sovits, None, ckpt.config)
    fake = SimpleNamespace(
        prompt_cache={
            "prompt_semantic": torch.from_numpy(prompt_tokens),
            "phones": prompt_phones.tolist(),
            "refer_spec": [torch.from_numpy(spec)[None]],
            "raw_audio": torch.from_numpy(wav)[None],
            "raw_sr": rate,
        },
        configs=SimpleNamespace(device="cpu", version=version.value),
        precision=torch.float32,
        vits_model=net,
        vocoder=(
            upstream_bigvgan(vocoder_file)
            if version is V3
            else upstream_v4_vocoder(vocoder_file, ours_vocoder.conv_pre.out_channels)
        ),
        vocoder_configs={"T_ref": T_REF, "T_chunk": T_CHUNK},
    )
    drawn: list[torch.Tensor] = []
    randn = torch.randn

    def recording_randn(*args: Any, **kwargs: Any) -> torch.Tensor:
        drawn.append(randn(*args, **kwargs))
        return drawn[-1]

    torch.manual_seed(0)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "randn", recording_randn)
        expected = synthesis(
            fake,
            torch.from_numpy(tokens)[None, None],
            torch.from_numpy(phones)[None],
            speed=speed,
            sample_steps=STEPS,
        ).numpy()
    assert len(drawn) > 2  # several chunks

    voice = Voice(
        prompt_tokens=prompt_tokens,
        prompt_phones=prompt_phones,
        prompt_bert=np.zeros((12, 1024), np.float32),
        ge=stage.reference(spec),
        ref_mel=log_mel_spectrogram(wav, rate, mel["n_fft"], mel["hop"], mel["win"], 100),
    )
    prompt = min(voice.ref_mel.shape[1], T_REF)
    noise = np.concatenate([d[0, :, prompt:].numpy() for d in drawn], axis=1)
    job = VocodeJob(tokens, phones, voice, _RecordedNoise(noise), speed=speed)
    got, _ = stage.synthesize(job)
    assert got.shape == expected.shape
    snr = snr_db(expected, got)
    with capsys.disabled():
        print(f"\n{version.value} audio vs upstream's TTS.using_vocoder_synthesis: {snr:.1f} dB")
    assert snr >= MIN_SNR_DB
