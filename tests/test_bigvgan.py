"""BigVGAN-v2 vocoder (v3): shapes, config, weight norm, loading, random init; upstream parity."""

from __future__ import annotations

import json
import math
import zipfile
from functools import cache
from pathlib import Path

import pytest
import torch

from gsv_models.bigvgan import (
    CONFIG_FILE,
    FULL_CONFIG,
    WEIGHTS_FILE,
    AntiAliasedSnakeBeta,
    BigVGAN,
    BigVGANConfig,
    DownSample2,
    UpSample2,
    bigvgan_weight_norm_prefixes,
    kaiser_sinc_filter,
    load_bigvgan,
    to_upstream_state,
)
from gsv_models.testing.bigvgan_init import (
    make_bigvgan_dir,
    probe_mel,
    random_bigvgan,
    save_bigvgan_dir,
    tiny_bigvgan_config,
)
from gsv_runtime.errors import CheckpointError
from tests.upstream_oracle import import_upstream, upstream_bigvgan, upstream_root

HOP = 256
MIN_SNR_DB = 60.0


@cache
def _model(seed: int = 0) -> BigVGAN:
    return random_bigvgan(tiny_bigvgan_config(), seed)


def _mel(frames: int, seed: int, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([probe_mel(FULL_CONFIG.num_mels, frames, g) for _ in range(batch)])


def _snr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    noise = (test - reference).double().pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(reference.double().pow(2).sum() / noise))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny seed-0 model in upstream's weight-norm on-disk form."""
    return save_bigvgan_dir(_model(), tmp_path_factory.mktemp("bigvgan") / "wn")


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 7, 33])
def test_output_is_hop_samples_per_frame(frames: int) -> None:
    with torch.no_grad():
        wav = _model()(_mel(frames, seed=frames, batch=2))
    assert wav.shape == (2, 1, frames * HOP)
    assert wav.abs().max() <= 1.0


def test_full_size_layout_on_meta_device() -> None:
    """The published vocoder: 112.4 M parameters, 256× up-sampling, 24 channels at the end."""
    with torch.device("meta"):
        model = BigVGAN(FULL_CONFIG)
        wav = model(torch.empty(1, 100, 100))
    assert FULL_CONFIG.hop == HOP and wav.shape == (1, 1, 100 * HOP)
    assert sum(p.numel() for p in model.parameters()) == 112_414_512
    assert model.conv_post.weight.shape == (1, 24, 7) and model.conv_post.bias is None
    assert model.ups[0][0].weight.shape == (1536, 768, 8)
    prefixes = bigvgan_weight_norm_prefixes(FULL_CONFIG)
    assert len(prefixes) == 1 + 6 + 6 * 3 * 6 + 1  # conv_pre, ups, AMPBlock convs, conv_post
    assert "ups.5.0" in prefixes and "resblocks.17.convs2.2" in prefixes


# --- anti-aliased activation -------------------------------------------------------------------


def test_kaiser_sinc_filter_is_a_unit_gain_low_pass() -> None:
    taps = kaiser_sinc_filter(0.25, 0.3, 12)[0, 0]
    assert taps.shape == (12,) and torch.equal(taps, taps.flip(0))
    assert float(taps.sum()) == pytest.approx(1.0, abs=1e-6)
    # the two polyphase halves each sum to 1/2, so ×2 up-sampling keeps a constant constant
    assert float(taps[::2].sum()) == pytest.approx(0.5, abs=1e-6)
    response = torch.fft.rfft(taps, 512).abs()  # 0 … Nyquist
    assert float(response[-1]) < 1e-3 and float(response[64]) > 0.95  # stop band, pass band


def test_resamplers_keep_lengths_and_low_frequencies() -> None:
    up, down = UpSample2(3), DownSample2(3)
    x = torch.full((1, 3, 20), 0.7)
    assert up(x).shape == (1, 3, 40) and down(x).shape == (1, 3, 10)
    assert torch.allclose(up(x), x.repeat(1, 1, 2), atol=1e-6)
    assert torch.allclose(down(x), x[..., :10], atol=1e-6)
    sine = torch.sin(2 * math.pi * 0.03 * torch.arange(200.0)).expand(1, 3, 200)
    assert (down(up(sine)) - sine)[..., 20:-20].abs().max() < 1e-3


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 31, 100])
def test_polyphase_export_form_equals_the_anti_aliased_activation(frames: int) -> None:
    """Even and odd phases at the input rate, edges included, are upstream's ×2 up-sampling,
    SnakeBeta and stride-2 low-pass to f32 rounding, for any length."""
    act = AntiAliasedSnakeBeta(4, logscale=True)
    gen = torch.Generator().manual_seed(frames)
    with torch.no_grad():
        act.act.alpha.copy_(0.5 * torch.randn(4, generator=gen))
        act.act.beta.copy_(0.5 * torch.randn(4, generator=gen))
        x = 2 * torch.randn(2, 4, frames, generator=gen)
        ref = act.downsample(act.act(act.upsample(x)))
        got = act.forward_polyphase(x)
    assert got.shape == ref.shape == (2, 4, frames)
    assert (got - ref).abs().max() < 2e-6


