"""v5 (v5dev, v5turbo) parity against upstream's ``CFMV5`` and ``synthesize_v5_mel``.

Upstream's v5 code is newer than the GSV_UPSTREAM_DIR snapshot: these tests need a tree named
by GSV_UPSTREAM_V5_DIR that holds ``GPT_SoVITS/module/v5_inference.py`` and the DiT with
``use_step_embedding`` (upstream commit ac846f5 or later; see ``tests/upstream_oracle.py``).
Upstream's DiT is loaded with the weights of our random v5 file; the SoVITS side is v4's, whose
parity ``test_upstream_cfm`` covers. fp32 throughout; upstream's static conditioner cache
(the input projection split in two) is on, as in its default.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gsv_models.cfm import CFM, sampler_for
from gsv_models.checkpoint import read_payload
from gsv_models.load import load_model
from gsv_models.sovits_v3 import SoVITSV3Config
from gsv_models.testing.cfm_init import make_v3_checkpoint, make_v3_lora_checkpoint
from gsv_models.version import ModelVersion
from tests.test_upstream_cfm import snr_db
from tests.upstream_oracle import import_upstream_v5, upstream_dit_args, upstream_lora_config

pytestmark = pytest.mark.upstream

MIN_SNR_DB = 60.0
V5DEV, V5TURBO = ModelVersion.V5DEV, ModelVersion.V5TURBO


def _upstream_dit(path: Path, cfg: SoVITSV3Config) -> nn.Module:
    dit = import_upstream_v5("GPT_SoVITS/f5_tts/model/backbones/dit.py", "upstream_v5_dit")
    net = dit.DiT(**upstream_dit_args(cfg), use_step_embedding=False)
    prefix = "cfm.estimator."
    weights = read_payload(path)[0]["weight"]
    state = {k[len(prefix) :]: v.float() for k, v in weights.items() if k.startswith(prefix)}
    result = net.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"rotary_embed.inv_freq"}
    return net.eval()


def _merged_lora(cfm: nn.Module, lora: Path) -> nn.Module:
    """``cfm`` with the LoRA file merged in as ``TTS.init_vits_weights`` does for a LoRA file
    (peft wraps the CFM, loads the file over the base weights, ``merge_and_unload``)."""
    from peft import get_peft_model

    payload = read_payload(lora)[0]
    wrapped = get_peft_model(cfm, upstream_lora_config(payload["lora_rank"]))
    own = {
        k[len("cfm.") :]: v.float() for k, v in payload["weight"].items() if k.startswith("cfm.")
    }
    result = wrapped.load_state_dict(own, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if ".lora_" in k]
    return wrapped.merge_and_unload()


@pytest.fixture(
    scope="module",
    params=[(V5DEV, False), (V5TURBO, False), (V5TURBO, True)],
    ids=["v5dev", "v5turbo", "v5turbo-lora"],
)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Our CFM and upstream's CFMV5 on one random v5 file; for a LoRA fine-tune (tag 08, as
    upstream 3b95794 writes them) both merge it into its base."""
    torch.set_num_threads(2)
    version, lora = request.param
    work = tmp_path_factory.mktemp(version.value)
    if lora:
        path, base = make_v3_lora_checkpoint(version, work / "l.pth", work / "b.pth", seed=5)
    else:
        path, base = make_v3_checkpoint(version, work / "s.pth", seed=5), None
    ckpt, ours = load_model(path, base=base)
    assert ckpt.version is version and not ckpt.config.dit.step_embedding
    assert (ckpt.lora_rank is not None) == lora
    v5 = import_upstream_v5("GPT_SoVITS/module/v5_inference.py", "upstream_v5_inference")
    theirs = v5.CFMV5(ckpt.config.dit.mel_dim, _upstream_dit(base or path, ckpt.config))
    if lora:
        theirs = _merged_lora(theirs, path)
    return SimpleNamespace(version=version, cfg=ckpt.config, ours=ours.cfm, theirs=theirs, v5=v5)


def _features(cfg: SoVITSV3Config, frames: int, seed: int) -> torch.Tensor:
    return torch.randn(1, cfg.feature_dim, frames, generator=torch.Generator().manual_seed(seed))


