"""Saved voices: round trip, names, damage and format checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gsv_runtime.errors import BundleError, InputError
from gsv_runtime.voice import Voice, saved_voices


def _voice() -> Voice:
    rng = np.random.default_rng(0)
    return Voice(
        prompt_tokens=rng.integers(0, 1024, 40),
        prompt_phones=rng.integers(0, 732, 12),
        prompt_bert=rng.standard_normal((12, 1024)).astype(np.float32),
        ge=rng.standard_normal((2, 32, 1)).astype(np.float32),
        prompt_text="你好。",
        prompt_lang="zh",
    )


def test_round_trip_and_listing(tmp_path: Path) -> None:
    voice = _voice()
    voice.save(tmp_path, "alice")
    voice.save(tmp_path, "alice")  # replacing is fine
    loaded = Voice.load(tmp_path, "alice")
    for field in ("prompt_tokens", "prompt_phones", "prompt_bert", "ge"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(voice, field))
    assert loaded.prompt_text == "你好。" and loaded.name == "alice"
    assert saved_voices(tmp_path) == ["alice"]
    np.testing.assert_allclose(loaded.mean_ge, voice.ge.mean(axis=0, keepdims=True))


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x" * 65])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="invalid voice name"):
        _voice().save(tmp_path, name)


def test_missing_damaged_and_newer(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no voice 'bob'"):
        Voice.load(tmp_path, "bob")
    folder = _voice().save(tmp_path, "bob")
    (folder / "arrays.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="damaged voice"):
        Voice.load(tmp_path, "bob")
    folder = _voice().save(tmp_path, "carol")
    meta = json.loads((folder / "voice.json").read_text())
    meta["format_version"] = 99
    (folder / "voice.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="newer"):
        Voice.load(tmp_path, "carol")