def test_exported_vocoder_uses_the_polyphase_form_at_any_length(tmp_path: Path) -> None:
    """ONNX holds two 6-tap depthwise low-pass convolutions per anti-aliased activation, 7-tap
    depthwise up-sampling ones (activations reading the same input share them) and no grouped
    transposed ones, traced at one length and run at others, within fp32 rounding (≥ 100 dB)
    of the eager model."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = random_bigvgan(tiny_bigvgan_config(), 0)
    path = tmp_path / "bigvgan.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (probe_mel(100, 16, torch.Generator().manual_seed(0)),),
            str(path),
            input_names=["mel"],
            dynamic_axes={"mel": {0: "batch", 2: "frames"}},
            opset_version=17,
            dynamo=False,
        )
    graph = onnx.load(str(path)).graph
    grouped = [
        (n.op_type, tuple(next(a.ints for a in n.attribute if a.name == "kernel_shape")))
        for n in graph.node
        if n.op_type in ("Conv", "ConvTranspose")
        and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    activations = sum(isinstance(m, AntiAliasedSnakeBeta) for m in model.modules())
    assert grouped.count(("Conv", (6,))) == 2 * activations
    assert set(grouped) == {("Conv", (6,)), ("Conv", (7,))}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames in (7, 45):
        mel = probe_mel(100, frames, torch.Generator().manual_seed(frames))
        with torch.no_grad():
            ref = model(mel).numpy()
        (out,) = session.run(None, {"mel": mel.numpy()})
        assert out.shape == ref.shape == (1, 1, frames * HOP)
        assert 10 * math.log10((ref**2).sum() / ((out - ref) ** 2).sum()) >= 100.0


# --- config --------------------------------------------------------------------------------------


def _published_config() -> dict:
    """nvidia/bigvgan_v2_24khz_100band_256x config.json: generator keys plus training ones."""
    raw = FULL_CONFIG.to_dict()
    raw.update(
        num_gpus=0,
        batch_size=32,
        learning_rate=0.0001,
        use_cqtd_instead_of_mrd=True,
        n_fft=1024,
        win_size=1024,
        fmin=0,
        fmax=None,
        segment_size=65536,
    )
    return raw


def test_config_reads_the_published_file_and_round_trips() -> None:
    assert BigVGANConfig.from_dict(_published_config()) == FULL_CONFIG
    tiny = tiny_bigvgan_config()
    assert BigVGANConfig.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny


def test_config_final_flags_default_as_upstream() -> None:
    """Upstream reads both with ``h.get(..., True)`` (older BigVGAN configs lack them)."""
    raw = _published_config()
    del raw["use_tanh_at_final"], raw["use_bias_at_final"]
    cfg = BigVGANConfig.from_dict(raw)
    assert cfg.use_tanh_at_final and cfg.use_bias_at_final


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resblock": "2"}, "resblock '2'"),
        ({"activation": "snake"}, "activation 'snake'"),
        ({"upsample_rates": [4, 4, 2, 2, 2]}, "equal length"),
        ({"upsample_rates": [4, 4, 2, 2, 2, "2"]}, "upsample_rates"),
        ({"upsample_kernel_sizes": [8, 8, 4, 4, 4, 5]}, "even"),
        ({"resblock_kernel_sizes": [3, 7, 10]}, "odd"),
        ({"resblock_dilation_sizes": [[1, 3, 5], [1, 0, 5], [1, 3, 5]]}, "positive"),
        ({"upsample_initial_channel": 32}, "halved"),
        ({"num_mels": True}, "num_mels"),
        ({"snake_logscale": "yes"}, "snake_logscale"),
        ({"hop_size": 300}, "hop_size 300"),
    ],
)
def test_config_refuses_what_it_cannot_build(change: dict, message: str) -> None:
    raw = {**_published_config(), **change}
    with pytest.raises(CheckpointError, match=message):
        BigVGANConfig.from_dict(raw)


@pytest.mark.parametrize("key", ["num_mels", "upsample_rates", "snake_logscale", "sampling_rate"])
def test_config_names_a_missing_field(key: str) -> None:
    raw = _published_config()
    del raw[key]
    with pytest.raises(CheckpointError, match=key):
        BigVGANConfig.from_dict(raw)


# --- weight norm and loading -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")  # legacy weight_norm, as upstream uses it
def test_fused_model_equals_torch_weight_norm() -> None:
    """Our folded weights compute what torch's weight-norm hooks compute from g and v."""
    model = _model()
    hooked = BigVGAN(model.cfg).eval()
    hooked.load_state_dict(model.state_dict())
    modules = dict(hooked.named_modules())
    for name in hooked.weight_norm_prefixes():
        torch.nn.utils.weight_norm(modules[name])
    hooked.load_state_dict(to_upstream_state(model))
    mel = _mel(12, seed=3)
    with torch.no_grad():
        assert _snr_db(hooked(mel), model(mel)) > 100