def test_estimator_call(pair) -> None:
    g = torch.Generator().manual_seed(4)
    t, mel = 60, pair.cfg.dit.mel_dim
    fea = _features(pair.cfg, t, 1)
    noisy = torch.randn(1, mel, t, generator=g)
    cond = torch.zeros(1, mel, t)
    cond[..., :15] = torch.randn(1, mel, 15, generator=g)
    time = torch.tensor([0.375])
    ours = pair.ours.estimator(noisy, cond, fea, time, torch.tensor([0.125]))
    with torch.no_grad():
        plain = pair.theirs.estimator(noisy, cond, torch.tensor([t]), time, None, fea)
        cache = pair.theirs.estimator.prepare_static_cache(cond, torch.tensor([t]), fea)
        cached, _, _ = pair.theirs.estimator(
            noisy, cond, torch.tensor([t]), time, None, fea, infer=True, static_cache=cache
        )
    assert snr_db(ours, plain.transpose(1, 2)) >= MIN_SNR_DB
    assert snr_db(ours, cached.transpose(1, 2)) >= MIN_SNR_DB


@pytest.mark.parametrize(("steps", "cfg_rate"), [(None, None), (8, 1.3), (4, 0.0)])
def test_cfm_sampling(pair, steps: int | None, cfg_rate: float | None) -> None:
    sampler = sampler_for(pair.version, steps, cfg_rate)
    fea = _features(pair.cfg, 50, 3)
    prompt = torch.rand(1, pair.cfg.dit.mel_dim, 17, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(11)  # upstream draws its start noise from the global generator
    theirs = pair.theirs.inference(
        fea.transpose(1, 2),
        torch.tensor([50]),
        prompt * 2 - 1,
        sampler.steps,
        inference_cfg_rate=sampler.cfg_rate,
    )
    torch.manual_seed(11)
    noise = torch.randn(1, pair.cfg.dit.mel_dim, 50)
    ours = pair.ours.sample(fea, prompt * 2 - 1, noise, sampler)
    assert float(theirs[..., :17].abs().max()) == 0
    assert snr_db(ours, theirs) >= MIN_SNR_DB


@pytest.mark.parametrize(("ref_frames", "target_frames"), [(40, 1300), (520, 1010)])
def test_chunked_synthesis(pair, ref_frames: int, target_frames: int) -> None:
    from gsv_models.cfm import sample_v5_chunks

    sampler = sampler_for(pair.version, 4)
    ref = _features(pair.cfg, ref_frames + 3, 7)  # features a little longer than the mel
    target = _features(pair.cfg, target_frames, 8)
    mel = torch.rand(
        1, pair.cfg.dit.mel_dim, ref_frames, generator=torch.Generator().manual_seed(9)
    )
    model = SimpleNamespace(version=pair.version.value, cfm=pair.theirs)
    torch.manual_seed(12)
    theirs = pair.v5.synthesize_v5_mel(model, ref, target, mel, 4, sampler.cfg_rate)
    r = min(ref_frames, 500)
    torch.manual_seed(12)  # the same draws: one per chunk, prompt frames included
    ours = sample_v5_chunks(
        pair.ours,
        ref,
        target,
        mel,
        lambda a, b: torch.randn(1, pair.cfg.dit.mel_dim, r + b - a)[..., r:],
        sampler,
    )
    assert ours.shape == theirs.shape == (1, pair.cfg.dit.mel_dim, target_frames)
    assert snr_db(ours, theirs) >= MIN_SNR_DB


def test_step_counts_and_rates_upstream_refuses(pair) -> None:
    for steps, cfg_rate in [(5, 0.0), (4, 2.5), (4, float("nan"))]:
        with pytest.raises(ValueError):
            pair.v5.validate_v5_sampling(steps, cfg_rate)
        with pytest.raises(ValueError, match=r"(steps|cfg_rate) must be"):
            sampler_for(pair.version, steps, cfg_rate).validate()
    assert pair.v5.resolve_sampling(pair.version.value) == (
        sampler_for(pair.version).steps,
        sampler_for(pair.version).cfg_rate,
    )
    assert isinstance(pair.ours, CFM)
