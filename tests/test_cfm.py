"""v3/v4 SoVITS (CFM + DiT), their checkpoints and the v4 vocoder, without upstream.

Parity with upstream itself is in ``test_upstream_cfm.py``; these tests pin what can be checked
from our side: shapes and lengths, batch and noise behaviour, the sampler switches, the LoRA
merge arithmetic, the loader's refusals and the random files' format.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
import torch

from gsv_models.cfm import CFM, SamplerConfig
from gsv_models.checkpoint import _plain, load_checkpoint, read_payload
from gsv_models.dit import DiT, DiTConfig, RotaryEmbedding, apply_rotary
from gsv_models.load import load_model
from gsv_models.lora import PEFT_PREFIX, merge_lora
from gsv_models.sovits_v3 import SoVITSV3Model
from gsv_models.testing.cfm_init import (
    make_v3_checkpoint,
    make_v3_lora_checkpoint,
    make_v4_vocoder,
    v3_config,
)
from gsv_models.version import LORA_TAGS, PRETRAINED_SOVITS_MD5, ModelVersion
from gsv_models.vocoder_v4 import load_v4_vocoder
from gsv_runtime.errors import CheckpointError

V3, V4 = ModelVersion.V3, ModelVersion.V4
V5DEV, V5TURBO = ModelVersion.V5DEV, ModelVersion.V5TURBO
LORA_RANKS = {V3: 4, V4: 8, V5DEV: 4, V5TURBO: 8}
"""The rank of each version's random LoRA fine-tune in ``files``."""
Q = "cfm.estimator.transformer_blocks.0.attn.to_q"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("cfm")
    v3lora, v3base = make_v3_lora_checkpoint(V3, out / "v3lora.pth", out / "v3base.pth", rank=4)
    v4lora, v4base = make_v3_lora_checkpoint(V4, out / "v4lora.pth", out / "v4base.pth", seed=1)
    v5devlora, v5devbase = make_v3_lora_checkpoint(
        V5DEV, out / "v5devlora.pth", out / "v5devbase.pth", seed=4, rank=4
    )
    v5turbolora, v5turbobase = make_v3_lora_checkpoint(
        V5TURBO, out / "v5turbolora.pth", out / "v5turbobase.pth", seed=5
    )
    return {
        "v3": make_v3_checkpoint(V3, out / "v3.pth", seed=2),
        "v4": make_v3_checkpoint(V4, out / "v4.pth", seed=3),
        "v3lora": v3lora,
        "v3base": v3base,
        "v4lora": v4lora,
        "v4base": v4base,
        "v5devlora": v5devlora,
        "v5devbase": v5devbase,
        "v5turbolora": v5turbolora,
        "v5turbobase": v5turbobase,
    }


@pytest.fixture(scope="module")
def models(files: dict[str, Path]) -> dict[ModelVersion, SoVITSV3Model]:
    return {V3: load_model(files["v3"])[1], V4: load_model(files["v4"])[1]}


def _tokens(n_codes: int, n_phones: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1024, (1, n_codes), generator=g)
    return codes, torch.randint(0, 732, (1, n_phones), generator=g)


