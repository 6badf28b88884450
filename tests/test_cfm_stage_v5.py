"""v5 (v5dev, v5turbo) runtime: export, the CFM stage's v5 chunking and sampler, against torch.

The torch side is upstream's ``synthesize_v5_mel`` written with the reference modules
(``decode_features``, :func:`gsv_models.cfm.sample_v5_chunks`, the vocoder; its parity with
upstream's own code is in ``test_upstream_v5.py``) and fed the same start noise.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from gsv_export.parity import snr_db
from gsv_models.cfm import sample_v5_chunks, sampler_for
from gsv_models.sovits_v3 import SoVITSV3Model
from gsv_models.version import ModelVersion
from gsv_runtime.acoustic import VocodeJob
from gsv_runtime.acoustic.cfm import CfmStage, Sampler
from gsv_runtime.errors import InputError
from tests.conftest import cfm_models
from tests.test_cfm_stage import _job, _voice

V5DEV, V5TURBO = ModelVersion.V5DEV, ModelVersion.V5TURBO
SNR_MIN_DB = 40.0
"""Stage audio vs the torch pipeline, same noise (the issue's floor)."""


def torch_v5(
    model: SoVITSV3Model,
    vocoder: torch.nn.Module,
    job: VocodeJob,
    stage: CfmStage,
    steps: int,
    cfg_rate: float,
) -> np.ndarray:
    """Upstream's v5 path (``decode_encp`` + ``synthesize_v5_mel`` + vocoder) with our noise."""
    voice, p = job.voice, stage.params

    def features(codes: np.ndarray, phones: np.ndarray, speed: float) -> torch.Tensor:
        return model.decode_features(
            torch.from_numpy(np.asarray(codes, np.int64))[None],
            torch.tensor([len(codes)]),
            torch.from_numpy(np.asarray(phones, np.int64))[None],
            torch.tensor([len(phones)]),
            torch.from_numpy(voice.ge[:1]),
            speed,
        )[0]

    with torch.no_grad():
        mel = sample_v5_chunks(
            model.cfm,
            features(voice.prompt_tokens, voice.prompt_phones, 1.0),
            features(job.tokens, job.phones, job.speed),
            torch.from_numpy(p.normalize(voice.ref_mel))[None],
            lambda a, b: torch.from_numpy(job.noise.frames(100, a, b))[None],
            sampler_for(model.cfg.version, steps, cfg_rate),
        )
        return vocoder(torch.from_numpy(p.denormalize(mel.numpy())))[0, 0].numpy()


def test_manifest_carries_the_v5_sampler(cfm_bundles) -> None:
    for version, steps, cfg in [(V5TURBO, 4, 0.0), (V5DEV, 32, 1.3)]:
        stage = CfmStage.from_bundle(cfm_bundles(version), "onnxruntime")
        p = stage.params
        assert (p.steps, p.cfg_rate, p.temperature, p.cfg_drops_text) == (steps, cfg, 0.875, False)
        assert (p.allowed_steps, p.max_cfg_rate) == ((4, 8, 16, 32), 2.0)
        assert (p.t_ref, p.t_chunk, p.max_target_frames, p.tail_frames) == (500, 1000, 640, 32)
        assert (stage.sample_rate, stage.params.hop) == (48000, 480)
        assert "dt" not in stage._runner("cfm_embed").input_names
        assert "step" not in stage._runner("cfm_step").input_names


@pytest.mark.parametrize(
    ("version", "backend", "steps", "cfg_rate"),
    [
        (V5TURBO, "onnxruntime", None, None),
        (V5DEV, "openvino", 4, 1.3),
        (V5DEV, "onnxruntime", 8, 0.5),
    ],
)
def test_stage_matches_torch_v5(cfm_bundles, version, backend, steps, cfg_rate) -> None:
    """330 tokens = 1320 frames: three chunks (640 + 640 + 40) behind a 120-frame prompt, so
    later chunks' prompts end in the previous chunk's last 32 frames."""
    stage = CfmStage.from_bundle(cfm_bundles(version), backend)
    voice = _voice(stage, V5DEV)
    job = replace(_job(voice, 330, seed=1), sample_steps=steps, cfg_rate=cfg_rate)
    wav = stage.vocode([job])[0]
    model, vocoder = cfm_models(version)
    default = sampler_for(version)
    expected = torch_v5(
        model,
        vocoder,
        job,
        stage,
        steps or default.steps,
        default.cfg_rate if cfg_rate is None else cfg_rate,
    )
    assert wav.shape == expected.shape == (1320 * 480,)
    assert snr_db(expected, wav) >= SNR_MIN_DB
    parallel = stage.vocode([replace(job, parallel=True)])[0]  # upstream loops v5 per item
    np.testing.assert_array_equal(parallel, wav)


def test_v5_limits_are_input_errors(cfm_bundles) -> None:
    stage = CfmStage.from_bundle(cfm_bundles(V5TURBO), "onnxruntime")
    voice = _voice(stage, V5TURBO)
    job = _job(voice, 5, 0)
    for change, message in [
        ({"sample_steps": 5}, "sample_steps must be one of 4, 8, 16, 32 for this model, got 5"),
        ({"cfg_rate": 3.0}, r"cfg_rate must be finite and in \[0, 2\], got 3"),
        ({"cfg_rate": math.nan}, "cfg_rate must be finite"),
    ]:
        with pytest.raises(InputError, match=message):
            stage.vocode([replace(job, **change)])
    with pytest.raises(InputError, match="one of 4, 8, 16, 32"):
        stage.synthesize(job, Sampler(steps=3, allowed_steps=(4, 8, 16, 32)))
