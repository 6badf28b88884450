"""Bundle manifest, integrity checks and atomic writing (no torch needed for reading)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from gsv_export.writer import staging_dir, write_manifest
from gsv_runtime.bundle import (
    FORMAT_VERSION,
    Bundle,
    GraphFile,
    GraphSpec,
    TensorSpec,
    read_manifest,
)
from gsv_runtime.errors import BundleError
from gsv_runtime.info import describe_bundle

SPEC = GraphSpec(
    inputs={"x": TensorSpec("float32", ("batch", 4))},
    outputs={"y": TensorSpec("float32", ("batch", 4))},
    variants=(GraphFile("onnx", "fp32", "onnx/g.onnx"),),
)


def _write(out: Path) -> Path:
    with staging_dir(out) as work:
        (work / "onnx").mkdir()
        (work / "onnx" / "g.onnx").write_bytes(b"graph bytes")
        write_manifest(work, "voice", {"g": SPEC}, model={"version": "v2"})
    return out


def test_round_trip(tmp_path: Path) -> None:
    bundle = Bundle.load(_write(tmp_path / "b"), verify_hashes=True)
    assert bundle.manifest.graphs["g"] == SPEC
    assert bundle.graph_path("g", "onnxruntime") == tmp_path / "b" / "onnx" / "g.onnx"
    raw = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert raw["format"] == "gsv-bundle" and raw["format_version"] == FORMAT_VERSION
    assert raw["files"]["onnx/g.onnx"]["size_bytes"] == len(b"graph bytes")


def test_missing_variant_is_a_clear_error(tmp_path: Path) -> None:
    bundle = Bundle.load(_write(tmp_path / "b"))
    with pytest.raises(BundleError, match="no openvino fp32 variant"):
        bundle.graph_path("g", "openvino")
    with pytest.raises(BundleError, match="no graph 'nope'"):
        bundle.graph("nope")


def test_newer_format_is_refused(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    raw = json.loads((root / "bundle.json").read_text())
    raw["format_version"] = FORMAT_VERSION + 1
    (root / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="newer than this runtime reads"):
        read_manifest(root)


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    raw = json.loads((root / "bundle.json").read_text())
    raw["future_section"] = {"x": 1}
    (root / "bundle.json").write_text(json.dumps(raw))
    assert read_manifest(root).model == {"version": "v2"}


def test_missing_and_altered_files(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    graph = root / "onnx" / "g.onnx"
    graph.write_bytes(b"graph bytez")  # same size, other content
    Bundle.load(root)  # size check passes
    with pytest.raises(BundleError, match="sha256 differs"):
        Bundle.load(root, verify_hashes=True)
    graph.write_bytes(b"short")
    with pytest.raises(BundleError, match="size differs"):
        Bundle.load(root)
    graph.unlink()
    with pytest.raises(BundleError, match=r"missing file onnx/g\.onnx"):
        Bundle.load(root)


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"format": "other"}'])
def test_bad_manifests(tmp_path: Path, content: str) -> None:
    (tmp_path / "bundle.json").write_text(content)
    with pytest.raises(BundleError):
        read_manifest(tmp_path)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        Bundle.load(tmp_path / "missing")
    with pytest.raises(BundleError, match=r"not a gsv bundle \(no bundle.json\)"):
        Bundle.load(tmp_path)


def test_refuses_to_overwrite_a_non_bundle_dir(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a gsv bundle; refusing"):
        _write(out)
    assert (out / "thesis.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="not a directory"):
        _write(tmp_path / "file")


def test_replaces_an_existing_bundle(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    (root / "stale.txt").write_text("old")
    _write(root)
    assert not (root / "stale.txt").exists()
    Bundle.load(root, verify_hashes=True)


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "b"
    with pytest.raises(RuntimeError), staging_dir(out) as work:
        (work / "half.onnx").write_bytes(b"x")
        raise RuntimeError("parity failed")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "b"
    with pytest.raises(BundleError, match="No space left on device"), staging_dir(out) as work:
        (work / "onnx").mkdir()
        monkeypatch.setattr(Path, "write_bytes", no_space)
        (work / "onnx" / "g.onnx").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_info_describes_the_bundle(tmp_path: Path) -> None:
    lines = list(describe_bundle(_write(tmp_path / "b"), verify_hashes=True))
    text = "\n".join(lines)
    assert "voice, format 1" in text and "sha256 verified" in text
    assert "x:float32[batch,4]" in text


def test_info_lists_the_worst_parity_check_per_variant(tmp_path: Path) -> None:
    """The manifest's parity checks read as a floors table (old bundles lack the direction)."""
    checks = [
        {"name": "stateful/openvino/int8/top1_agreement", "value": 0.98, "limit": 0.94, "ok": True},
        {"name": "gqa/onnxruntime/int8/top1_agreement", "value": 0.97, "limit": 0.94, "ok": True},
        {"name": "gqa/onnxruntime/int8/top1_agreement", "value": 0.96, "limit": 0.94, "ok": True},
        {"name": "v2/dec/openvino/bf16/b1/log_mel", "value": 0.01, "limit": 0.06, "ok": True},
        {"name": "v2/dec/openvino/bf16/b2/log_mel", "value": 0.03, "limit": 0.06, "ok": True},
        {"name": "v2/dec/openvino/bf16/b2/mismatch", "value": 0.0, "limit": 0.0, "ok": True},
        {
            "name": "t2s_prefill/onnxruntime/logits",
            "value": 2e-07,
            "limit": 1e-4,
            "ok": True,
            "higher_is_better": False,
        },
    ]
    out = tmp_path / "b"
    with staging_dir(out) as work:
        (work / "onnx").mkdir()
        (work / "onnx" / "g.onnx").write_bytes(b"graph bytes")
        write_manifest(work, "voice", {"g": SPEC}, parity={"checks": checks})
    lines = list(describe_bundle(out))
    assert "parity: 7 checks, 0 failed; worst per variant:" in lines
    assert "  stateful openvino int8: top1_agreement 0.98 (≥ 0.94)" in lines
    assert "  gqa onnxruntime int8: top1_agreement 0.96 (≥ 0.94)" in lines
    assert "  v2/dec openvino bf16: log_mel 0.03 (≤ 0.06), mismatch 0 (≤ 0)" in lines
    assert "  t2s_prefill onnxruntime fp32: logits 2e-07 (≤ 0.0001)" in lines


def test_graph_io_must_match_the_declaration() -> None:
    from gsv_runtime.bundle import GraphSpec, TensorSpec, check_graph_io

    spec = GraphSpec(
        {"x": TensorSpec("float32", ("batch", 4))}, {"y": TensorSpec("float32", (1,))}, ()
    )
    check_graph_io("g", spec, ("x",), ("y",))
    with pytest.raises(BundleError, match=r"g: graph I/O \['z'\] → \['y'\] does not match"):
        check_graph_io("g", spec, ("z",), ("y",))
