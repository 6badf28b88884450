"""Continuous batching on a full-size v2 voice: every request of a mixed, staggered batch gives
the tokens and audio it gives alone (the tiny-model tests cannot show full-size numerics)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gsv_export import export_bundle
from gsv_export.parity import snr_db
from gsv_models.testing import make_voice_checkpoints
from gsv_models.version import ModelVersion
from gsv_runtime.audio_features import linear_spectrogram
from gsv_runtime.engine import EngineConfig, SynthesisRequest
from gsv_runtime.synthesizer import Synthesizer
from gsv_runtime.voice import Voice

pytestmark = pytest.mark.slow

TEXTS = ["The train was late again.", "A small dog watched the pigeons.", "Then it opened."]


@pytest.fixture(scope="module")
def full_synth(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("full-engine")
    paths = {p.stem: p for p in make_voice_checkpoints(ModelVersion.parse("v2"), work, "full")}
    export_bundle(
        paths["gpt"],
        paths["sovits"],
        work / "voice",
        formats=("onnx",),
        verify=False,
        progress=lambda _: None,
    )
    synth = Synthesizer.load(work / "voice", backend="onnxruntime", engine=EngineConfig(max_rows=4))
    yield synth
    synth.close()


def _voice(synth: Synthesizer) -> Voice:
    """A voice without HuBERT/BERT: random prompt tokens and phones, ge from a test tone."""
    rng = np.random.default_rng(0)
    t = np.arange(int(3.5 * 32000)) / 32000
    wav = (0.3 * np.sin(2 * np.pi * 150 * t) + 0.01 * rng.standard_normal(len(t))).astype("f4")
    ge = synth.sovits.reference(linear_spectrogram(wav))
    return Voice(
        rng.integers(0, 1024, 80), rng.integers(1, 300, 20), np.zeros((20, 1024), "f4"), ge
    )


def test_full_size_batch_invariance(full_synth: Synthesizer) -> None:
    voice = _voice(full_synth)
    requests = [
        SynthesisRequest.from_options(
            TEXTS[i % 3],
            "en",
            voice,
            seed=i,
            top_k=[15, 1][i % 2],
            fixed_length=[40, 25, 60][i % 3],
        )
        for i in range(5)
    ]
    alone = [full_synth.engine.submit(r).result(300) for r in requests]
    handles = []
    for r in requests:  # 5 requests, 4 rows: the last waits, others join a running batch
        handles.append(full_synth.engine.submit(r))
        time.sleep(0.05)
    for a, handle in zip(alone, handles, strict=True):
        b = handle.result(300)
        assert a.metadata["segments"] == b.metadata["segments"]
        assert snr_db(a.samples.astype(np.float64), b.samples.astype(np.float64)) >= 50.0
