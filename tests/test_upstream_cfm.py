"""v3/v4 parity against upstream's own SynthesizerTrnV3 / CFM, loaded from the same random files.

Each case writes a random checkpoint in upstream's format (full, or LoRA + base), loads it with
our loader and with upstream's own code path (``process_ckpt.load_sovits_new``, peft
``merge_and_unload`` for LoRA files, as ``TTS.init_vits_weights`` does) and compares, in fp32:
``decode_encp`` features, one DiT estimator call and the whole CFM sampling from the same start
noise. Also the v4 vocoder against upstream's ``Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from gsv_models.cfm import SamplerConfig
from gsv_models.load import load_model
from gsv_models.sovits_v3 import SoVITSV3Config, SoVITSV3Model
from gsv_models.spectrogram import linear_spectrogram
from gsv_models.testing.cfm_init import (
    make_v3_checkpoint,
    make_v3_lora_checkpoint,
    make_v4_vocoder,
    v3_config,
)
from gsv_models.version import ModelVersion
from gsv_models.vocoder_v4 import V4VocoderConfig, load_v4_vocoder
from tests.upstream_oracle import (
    import_upstream,
    upstream_dit_args,
    upstream_lora_config,
    upstream_root,
)

pytestmark = pytest.mark.upstream

MIN_SNR_DB = 60.0
CASES = [
    (ModelVersion.V3, False),
    (ModelVersion.V3, True),
    (ModelVersion.V4, False),
    (ModelVersion.V4, True),
]
IDS = ["v3-full", "v3-lora", "v4-full", "v4-lora"]


def snr_db(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Signal-to-error ratio of ``ours`` against ``ref`` in dB (inf when identical)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    ours, ref = ours.detach(), ref.detach()
    err = float((ours.double() - ref.double()).pow(2).sum())
    sig = float(ref.double().pow(2).sum())
    assert sig > 0
    return float("inf") if err == 0 else 10 * torch.log10(torch.tensor(sig / err)).item()


@dataclass
class Pair:
    cfg: SoVITSV3Config
    ours: SoVITSV3Model
    theirs: nn.Module


def _upstream_net(path: Path, base: Path | None, cfg: SoVITSV3Config) -> nn.Module:
    """Upstream's SynthesizerTrnV3 loaded as TTS.init_vits_weights loads ``path``."""
    upstream_root()
    process_ckpt = import_upstream("process_ckpt")
    models = import_upstream("module.models")
    _, _, is_lora = process_ckpt.get_sovits_version_from_path_fast(str(path))
    dict_s2 = process_ckpt.load_sovits_new(str(path))
    kwargs = dict(dict_s2["config"]["model"])
    kwargs.update(semantic_frame_rate="25hz", version=cfg.version.value)
    s = cfg.sovits
    net = models.SynthesizerTrnV3(
        s.filter_length // 2 + 1, s.segment_size // s.hop_length, n_speakers=300, **kwargs
    )
    _fit_hardcoded_widths(net, cfg)
    if is_lora:
        from peft import get_peft_model

        net.load_state_dict(process_ckpt.load_sovits_new(str(base))["weight"], strict=False)
        net.cfm = get_peft_model(net.cfm, upstream_lora_config(dict_s2["lora_rank"]))
        result = net.load_state_dict(dict_s2["weight"], strict=False)
        assert not result.unexpected_keys
        net.cfm = net.cfm.merge_and_unload()
    else:
        result = net.load_state_dict(dict_s2["weight"], strict=False)
        assert not result.missing_keys and not result.unexpected_keys
    return net.float().eval()


