"""Shared fixtures: tiny random checkpoints per version, made once per test session."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

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


@cache
def cfm_models(version: Any) -> tuple[Any, Any]:
    """Tiny random v3/v4/v5 SoVITS and its vocoder (BigVGAN for v3, v4's for v4 and v5)."""
    import torch

    from gsv_models.testing.bigvgan_init import bigvgan_config, random_bigvgan
    from gsv_models.testing.cfm_init import (
        random_v3,
        random_v4_vocoder,
        v3_config,
        v4_vocoder_config,
    )
    from gsv_models.version import ModelVersion

    torch.set_num_threads(2)
    model = random_v3(v3_config(version, "tiny"), 0)
    if version is ModelVersion.V3:
        return model, random_bigvgan(bigvgan_config("tiny"), 0)
    return model, random_v4_vocoder(v4_vocoder_config("tiny"), 0)


@pytest.fixture(scope="session")
def cfm_bundles(tmp_path_factory: pytest.TempPathFactory):
    """Return a function version → bundle with the six CFM graphs of :func:`cfm_models`,
    verified against torch (ONNX; OpenVINO fp32 and int8 too except for v3), made once."""
    from gsv_export.cfm import cfm_audio_section, export_cfm_graphs, verify_cfm
    from gsv_export.writer import write_manifest
    from gsv_models.version import ModelVersion
    from gsv_runtime.bundle import Bundle

    done: dict[ModelVersion, Bundle] = {}

    def get(version: ModelVersion) -> Bundle:
        if version not in done:
            model, vocoder = cfm_models(version)
            root = tmp_path_factory.mktemp(f"cfm-{version.value}")
            formats = ("onnx",) if version is ModelVersion.V3 else ("onnx", "openvino")
            precisions = ("fp32",) if version is ModelVersion.V3 else ("fp32", "int8")
            specs = export_cfm_graphs(model, vocoder, root, formats, precisions)
            report = verify_cfm(root, specs, model, vocoder)
            assert not report.failures, [c.line() for c in report.failures]
            write_manifest(root, "voice", specs, audio=cfm_audio_section(model, vocoder))
            done[version] = Bundle.load(root)
        return done[version]

    return get