def test_upstream_state_has_weight_norm_pairs_in_torch_order() -> None:
    state = to_upstream_state(_model())
    keys = list(state)
    assert "conv_pre.weight" not in state and "conv_post.bias" not in state
    assert keys[:4] == ["conv_pre.bias", "conv_pre.weight_g", "conv_pre.weight_v", "ups.0.0.bias"]
    assert state["ups.0.0.weight_g"].shape == (128, 1, 1)  # transposed conv: dim 0 = inputs
    assert "resblocks.0.activations.5.downsample.lowpass.filter" in state
    assert "activation_post.act.beta" in state


@pytest.mark.parametrize("weight_norm", [True, False])
def test_load_both_on_disk_forms(tmp_path: Path, weight_norm: bool) -> None:
    model = _model()
    save_bigvgan_dir(model, tmp_path, weight_norm=weight_norm)
    loaded = load_bigvgan(tmp_path)
    assert loaded.cfg == model.cfg and not loaded.training
    mel = _mel(9, seed=4)
    with torch.no_grad():
        assert _snr_db(model(mel), loaded(mel)) > 100


def test_random_init_is_deterministic_and_not_degenerate() -> None:
    a, b, c = _model(0), random_bigvgan(tiny_bigvgan_config(), 0), _model(1)
    state_a, state_b = a.state_dict(), b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["conv_pre.weight"], c.state_dict()["conv_pre.weight"])
    mel, other = _mel(40, seed=5), _mel(40, seed=6)
    with torch.no_grad():
        wav, wav_other, wav_c = a(mel), a(other), c(mel)
        assert torch.equal(wav, a(mel))
    rms = float(wav.pow(2).mean().sqrt())
    assert 0.05 < rms < 0.5 and float(wav.mean().abs()) < 0.1 * rms
    assert float((wav.abs() >= 1).float().mean()) < 1e-3  # far from the clamp
    for different in (wav_other, wav_c):  # depends on the mel and on the seed
        corr = torch.corrcoef(torch.stack([wav.flatten(), different.flatten()]))[0, 1]
        assert abs(float(corr)) < 0.5


