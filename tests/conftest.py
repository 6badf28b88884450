"""Shared fixtures: tiny random checkpoints per version, made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests compile throw-away bundles: no compiled-model cache in the user's home
# (tests/test_compile_cache.py turns it on in a temporary folder).
os.environ["GSV_CACHE_DIR"] = "off"

VERSIONS = ["v1", "v2", "v2Pro", "v2ProPlus"]


@pytest.fixture(scope="session")
def tiny_voice(tmp_path_factory: pytest.TempPathFactory):
    """Return a function version → {"gpt": path, "sovits": path[, "sv": path]} (cached)."""
    from gsv_models.testing import make_voice_checkpoints
    from gsv_models.version import ModelVersion

    cache: dict[str, dict[str, Path]] = {}

    def get(version: str) -> dict[str, Path]:
        if version not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{version}")
            paths = make_voice_checkpoints(ModelVersion.parse(version), out, size="tiny", seed=0)
            cache[version] = {p.stem: p for p in paths}
        return cache[version]

    return get


@pytest.fixture(scope="session")
def tiny_support(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A support bundle (HuBERT, BERT, SV) exported from tiny random stand-ins, both formats."""
    from gsv_export import export_support_bundle
    from gsv_models.testing import make_checkpoint
    from gsv_models.testing.support_dirs import make_bert_dir, make_hubert_dir

    work = tmp_path_factory.mktemp("support-src")
    hubert = make_hubert_dir(work / "hubert", size="tiny")
    bert = make_bert_dir(work / "bert", size="tiny")
    sv = make_checkpoint("v2Pro", "sv", work / "sv.ckpt", size="tiny")
    out = tmp_path_factory.mktemp("bundles") / "support"
    export_support_bundle(hubert, bert, out, sv=sv, verify=False, progress=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_voice, tiny_support: Path, tmp_path_factory: pytest.TempPathFactory):
    """Return a function version → voice bundle dir (ONNX + OpenVINO, fp32), made once."""
    from gsv_export import export_bundle

    cache: dict[str, Path] = {}

    def get(version: str) -> Path:
        if version not in cache:
            ckpts = tiny_voice(version)
            out = tmp_path_factory.mktemp("bundles") / f"voice-{version}"
            export_bundle(
                ckpts["gpt"],
                ckpts["sovits"],
                out,
                support=str(tiny_support),
                verify=False,
                progress=lambda _: None,
            )
            cache[version] = out
        return cache[version]

    return get


@pytest.fixture(scope="session")
def ref_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4.2 s voiced-like reference clip at 44.1 kHz stereo."""
    import numpy as np
    import soundfile as sf

    sr = 44100
    t = np.arange(int(4.2 * sr)) / sr
    rng = np.random.default_rng(0)
    mono = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    mono = mono + 0.02 * rng.standard_normal(len(t))
    path = tmp_path_factory.mktemp("audio") / "ref.wav"
    sf.write(path, np.stack([mono, 0.8 * mono], axis=1).astype(np.float32), sr)
    return path