def _fit_hardcoded_widths(net: nn.Module, cfg: SoVITSV3Config) -> None:
    """Rebuild (with upstream's own classes) the modules whose widths upstream hard-codes."""
    s, d = cfg.sovits, cfg.dit
    if s.ssl_dim == 768 and cfg.feature_dim == 512 and d.dim == 1024:
        return
    models = import_upstream("module.models")
    quantize = import_upstream("module.quantize")
    mrte = import_upstream("module.mrte_model")
    dit = import_upstream("f5_tts.model.backbones.dit")
    net.ssl_proj = nn.Conv1d(s.ssl_dim, s.ssl_dim, 2, stride=2)
    net.quantizer = quantize.ResidualVectorQuantizer(
        dimension=s.ssl_dim, n_q=1, bins=s.codebook_size
    )
    net.enc_p.ssl_proj = nn.Conv1d(s.ssl_dim, s.hidden_channels, 1)
    net.enc_p.mrte = mrte.MRTE(
        content_enc_channels=s.hidden_channels,
        hidden_size=s.mrte_hidden,
        out_channels=s.hidden_channels,
    )
    net.bridge = nn.Sequential(nn.Conv1d(s.inter_channels, cfg.feature_dim, 1), nn.LeakyReLU())
    net.wns1 = models.Encoder(
        cfg.feature_dim,
        cfg.feature_dim,
        cfg.feature_dim,
        cfg.wn_kernel,
        1,
        cfg.wn_layers,
        gin_channels=s.gin_channels,
    )
    net.linear_mel = nn.Conv1d(cfg.feature_dim, d.mel_dim, 1)
    net.cfm = models.CFM(
        d.mel_dim,
        dit.DiT(**upstream_dit_args(cfg)),
    )


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    torch.set_num_threads(2)
    version, lora = request.param
    work = tmp_path_factory.mktemp(f"{version.value}-{'lora' if lora else 'full'}")
    if lora:
        path, base = make_v3_lora_checkpoint(version, work / "lora.pth", work / "base.pth", seed=3)
    else:
        path, base = make_v3_checkpoint(version, work / "full.pth", seed=5), None
    ckpt, ours = load_model(path, base=base)
    assert ckpt.version is version and (ckpt.lora_rank is not None) == lora
    return Pair(ckpt.config, ours, _upstream_net(path, base, ckpt.config))


def _inputs(cfg: SoVITSV3Config, seed: int, n_codes: int = 20, n_phones: int = 14) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = cfg.sovits
    audio = 0.2 * torch.randn(1, int(1.1 * s.sampling_rate), generator=g)
    spec, _ = linear_spectrogram(audio, None, s.filter_length, s.hop_length, s.win_length)
    return {
        "codes": torch.randint(0, s.codebook_size, (1, n_codes), generator=g),
        "phones": torch.randint(0, s.n_symbols, (1, n_phones), generator=g),
        "spec": spec,
    }