def _write_and_expect(directory: Path, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_bigvgan(directory)


def test_loader_refuses_bad_folders(tmp_path: Path, tiny_dir: Path) -> None:
    _write_and_expect(tmp_path / "nowhere", "no such file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CONFIG_FILE).write_text("{not json", encoding="utf-8")
    _write_and_expect(bad, "not a JSON config")
    (bad / CONFIG_FILE).write_text("[1, 2]", encoding="utf-8")
    _write_and_expect(bad, "JSON object")
    (bad / CONFIG_FILE).write_bytes(b" " * (2 << 20))
    _write_and_expect(bad, "not a config")
    (bad / CONFIG_FILE).write_text((tiny_dir / CONFIG_FILE).read_text(), encoding="utf-8")
    _write_and_expect(bad, "no such file")  # the weights


def _weights_dir(tmp_path: Path, tiny_dir: Path, data: bytes) -> Path:
    out = tmp_path / "w"
    out.mkdir(exist_ok=True)
    (out / CONFIG_FILE).write_text((tiny_dir / CONFIG_FILE).read_text(), encoding="utf-8")
    (out / WEIGHTS_FILE).write_bytes(data)
    return out


def test_loader_refuses_truncated_and_foreign_files(tmp_path: Path, tiny_dir: Path) -> None:
    data = (tiny_dir / WEIGHTS_FILE).read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        _write_and_expect(_weights_dir(tmp_path, tiny_dir, data[:cut]), "truncated or corrupt")
    _write_and_expect(_weights_dir(tmp_path, tiny_dir, b""), "empty")
    _write_and_expect(_weights_dir(tmp_path, tiny_dir, b"\x80\x02junk"), "starts with")
    _write_and_expect(_weights_dir(tmp_path, tiny_dir, b"05" + data[2:]), "not a torch zip")


def _saved(tmp_path: Path, tiny_dir: Path, payload: object) -> Path:
    out = _weights_dir(tmp_path, tiny_dir, b"")
    torch.save(payload, out / WEIGHTS_FILE)
    return out


class _Payload:
    """A class the weights-only unpickler must refuse."""


def test_loader_refuses_wrong_contents(tmp_path: Path, tiny_dir: Path) -> None:
    state = to_upstream_state(_model())
    _write_and_expect(_saved(tmp_path, tiny_dir, {"weight": state}), "generator")
    _write_and_expect(_saved(tmp_path, tiny_dir, {"generator": [1, 2]}), "generator")
    _write_and_expect(_saved(tmp_path, tiny_dir, {"generator": _Payload()}), "refused to load")
    missing = {k: v for k, v in state.items() if k != "conv_post.weight_v"}
    _write_and_expect(_saved(tmp_path, tiny_dir, {"generator": missing}), "weight-norm pairs")
    extra = {**state, "conv_post.bias": torch.zeros(1)}
    _write_and_expect(_saved(tmp_path, tiny_dir, {"generator": extra}), "1 unexpected")
    no_filter = {
        k: v for k, v in state.items() if not k.endswith("activation_post.upsample.filter")
    }
    _write_and_expect(_saved(tmp_path, tiny_dir, {"generator": no_filter}), "1 missing")
    shaped = {**state, "conv_pre.bias": torch.zeros(3)}
    _write_and_expect(_saved(tmp_path, tiny_dir, {"generator": shaped}), "wrong shape")
    text = {**state, "conv_pre.bias": "x"}
    _write_and_expect(_saved(tmp_path, tiny_dir, {"generator": text}), "not a tensor")


def test_loader_refuses_a_config_bigger_than_its_weights(tmp_path: Path, tiny_dir: Path) -> None:
    """A config may declare a huge network: it is compared on the meta device, not allocated."""
    out = _weights_dir(tmp_path, tiny_dir, (tiny_dir / WEIGHTS_FILE).read_bytes())
    raw = {**tiny_bigvgan_config().to_dict(), "upsample_initial_channel": 1 << 20}
    (out / CONFIG_FILE).write_text(json.dumps(raw), encoding="utf-8")
    _write_and_expect(out, "wrong shape")


def test_loader_refuses_a_zip_bomb(tmp_path: Path, tiny_dir: Path) -> None:
    out = _weights_dir(tmp_path, tiny_dir, b"")
    with zipfile.ZipFile(out / WEIGHTS_FILE, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 << 20))
    _write_and_expect(out, "zip bomb")


# --- upstream parity -----------------------------------------------------------------------------


@pytest.mark.upstream
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_upstream_keys_and_filters_match(tiny_dir: Path) -> None:
    net = upstream_bigvgan(tiny_dir, remove_weight_norm=False)
    written = torch.load(tiny_dir / WEIGHTS_FILE, weights_only=True)["generator"]
    theirs = net.state_dict()
    assert list(written) == list(theirs)
    assert all(written[k].shape == theirs[k].shape for k in theirs)
    upstream_filter = import_upstream("BigVGAN.alias_free_activation.torch.filter")
    for cutoff, half_width, taps in [(0.25, 0.3, 12), (0.1, 0.15, 12), (0.25, 0.3, 7)]:
        expected = upstream_filter.kaiser_sinc_filter1d(cutoff, half_width, taps)
        assert torch.allclose(kaiser_sinc_filter(cutoff, half_width, taps), expected, atol=1e-7)


@pytest.mark.upstream
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    ("weight_norm", "remove"), [(True, True), (True, False), (False, True)], ids=str
)
def test_upstream_parity(
    tmp_path: Path, tiny_dir: Path, weight_norm: bool, remove: bool, capsys
) -> None:
    """Same files, same mel → same audio (fp32), whichever form upstream loads and runs."""
    upstream_root()  # skip before making files
    model_dir = tiny_dir if weight_norm else make_bigvgan_dir(tmp_path, "tiny", 0, False)
    ours = load_bigvgan(model_dir)
    theirs = upstream_bigvgan(model_dir, remove_weight_norm=remove)
    mel = _mel(48, seed=7, batch=2)
    with torch.no_grad():
        expected, got = theirs(mel), ours(mel)
    snr = _snr_db(expected, got)
    with capsys.disabled():
        print(f"\nBigVGAN parity (weight_norm file={weight_norm}, hooks={not remove}): {snr} dB")
    assert got.shape == expected.shape == (2, 1, 48 * HOP)
    assert snr >= MIN_SNR_DB
