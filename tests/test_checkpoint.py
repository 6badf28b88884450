"""Checkpoint I/O: upstream formats, version detection, safety and clear errors."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from gsv_models.checkpoint import load_checkpoint, read_payload
from gsv_models.testing import make_checkpoint
from gsv_models.version import ModelVersion
from gsv_runtime.errors import CheckpointError
from tests.conftest import VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_tiny_round_trip_detects_version(tiny_voice, version: str) -> None:
    paths = tiny_voice(version)
    sovits = load_checkpoint(paths["sovits"], kind="sovits")
    assert sovits.version is ModelVersion.parse(version)
    gpt = load_checkpoint(paths["gpt"], kind="gpt")
    assert gpt.version.symbols_version == ModelVersion.parse(version).symbols_version
    assert all(
        v.dtype == torch.float32 for v in sovits.state_dict.values() if v.is_floating_point()
    )


@pytest.mark.parametrize(
    ("version", "tag"), [("v1", b"PK"), ("v2", b"PK"), ("v2Pro", b"05"), ("v2ProPlus", b"06")]
)
def test_sovits_header_tag(tiny_voice, version: str, tag: bytes) -> None:
    assert tiny_voice(version)["sovits"].read_bytes()[:2] == tag


def test_config_pickled_as_upstream_hparams(tiny_voice) -> None:
    """Fine-tuned upstream .pth files pickle their config as utils.HParams; ours do too."""
    with zipfile.ZipFile(tiny_voice("v2")["sovits"]) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        assert b"utils\nHParams" in zf.read(pkl)
    raw = load_checkpoint(tiny_voice("v2")["sovits"]).raw_config
    assert raw["data"]["sampling_rate"] == 32000 and isinstance(raw["model"], dict)


def test_plain_dict_config_and_fp32(tmp_path: Path) -> None:
    from gsv_models.checkpoint import save_sovits
    from gsv_models.testing import random_sovits, sovits_config

    cfg = sovits_config(ModelVersion.V2, "tiny")
    path = tmp_path / "plain.pth"
    save_sovits(
        path,
        cfg,
        random_sovits(cfg, 0).state_dict(),
        half=False,
        config_as_hparams=False,
    )
    assert load_checkpoint(path).version is ModelVersion.V2


def test_weight_norm_is_stored_as_upstream_pairs(tiny_voice) -> None:
    payload, _ = read_payload(tiny_voice("v2")["sovits"])
    keys = payload["weight"].keys()
    assert "dec.ups.0.weight_g" in keys and "dec.ups.0.weight_v" in keys
    assert "dec.ups.0.weight" not in keys


def test_gpt_keys_carry_model_prefix(tiny_voice) -> None:
    payload, _ = read_payload(tiny_voice("v2")["gpt"])
    assert all(k.startswith("model.") for k in payload["weight"])
    assert payload["weight"]["model.ar_predict_layer.weight"].dtype == torch.float16


class _Payload:
    """Unpickling this runs a shell command: the malicious-checkpoint test case."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": {}, "config": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load.*system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_malicious_pickle_behind_version_header(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"weight": {}, "config": _Payload(marker)}, buf)
    path = tmp_path / "evil_pro.pth"
    path.write_bytes(b"05" + buf.getvalue()[2:])
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_legacy_raw_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "raw.pth"
    path.write_bytes(pickle.dumps({"weight": {}}))
    with pytest.raises(CheckpointError, match="not a GPT-SoVITS checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"", "empty"),
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b[:2] + bytes(len(b) - 2), "truncated or corrupt"),
        (lambda b: b"XY" + b[2:], "not a GPT-SoVITS checkpoint"),
    ],
    ids=["empty", "truncated", "zeroed", "bad-magic"],
)
def test_damaged_files_give_clear_errors(tiny_voice, tmp_path: Path, mutate, message) -> None:
    path = tmp_path / "damaged.pth"
    path.write_bytes(mutate(tiny_voice("v2")["sovits"].read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_wrong_kind_both_ways(tiny_voice) -> None:
    paths = tiny_voice("v2")
    with pytest.raises(CheckpointError, match=r"expected a SoVITS \(\.pth\).*GPT"):
        load_checkpoint(paths["gpt"], kind="sovits")
    with pytest.raises(CheckpointError, match=r"expected a GPT \(\.ckpt\).*SoVITS"):
        load_checkpoint(paths["sovits"], kind="gpt")


def test_header_disagreeing_with_weights(tiny_voice, tmp_path: Path) -> None:
    path = tmp_path / "liar.pth"
    path.write_bytes(b"05" + tiny_voice("v2")["sovits"].read_bytes()[2:])
    with pytest.raises(CheckpointError, match="header tag 05 says v2Pro but the weights are v2"):
        load_checkpoint(path)


def test_unknown_gpt_version(tmp_path: Path) -> None:
    from gsv_models.checkpoint import save_gpt
    from gsv_models.testing import random_t2s, t2s_config

    cfg = t2s_config(ModelVersion.V2, "tiny")
    state = random_t2s(cfg, 0).state_dict()
    state["ar_text_embedding.word_embeddings.weight"] = torch.zeros(100, cfg.embedding_dim)
    path = tmp_path / "odd.ckpt"
    save_gpt(path, cfg, state)
    with pytest.raises(CheckpointError, match="phoneme_vocab_size 732 but the text embedding has"):
        load_checkpoint(path)


def test_incomplete_v3_sovits_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "v3.pth"
    torch.save(
        {
            "weight": {"cfm.estimator.proj_out.weight": torch.zeros(2, 2)},
            "config": {"data": {}, "model": {}},
        },
        path,
    )
    with pytest.raises(CheckpointError, match=r"config or weights incomplete"):
        load_checkpoint(path)


def test_make_checkpoint_rejects_unknown_version(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="random checkpoints exist for"):
        make_checkpoint("v3", "gpt", tmp_path / "x.ckpt")
