"""OpenVINO compiled-model cache: the second load imports blobs and gives the same audio; a
rewritten graph never meets a stale blob; ``GSV_CACHE_DIR`` switches it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from gsv_runtime.backends.ov import cache_folder
from gsv_runtime.bundle import Bundle
from gsv_runtime.config import RuntimeConfig, default_cache_dir
from gsv_runtime.synthesizer import Synthesizer

PROMPT = "这是一段参考音频。"


def _audio(bundle: Path, cache: Path, ref_wav: Path) -> np.ndarray:
    runtime = RuntimeConfig(backend="openvino", threads=1, cache_dir=str(cache))
    synth = Synthesizer(Bundle.load(bundle), runtime)
    try:
        kwargs = {"ref_audio": ref_wav, "prompt_text": PROMPT, "prompt_lang": "zh", "seed": 5}
        return synth.synthesize("今天天气很好。", "zh", **kwargs).samples
    finally:
        synth.close()


def test_second_load_uses_the_cache(tiny_bundle, ref_wav: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    uncached = _audio(tiny_bundle("v2"), tmp_path / "unused", ref_wav)
    first = _audio(tiny_bundle("v2"), cache, ref_wav)
    blobs = sorted(cache.rglob("*.blob"))
    assert blobs, "no compiled blobs were written"
    stamps = {b: b.stat().st_mtime_ns for b in blobs}
    second = _audio(tiny_bundle("v2"), cache, ref_wav)
    assert sorted(cache.rglob("*.blob")) == blobs  # imported, not compiled again
    assert all(b.stat().st_mtime_ns == t for b, t in stamps.items())
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, uncached)


def test_rewritten_graph_gets_a_new_cache_folder(tiny_bundle, tmp_path: Path) -> None:
    xml = tmp_path / "sovits_decoder.xml"
    source = Path(tiny_bundle("v2")) / "openvino" / "sovits_decoder.xml"
    shutil.copy(source, xml)
    shutil.copy(source.with_suffix(".bin"), xml.with_suffix(".bin"))
    before = cache_folder(tmp_path / "c", xml)
    assert cache_folder(tmp_path / "c", xml) == before
    os.utime(xml.with_suffix(".bin"), ns=(0, 12345))
    assert cache_folder(tmp_path / "c", xml) != before


def test_cache_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSV_CACHE_DIR", "/somewhere")
    assert default_cache_dir() == "/somewhere"
    for off in ("", "off", "OFF"):
        monkeypatch.setenv("GSV_CACHE_DIR", off)
        assert default_cache_dir() is None
    monkeypatch.delenv("GSV_CACHE_DIR")
    assert default_cache_dir() == str(Path.home() / ".cache" / "gsv-rt" / "compiled")