def _ge(model: SoVITSV3Model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.reference_embedding(torch.rand(1, 1025, 40, generator=g))


def _features(model: SoVITSV3Model, n_codes: int = 20, speed: float = 1.0):
    codes, phones = _tokens(n_codes, 9, n_codes)
    n = torch.tensor([n_codes])
    return model.decode_features(codes, n, phones, torch.tensor([9]), _ge(model), speed)


@pytest.mark.parametrize(
    ("version", "speed", "frames", "length"),
    [
        (V3, 1.0, 75, 75),  # 20 codes → 40 → ×1.875
        (V4, 1.0, 80, 80),  # ×2
        (V3, 1.1, 69, 69),  # int(40 / 1.1) + 1 = 37 → 69; mask int(77.5 / 1.1) + 1 = 71
        (V4, 1.1, 74, 73),  # 37 → 74; mask int(80 / 1.1) + 1 = 73 cuts the last frame
    ],
)
def test_feature_frames_and_mask(
    models: dict, version: ModelVersion, speed: float, frames: int, length: int
) -> None:
    fea, lengths = _features(models[version], speed=speed)
    assert fea.shape == (1, 48, frames)
    assert lengths.tolist() == [length]
    assert float(fea[..., length:].abs().sum()) == 0
    assert float(fea[..., length - 1].abs().min()) > 0
    assert 0.3 < float(fea[..., :length].std()) < 3  # non-degenerate random model


@pytest.mark.parametrize("version", [V3, V4])
def test_padded_rows_decode_as_alone(models: dict, version: ModelVersion) -> None:
    model = models[version]
    rows = [_tokens(20, 11, 1), _tokens(13, 7, 2)]
    codes = torch.zeros(2, 20, dtype=torch.long)
    phones = torch.zeros(2, 11, dtype=torch.long)
    for i, (c, p) in enumerate(rows):
        codes[i, : c.shape[1]], phones[i, : p.shape[1]] = c[0], p[0]
    ge = torch.cat([_ge(model, 1), _ge(model, 2)])
    code_len, phone_len = torch.tensor([20, 13]), torch.tensor([11, 7])
    batch, lengths = model.decode_features(codes, code_len, phones, phone_len, ge)
    for i, (c, p) in enumerate(rows):
        alone, n = model.decode_features(
            c, code_len[i : i + 1], p, phone_len[i : i + 1], ge[i : i + 1]
        )
        assert int(lengths[i]) == int(n[0])
        torch.testing.assert_close(batch[i : i + 1, :, : int(n[0])], alone, rtol=1e-5, atol=1e-5)
        assert float(batch[i, :, int(n[0]) :].abs().sum()) == 0


def _sample(model: SoVITSV3Model, sampler: SamplerConfig, noise_seed: int = 0) -> torch.Tensor:
    fea, _ = _features(model, 12)
    g = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn(1, 100, fea.shape[2], generator=g)
    prompt = torch.rand(1, 100, 10, generator=torch.Generator().manual_seed(9)) * 2 - 1
    return model.cfm.sample(fea, prompt, noise, sampler)


def test_sampling_is_deterministic_and_keeps_prompt_frames_zero(models: dict) -> None:
    model = models[V4]
    a = _sample(model, SamplerConfig(steps=3))
    assert torch.equal(a, _sample(model, SamplerConfig(steps=3)))
    assert float(a[..., :10].abs().sum()) == 0
    assert 0.1 < float(a[..., 10:].std()) < 10
    assert not torch.allclose(a, _sample(model, SamplerConfig(steps=3), noise_seed=1))
    assert not torch.allclose(a, _sample(model, SamplerConfig(steps=4)))


def test_sampler_switches(models: dict) -> None:
    model = models[V3]
    plain = _sample(model, SamplerConfig(steps=2))
    # drop_text only matters for the guidance pass
    assert torch.equal(plain, _sample(model, SamplerConfig(steps=2, cfg_drops_text=False)))
    guided = _sample(model, SamplerConfig(steps=2, cfg_rate=0.7))
    keep_text = _sample(model, SamplerConfig(steps=2, cfg_rate=0.7, cfg_drops_text=False))
    assert not torch.allclose(plain, guided)
    assert not torch.allclose(guided, keep_text)
    # the start noise enters as noise · temperature
    fea, _ = _features(model, 12)
    noise = torch.randn(1, 100, fea.shape[2], generator=torch.Generator().manual_seed(0))
    prompt = torch.zeros(1, 100, 4)
    hot = model.cfm.sample(fea, prompt, noise * 0.5, SamplerConfig(steps=2))
    cold = model.cfm.sample(fea, prompt, noise, SamplerConfig(steps=2, temperature=0.5))
    assert torch.equal(hot, cold)


@pytest.mark.parametrize(
    ("sampler", "message"),
    [
        (SamplerConfig(steps=0), "steps must be >= 1"),
        (SamplerConfig(temperature=0.0), "temperature must be finite and > 0"),
        (SamplerConfig(cfg_rate=float("nan")), "cfg_rate must be finite"),
        (SamplerConfig(cfg_rate=-1.0), "cfg_rate must be finite and >= 0"),
    ],
)
def test_sampler_validation(models: dict, sampler: SamplerConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _sample(models[V3], sampler)


def test_sample_rejects_mismatched_noise(models: dict) -> None:
    fea, _ = _features(models[V3], 12)
    with pytest.raises(ValueError, match="noise must be"):
        models[V3].cfm.sample(fea, torch.zeros(1, 100, 3), torch.zeros(1, 100, 5))


def test_dit_without_step_embedding() -> None:
    """The v5 switch: no ``d_embed`` weights, and the step size changes nothing."""
    cfg = DiTConfig(dim=32, depth=1, heads=2, dim_head=16, text_dim=16, conv_layers=1)
    dit = DiT(DiTConfig(**{**cfg.__dict__, "step_embedding": False})).eval()
    assert not any(k.startswith("d_embed.") for k in dit.state_dict())
    assert any(k.startswith("d_embed.") for k in DiT(cfg).state_dict())
    x, mu, t = torch.randn(1, 100, 7), torch.randn(1, 16, 7), torch.tensor([0.5])
    with torch.no_grad():
        a = dit(x, torch.zeros_like(x), mu, t, torch.tensor([0.25]))
        b = dit(x, torch.zeros_like(x), mu, t, torch.tensor([0.125]))
    assert torch.equal(a, b)
    assert isinstance(CFM(cfg).estimator, DiT)


def test_rotary_rotates_interleaved_pairs_of_head_zero_only() -> None:
    rope = RotaryEmbedding(4)(3)  # dim_head 4: channels 0..3 of the 8 rotate
    x = torch.arange(1.0, 9.0).expand(1, 3, 8)
    y = apply_rotary(x, rope)
    assert torch.equal(y[:, 0], x[:, 0])  # position 0: identity
    assert torch.equal(y[..., 4:], x[..., 4:])  # the other heads are left alone
    f = torch.tensor([1.0, 0.01])  # 1 / 10000^(2i/4)
    for p in (1, 2):
        for i in range(2):
            c, s = torch.cos(p * f[i]), torch.sin(p * f[i])
            x0, x1 = x[0, p, 2 * i], x[0, p, 2 * i + 1]
            torch.testing.assert_close(y[0, p, 2 * i], x0 * c - x1 * s)
            torch.testing.assert_close(y[0, p, 2 * i + 1], x1 * c + x0 * s)


def test_lora_merge_arithmetic() -> None:
    g = torch.Generator().manual_seed(0)
    w, bias = torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    a, b = torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    base = {f"{Q}.weight": w, f"{Q}.bias": bias, "bridge.0.weight": torch.zeros(3)}
    peft = PEFT_PREFIX + Q[len("cfm.") :]
    lora = {
        "bridge.0.weight": torch.ones(3),
        f"{peft}.lora_A.default.weight": a,
        f"{peft}.lora_B.default.weight": b,
    }
    merged = merge_lora(base, lora, rank=2)
    assert set(merged) == set(base)
    torch.testing.assert_close(merged[f"{Q}.weight"], w + b @ a)
    assert torch.equal(merged[f"{Q}.bias"], bias)
    assert torch.equal(merged["bridge.0.weight"], torch.ones(3))
    # a file that also carries the wrapped layer's own (frozen) weight overrides the base's
    frozen = {**lora, f"{peft}.base_layer.bias": torch.zeros(6)}
    assert torch.equal(merge_lora(base, frozen, rank=2)[f"{Q}.bias"], torch.zeros(6))
    with pytest.raises(ValueError, match="expected A \\[3, 5\\], B \\[6, 3\\] for rank 3"):
        merge_lora(base, lora, rank=3)
    with pytest.raises(ValueError, match="incomplete"):
        merge_lora(base, {f"{peft}.lora_A.default.weight": a}, rank=2)
    with pytest.raises(ValueError, match="lack LoRA factors"):
        merge_lora(base, {"bridge.0.weight": torch.ones(3)}, rank=2)
    with pytest.raises(ValueError, match="not in the base"):
        merge_lora(base, {**lora, "wns1.pre.weight": torch.ones(1)}, rank=2)
    with pytest.raises(ValueError, match="does not target"):
        merge_lora(base, {**lora, PEFT_PREFIX + "estimator.proj_out.lora_A.default.weight": a}, 2)


@pytest.mark.parametrize("version", list(LORA_RANKS), ids=lambda v: v.value)
def test_lora_checkpoint_merges_into_its_base(files: dict, version: ModelVersion):
    """v3/v4 LoRA files (tags 03/04) and v5's (07/08, the tags of full v5 files too) merge."""
    name, base_file = f"{version.value}lora", files[f"{version.value}base"]
    tags = {files[name].read_bytes()[:2], base_file.read_bytes()[:2]}
    assert tags == ({LORA_TAGS[version]} if version.is_v5 else {LORA_TAGS[version], b"PK"})
    ckpt = load_checkpoint(files[name], base=base_file)
    assert ckpt.version is version and ckpt.base == base_file and ckpt.base_sha256
    assert ckpt.lora_rank == LORA_RANKS[version]
    assert ckpt.config.dit.step_embedding is not version.is_v5
    lora = read_payload(files[name])[0]["weight"]
    base = read_payload(base_file)[0]["weight"]
    peft = PEFT_PREFIX + Q[len("cfm.") :]
    a, b = (lora[f"{peft}.lora_{x}.default.weight"].float() for x in "AB")
    torch.testing.assert_close(ckpt.state_dict[f"{Q}.weight"], base[f"{Q}.weight"].float() + b @ a)
    # untargeted DiT weights come from the base, the fine-tuned modules from the LoRA file
    key = "cfm.estimator.proj_out.weight"
    assert torch.equal(ckpt.state_dict[key], base[key].float())
    key = "ref_enc.fc.fc.weight"
    assert torch.equal(ckpt.state_dict[key], lora[key].float())
    assert not torch.equal(lora[key], base[key])
    _, model = load_model(files[name], base=base_file)
    assert float(_features(model)[0].std()) > 0.1


def test_lora_loader_refusals(files: dict, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"pass the model it extends .*s2Gv3\.pth"):
        load_checkpoint(files["v3lora"])
    with pytest.raises(CheckpointError, match="base is a v3 model but the LoRA fine-tune is v4"):
        load_checkpoint(files["v4lora"], base=files["v3base"])
    with pytest.raises(
        CheckpointError, match=r"pass the model it extends .*gsv-v5-pretrained/s2Gv5turbo\.pth"
    ):
        load_checkpoint(files["v5turbolora"])
    with pytest.raises(CheckpointError, match=r"base is a v5dev model but the LoRA .* is v5turbo"):
        load_checkpoint(files["v5turbolora"], base=files["v5devbase"])
    with pytest.raises(CheckpointError, match="base is a v4 model but the LoRA fine-tune is v5dev"):
        load_checkpoint(files["v5devlora"], base=files["v4base"])
    with pytest.raises(CheckpointError, match="is itself a LoRA fine-tune"):
        load_checkpoint(files["v3lora"], base=files["v3lora"])
    with pytest.raises(CheckpointError, match="base= is for LoRA files"):
        load_checkpoint(files["v3"], base=files["v3base"])
    # a LoRA file whose version tag was lost
    plain = tmp_path / "plain.pth"
    plain.write_bytes(b"PK" + files["v3lora"].read_bytes()[2:])
    with pytest.raises(CheckpointError, match="does not match its LoRA weights"):
        load_checkpoint(plain, base=files["v3base"])
    # v5 LoRA weights under v2Pro's tag, and full v3 weights under a LoRA-only tag
    retagged = tmp_path / "retagged.pth"
    retagged.write_bytes(b"05" + files["v5devlora"].read_bytes()[2:])
    with pytest.raises(CheckpointError, match="does not match its LoRA weights"):
        load_checkpoint(retagged, base=files["v5devbase"])
    retagged.write_bytes(b"03" + files["v3"].read_bytes()[2:])
    with pytest.raises(CheckpointError, match="does not match its full weights"):
        load_checkpoint(retagged)
    # a LoRA made for another network (rank differs from the factors)
    payload = read_payload(files["v3lora"])[0]
    payload["lora_rank"] = 5
    odd = _rewrite(payload, tmp_path / "odd.pth", b"03")
    with pytest.raises(CheckpointError, match=r"does not fit its base v3base\.pth .*rank 5"):
        load_checkpoint(odd, base=files["v3base"])
    del payload["lora_rank"]
    with pytest.raises(CheckpointError, match="no valid lora_rank"):
        load_checkpoint(_rewrite(payload, tmp_path / "norank.pth", b"03"), base=files["v3base"])


def _rewrite(payload: dict, path: Path, tag: bytes) -> Path:
    """Save ``payload`` (config as a plain dict) with a 2-byte tag in place of PK."""
    buf = io.BytesIO()
    torch.save({**payload, "config": _plain(payload["config"])}, buf)
    path.write_bytes(tag + buf.getvalue()[2:])
    return path


@pytest.mark.parametrize("version", [V3, V4])
def test_random_full_checkpoint_round_trip(files: dict, version: ModelVersion) -> None:
    path = files[version.value]
    data = path.read_bytes()
    assert data[:2] == b"PK"  # s2_train_v3.py writes full models with plain torch.save
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert any(n.endswith("data.pkl") and b"utils\nHParams" in z.read(n) for n in z.namelist())
    payload, _ = read_payload(path)
    weights = payload["weight"]
    assert all(v.dtype == torch.float16 for v in weights.values())
    assert "linear_mel.weight" in weights and "wns1.enc.cond_layer.weight_g" in weights
    assert "cfm.estimator.rotary_embed.inv_freq" in weights
    ckpt, model = load_model(path)
    assert ckpt.version is version and ckpt.lora_rank is None
    assert ckpt.config == v3_config(version, "tiny")  # every width read back off the shapes
    assert not any(k.startswith("linear_mel.") for k in model.state_dict())
    assert ckpt.raw_config["model"]["version"] == version.value


def test_version_detection_of_untagged_files(
    files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = read_payload(files["v4"])[0]
    payload["config"] = _plain(payload["config"])
    untagged = tmp_path / "noversion.pth"
    del payload["config"]["model"]["version"]
    torch.save(payload, untagged)
    assert load_checkpoint(untagged).version is V3  # upstream's fallback for a big PK file
    digest = hashlib.md5(untagged.read_bytes()[:8192]).hexdigest()
    monkeypatch.setitem(PRETRAINED_SOVITS_MD5, digest, V4)
    assert load_checkpoint(untagged).version is V4  # upstream's pretrained s2Gv4.pth
    lora = read_payload(files["v4lora"])[0]
    lora["config"] = _plain(lora["config"])
    lora["config"]["model"]["version"] = "v3"
    clash = _rewrite(lora, tmp_path / "clash.pth", b"04")
    with pytest.raises(CheckpointError, match="header tag 04 says v4 but the config says v3"):
        load_checkpoint(clash, base=files["v4base"])


def test_v3_full_tag_02(files: dict, tmp_path: Path) -> None:
    """Upstream's table knows 02 for full v3 files (its trainers never write it)."""
    tagged = tmp_path / "tagged.pth"
    tagged.write_bytes(b"02" + files["v3"].read_bytes()[2:])
    assert load_checkpoint(tagged).version is V3
    tagged.write_bytes(b"02" + files["v4"].read_bytes()[2:])
    with pytest.raises(CheckpointError, match="header tag 02 says v3 but the config says v4"):
        load_checkpoint(tagged)


def test_incomplete_cfm_checkpoint_is_refused(files: dict, tmp_path: Path) -> None:
    payload = read_payload(files["v3"])[0]
    del payload["weight"]["cfm.estimator.transformer_blocks.1.attn.to_k.bias"]
    path = _rewrite(payload, tmp_path / "cut.pth", b"PK")
    with pytest.raises(CheckpointError, match=r"1 missing, e\.g\. .*to_k\.bias"):
        load_model(path)


@pytest.mark.parametrize("half", [False, True])
def test_v4_vocoder(tmp_path: Path, half: bool) -> None:
    path = make_v4_vocoder(tmp_path / "vocoder.pth", half=half)
    model = load_v4_vocoder(path)
    mel = torch.randn(2, 100, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wav = model(mel)
    assert wav.shape == (2, 1, 7 * 480)
    assert 0.05 < float(wav.std()) < 0.6 and float(wav.abs().max()) < 1
    state = torch.load(path)
    del state["conv_post.bias"]  # the SoVITS decoder's layout, not the vocoder's
    torch.save(state, tmp_path / "nobias.pth")
    with pytest.raises(CheckpointError, match=r"1 missing, e\.g\. \['conv_post\.bias'\]"):
        load_v4_vocoder(tmp_path / "nobias.pth")
    torch.save({"weight": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a v4 vocoder"):
        load_v4_vocoder(tmp_path / "other.pth")


def test_inspect_describes_a_cfm_checkpoint(files: dict) -> None:
    from gsv_models.inspect import describe

    lines = list(describe(files["v4"]))
    assert "SoVITS v4 (header PK" in lines[0]
    assert "CFM DiT 2 × 64, 4 heads" in lines[1]
    assert "mel frames (4 CFM steps)" in lines[2]


def test_inspect_merges_a_lora_fine_tune_into_its_base(files: dict) -> None:
    """``gsv inspect`` shows a LoRA fine-tune merged into ``--sovits-base``; without it, one
    error line that names the option."""
    from click.testing import CliRunner

    from gsv_runtime.cli import main

    lora, base = str(files["v5devlora"]), str(files["v5devbase"])
    shown = CliRunner().invoke(main, ["inspect", lora, "--sovits-base", base, "--no-forward"])
    assert shown.exit_code == 0, shown.output
    assert "v5dev" in shown.output and "LoRA rank 4 merged" in shown.output
    refused = CliRunner().invoke(main, ["inspect", lora, "--no-forward"])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert "--sovits-base" in refused.output and "s2Gv5dev.pth" in refused.output
    two = CliRunner().invoke(main, ["inspect", lora, base, "--sovits-base", base])
    assert two.exit_code == 1 and "goes with one checkpoint" in two.output