def _features(pair: Pair, x: dict, speed: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, theirs) decode_encp features."""
    with torch.no_grad():
        theirs, _ = pair.theirs.decode_encp(x["codes"][None], x["phones"], x["spec"], speed=speed)
    ge = pair.ours.reference_embedding(x["spec"])
    n, m = x["codes"].shape[1], x["phones"].shape[1]
    ours, lengths = pair.ours.decode_features(
        x["codes"], torch.tensor([n]), x["phones"], torch.tensor([m]), ge, speed
    )
    assert ours.shape == theirs.shape
    # upstream's mask ends where our length does
    tail = theirs[..., int(lengths[0]) :]
    assert tail.numel() == 0 or float(tail.abs().max()) == 0
    assert float(theirs[..., int(lengths[0]) - 1].abs().max()) > 0
    return ours, theirs


@pytest.mark.parametrize("speed", [1.0, 1.1])
def test_decode_features(pair: Pair, speed: float) -> None:
    ours, theirs = _features(pair, _inputs(pair.cfg, 1), speed)
    assert snr_db(ours, theirs) >= MIN_SNR_DB


def test_estimator_call(pair: Pair) -> None:
    x = _inputs(pair.cfg, 2)
    ours_fea, _ = _features(pair, x, 1.0)
    g = torch.Generator().manual_seed(4)
    b, t, mel = 1, ours_fea.shape[2], pair.cfg.dit.mel_dim
    noisy = torch.randn(b, mel, t, generator=g)
    cond = torch.zeros(b, mel, t)
    cond[..., :15] = torch.randn(b, mel, 15, generator=g)
    time, dt = torch.tensor([0.375]), torch.tensor([1 / 8])
    with torch.no_grad():
        theirs = pair.theirs.cfm.estimator(noisy, cond, torch.tensor([t]), time, dt, ours_fea)
    ours = pair.ours.cfm.estimator(noisy, cond, ours_fea, time, dt)
    assert snr_db(ours, theirs.transpose(1, 2)) >= MIN_SNR_DB


@pytest.mark.parametrize(
    "sampler",
    [SamplerConfig(steps=4), SamplerConfig(steps=3, temperature=0.8, cfg_rate=0.7)],
    ids=["default", "cfg"],
)
def test_cfm_sampling(pair: Pair, sampler: SamplerConfig) -> None:
    x = _inputs(pair.cfg, 3)
    fea, _ = _features(pair, x, 1.0)
    g = torch.Generator().manual_seed(6)
    prompt = torch.rand(1, pair.cfg.dit.mel_dim, 17, generator=g) * 2 - 1
    torch.manual_seed(11)  # upstream draws its start noise from the global generator
    with torch.no_grad():
        theirs = pair.theirs.cfm.inference(
            fea.transpose(1, 2),
            torch.tensor([fea.shape[2]]),
            prompt,
            sampler.steps,
            temperature=sampler.temperature,
            inference_cfg_rate=sampler.cfg_rate,
        )
    torch.manual_seed(11)
    noise = torch.randn(1, pair.cfg.dit.mel_dim, fea.shape[2])
    ours = pair.ours.cfm.sample(fea, prompt, noise, sampler)
    assert float(theirs[..., :17].abs().max()) == 0
    assert snr_db(ours, theirs) >= MIN_SNR_DB


def upstream_v4_vocoder(path: Path, channels: int) -> nn.Module:
    """Upstream's v4 ``Generator`` (``TTS.init_vocoder``) with ``channels`` initial channels
    (512 upstream; tiny test vocoders have fewer), weight norm removed, loaded from ``path``."""
    models = import_upstream("module.models")
    cfg = V4VocoderConfig(upsample_initial_channel=channels)
    net = models.Generator(
        initial_channel=cfg.mel_dim,
        resblock="1",
        resblock_kernel_sizes=list(cfg.resblock_kernel_sizes),
        resblock_dilation_sizes=[list(d) for d in cfg.resblock_dilation_sizes],
        upsample_rates=list(cfg.upsample_rates),
        upsample_initial_channel=cfg.upsample_initial_channel,
        upsample_kernel_sizes=list(cfg.upsample_kernel_sizes),
        gin_channels=0,
        is_bias=True,
    )
    net.remove_weight_norm()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
    return net.eval()


def test_v4_vocoder(tmp_path: Path) -> None:
    upstream_root()
    path = make_v4_vocoder(tmp_path / "vocoder.pth", seed=2)
    ours = load_v4_vocoder(path)
    cfg = V4VocoderConfig(upsample_initial_channel=ours.conv_pre.out_channels)
    theirs = upstream_v4_vocoder(path, cfg.upsample_initial_channel)
    mel = torch.randn(1, cfg.mel_dim, 23, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = theirs(mel)
        got = ours(mel)
    assert got.shape == (1, 1, 23 * cfg.hop)
    assert snr_db(got, ref) >= MIN_SNR_DB


def _meta_upstream_net(saved: dict, cfg: SoVITSV3Config) -> nn.Module:
    """Upstream's network for a saved file's config, laid out on the meta device."""
    models = import_upstream("module.models")
    s = cfg.sovits
    kwargs = {**dict(saved["config"]["model"]), "semantic_frame_rate": "25hz"}
    with torch.device("meta"):
        net = models.SynthesizerTrnV3(
            s.filter_length // 2 + 1, s.segment_size // s.hop_length, n_speakers=300, **kwargs
        )
        _fit_hardcoded_widths(net, cfg)
    for frozen_module in (net.ssl_proj, net.quantizer, net.enc_p):  # freeze_quantizer, again
        models.set_no_grad(frozen_module)  # after the rebuilt widths
    return net


def test_full_file_matches_upstream_state_dict(tmp_path: Path) -> None:
    upstream_root()
    path = make_v3_checkpoint("v3", tmp_path / "f.pth")
    process_ckpt = import_upstream("process_ckpt")
    saved = process_ckpt.load_sovits_new(str(path))
    net = _meta_upstream_net(saved, v3_config(ModelVersion.V3, "tiny"))
    assert list(saved["weight"]) == list(net.state_dict())
    assert all(v.dtype == torch.float16 for v in saved["weight"].values())
    assert path.read_bytes()[:2] == b"PK"
    # upstream itself can only call a PK v3/v4 file v3 (by size), or by the pretrained md5
    assert process_ckpt.get_sovits_version_from_path_fast(str(path))[1] in ("v1", "v2", "v3")


def test_lora_file_keys_match_upstream_trainer(tmp_path: Path) -> None:
    """Our LoRA files hold exactly what s2_train_v3_lora.py saves (non-frozen entries)."""
    upstream_root()
    from peft import get_peft_model

    path, _ = make_v3_lora_checkpoint("v4", tmp_path / "l.pth", tmp_path / "b.pth", rank=4)
    process_ckpt = import_upstream("process_ckpt")
    saved = process_ckpt.load_sovits_new(str(path))
    net = _meta_upstream_net(saved, v3_config(ModelVersion.V4, "tiny"))
    with torch.device("meta"):
        net.cfm = get_peft_model(net.cfm, upstream_lora_config(4))
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    expected = [k for k in net.state_dict() if k not in frozen]
    assert list(saved["weight"]) == expected
    assert saved["lora_rank"] == 4 and saved["config"]["model"]["version"] == "v4"
    assert all(v.dtype == torch.float16 for v in saved["weight"].values())
    assert process_ckpt.get_sovits_version_from_path_fast(str(path)) == ["v2", "v4", True]
