"""Compiled-model cache: OpenVINO's blobs and onnxruntime's optimised graphs. The second load
reads them and gives the same audio; a rewritten graph never meets a stale entry; a damaged
entry is rebuilt; ``GSV_CACHE_DIR`` switches it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gsv_runtime.backends import cache_folder
from gsv_runtime.bundle import Bundle
from gsv_runtime.config import RuntimeConfig, default_cache_dir
from gsv_runtime.synthesizer import Synthesizer

PROMPT = "这是一段参考音频。"


def _audio(
    bundle: Path, cache: Path | None, ref_wav: Path, backend: str = "openvino"
) -> np.ndarray:
    pytest.importorskip(backend)
    runtime = RuntimeConfig(backend=backend, threads=1, cache_dir=str(cache) if cache else None)
    synth = Synthesizer(Bundle.load(bundle), runtime)
    try:
        kwargs = {"ref_audio": ref_wav, "prompt_text": PROMPT, "prompt_lang": "zh", "seed": 5}
        return synth.synthesize("今天天气很好。", "zh", **kwargs).samples
    finally:
        synth.close()


def test_second_load_uses_the_cache(tiny_bundle, ref_wav: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    uncached = _audio(tiny_bundle("v2"), None, ref_wav)
    first = _audio(tiny_bundle("v2"), cache, ref_wav)
    blobs = sorted(cache.rglob("*.blob"))
    assert blobs, "no compiled blobs were written"
    stamps = {b: b.stat().st_mtime_ns for b in blobs}
    second = _audio(tiny_bundle("v2"), cache, ref_wav)
    assert sorted(cache.rglob("*.blob")) == blobs  # imported, not compiled again
    assert all(b.stat().st_mtime_ns == t for b, t in stamps.items())
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, uncached)


def _ort_entries(cache: Path) -> dict[Path, int]:
    return {f: f.stat().st_mtime_ns for f in cache.rglob("*") if f.is_file()}


def test_onnxruntime_second_load_reads_the_optimised_graphs(
    tiny_bundle, ref_wav: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    bundle = tiny_bundle("v2")
    uncached = _audio(bundle, None, ref_wav, "onnxruntime")
    first = _audio(bundle, cache, ref_wav, "onnxruntime")
    entries = _ort_entries(cache)
    graphs = {f.name for f in entries if f.suffix == ".onnx"}
    assert {"t2s_prefill.onnx", "sovits_decoder.onnx"} <= graphs
    assert not [f for f in cache.iterdir() if ".tmp-" in f.name]  # staging folders renamed
    second = _audio(bundle, cache, ref_wav, "onnxruntime")
    assert _ort_entries(cache) == entries  # read, not written again
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, uncached)


def test_onnxruntime_damaged_cache_entry_is_rebuilt(
    tiny_bundle, ref_wav: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    bundle = tiny_bundle("v2")
    first = _audio(bundle, cache, ref_wav, "onnxruntime")
    decoder = next(cache.glob("sovits_decoder-*/sovits_decoder.onnx"))
    decoder.write_bytes(decoder.read_bytes()[:100])
    np.testing.assert_array_equal(_audio(bundle, cache, ref_wav, "onnxruntime"), first)
    assert decoder.stat().st_size > 100  # written afresh


def test_unwritable_cache_only_costs_the_saving(tiny_bundle, ref_wav: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    audio = _audio(tiny_bundle("v2"), blocker / "cache", ref_wav, "onnxruntime")
    assert len(audio) > 0 and blocker.is_file()


def test_rewritten_graph_gets_a_new_cache_folder(tiny_bundle, tmp_path: Path) -> None:
    xml = tmp_path / "sovits_decoder.xml"
    source = Path(tiny_bundle("v2")) / "openvino" / "sovits_decoder.xml"
    shutil.copy(source, xml)
    shutil.copy(source.with_suffix(".bin"), xml.with_suffix(".bin"))
    before = cache_folder(tmp_path / "c", xml)
    assert cache_folder(tmp_path / "c", xml) == before
    os.utime(xml.with_suffix(".bin"), ns=(0, 12345))
    assert cache_folder(tmp_path / "c", xml) != before
    assert cache_folder(tmp_path / "c", xml, "onnxruntime 1.0 avx2") != before


def test_onnx_graph_cache_folder_follows_its_weights(tmp_path: Path) -> None:
    graph = tmp_path / "t2s_step.onnx"
    graph.write_bytes(b"graph")
    (tmp_path / "weights.data").write_bytes(b"weights")
    before = cache_folder(tmp_path / "c", graph)
    os.utime(tmp_path / "weights.data", ns=(0, 12345))
    assert cache_folder(tmp_path / "c", graph) != before


def test_cache_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSV_CACHE_DIR", "/somewhere")
    assert default_cache_dir() == "/somewhere"
    for off in ("", "off", "OFF"):
        monkeypatch.setenv("GSV_CACHE_DIR", off)
        assert default_cache_dir() is None
    monkeypatch.delenv("GSV_CACHE_DIR")
    assert default_cache_dir() == str(Path.home() / ".cache" / "gsv-rt" / "compiled")
