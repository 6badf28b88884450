"""v5 (v5dev, v5turbo) checkpoints, sampler settings and chunking, without upstream.

Parity with upstream's ``CFMV5`` / ``synthesize_v5_mel`` is in ``test_upstream_v5.py``; these
tests pin the file format, version detection, per-version defaults and the chunk layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gsv_models.cfm import SamplerConfig, sample_v5_chunks, sampler_for
from gsv_models.checkpoint import _plain, load_checkpoint, read_payload
from gsv_models.load import load_model
from gsv_models.testing.cfm_init import make_v3_checkpoint, v3_config
from gsv_models.version import ModelVersion
from gsv_runtime.errors import CheckpointError

V4, V5DEV, V5TURBO = ModelVersion.V4, ModelVersion.V5DEV, ModelVersion.V5TURBO


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[ModelVersion, Path]:
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("v5")
    return {v: make_v3_checkpoint(v, out / f"{v.value}.pth", seed=1) for v in (V4, V5DEV, V5TURBO)}


@pytest.mark.parametrize(("version", "tag"), [(V5DEV, b"07"), (V5TURBO, b"08")])
def test_v5_files_round_trip(files: dict, version: ModelVersion, tag: bytes) -> None:
    assert files[version].read_bytes()[:2] == tag
    ckpt, model = load_model(files[version])
    assert ckpt.version is version and ckpt.config == v3_config(version, "tiny")
    assert not hasattr(model.cfm.estimator, "d_embed")
    assert not any(".d_embed." in k for k in read_payload(files[version])[0]["weight"])


def test_untagged_v5_is_v5dev_and_tags_must_fit(files: dict, tmp_path: Path) -> None:
    payload = read_payload(files[V5TURBO])[0]
    payload["config"] = _plain(payload["config"])
    del payload["config"]["model"]["version"]
    untagged = tmp_path / "pk.pth"
    torch.save(payload, untagged)
    assert load_checkpoint(untagged).version is V5DEV  # upstream: no d_embed means v5dev
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"07" + files[V4].read_bytes()[2:])
    with pytest.raises(CheckpointError, match="header tag 07 says v5dev but the config says v4"):
        load_checkpoint(wrong)
    v4 = read_payload(files[V4])[0]
    v4["config"] = _plain(v4["config"])
    v4["config"]["model"]["version"] = "v5dev"
    wrong.write_bytes(b"07" + _saved(v4)[2:])
    with pytest.raises(CheckpointError, match="v5dev model whose DiT has the step embedding"):
        load_checkpoint(wrong)


def _saved(payload: dict) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def test_sampler_defaults_and_limits() -> None:
    assert sampler_for(V5TURBO) == SamplerConfig(
        steps=4,
        temperature=0.875,
        cfg_rate=0.0,
        cfg_drops_text=False,
        allowed_steps=(4, 8, 16, 32),
        max_cfg_rate=2.0,
    )
    dev = sampler_for(V5DEV)
    assert (dev.steps, dev.cfg_rate) == (32, 1.3)
    assert sampler_for(V5DEV, 8, 0.0).steps == 8 and sampler_for(V4) == SamplerConfig()
    for steps, cfg, message in [
        (5, 0.0, "steps must be 4, 8, 16, 32, but got 5"),
        (4, 3.0, r"cfg_rate must be finite and in \[0, 2\], but got 3"),
        (4, float("nan"), "cfg_rate must be finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            sampler_for(V5DEV, steps, cfg).validate()
    SamplerConfig(steps=5, cfg_rate=3.0).validate()  # v3/v4 have no such limits
    # k / N equals the accumulated sum of 1 / N for every allowed N, bit for bit
    for n in (4, 8, 16, 32):
        t = 0.0
        for k in range(n):
            assert t == k * (1.0 / n)
            t += 1.0 / n


class _Recorder:
    """A CFM stand-in that records each chunk's prompt and returns recognisable frames."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def sample(
        self, mu: torch.Tensor, prompt: torch.Tensor, noise: torch.Tensor, sampler: SamplerConfig
    ) -> torch.Tensor:
        self.calls.append((mu, prompt, noise))
        return noise + 1000.0 * len(self.calls)


@pytest.mark.parametrize(
    ("ref", "target", "sizes"), [(40, 1300, [640, 640, 20]), (520, 1010, [500, 500, 10])]
)
def test_chunk_layout(ref: int, target: int, sizes: list[int]) -> None:
    """Chunk sizes min(1000 − R, 640) with R ≤ 500; later prompts end in the last 32 frames
    generated (mel) and the last 32 target frames (features)."""
    g = torch.Generator().manual_seed(0)
    ref_fea, fea = torch.randn(1, 3, ref + 5, generator=g), torch.randn(1, 3, target, generator=g)
    mel = torch.randn(1, 2, ref, generator=g)
    rec = _Recorder()
    noise = torch.randn(1, 2, target, generator=g)
    out = sample_v5_chunks(
        rec,  # type: ignore[arg-type]
        ref_fea,
        fea,
        mel,
        lambda a, b: noise[..., a:b],
        sampler_for(V5DEV),
    )
    r = min(ref, 500)
    assert [c[0].shape[-1] - r for c in rec.calls] == sizes
    start = 0
    for k, (mu, prompt, start_noise) in enumerate(rec.calls):
        n = sizes[k]
        assert torch.equal(start_noise[..., r:], noise[..., start : start + n])
        assert torch.equal(
            out[..., start : start + n], noise[..., start : start + n] + 1000.0 * (k + 1)
        )
        if k == 0:
            assert torch.equal(prompt, mel[..., -r:]) and torch.equal(
                mu[..., :r], ref_fea[..., :ref][..., -r:]
            )
        else:
            assert torch.equal(prompt[..., : r - 32], mel[..., -r:][..., : r - 32])
            assert torch.equal(prompt[..., r - 32 :], out[..., start - 32 : start])
            assert torch.equal(mu[..., r - 32 : r], fea[..., start - 32 : start])
        start += n
