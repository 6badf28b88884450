"""gsv export / export-support as a whole: manifest content, bad input, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gsv_export import export_bundle
from gsv_runtime.bundle import Bundle
from gsv_runtime.cli import main
from gsv_runtime.errors import BundleError, CheckpointError, InputError


def test_manifest_describes_the_voice(tiny_bundle, tiny_voice) -> None:
    bundle = Bundle.load(tiny_bundle("v2Pro"), verify_hashes=True)
    m = bundle.manifest
    assert m.kind == "voice" and m.model["version"] == "v2Pro"
    assert m.audio["sample_rate"] == 32000 and m.audio["samples_per_token"] == 1280
    assert m.t2s["eos_id"] == 1024 and m.t2s["max_tokens"] == 1500
    assert m.sampling["top_k"] == 15 and m.sampling["repetition_penalty"] == 1.35
    assert m.support["graphs"] == ["hubert", "bert", "sv"]
    source = m.source["sovits"]
    assert source["file"] == "sovits.pth" and len(source["sha256"]) == 64
    for name in ("t2s_prefill", "t2s_step", "t2s_step_gqa", "t2s_decoder", "sovits_decoder"):
        assert bundle.graph(name).variants
    raw = json.loads((bundle.root / "bundle.json").read_text())
    assert raw["created_by"]["gsv_rt"] and raw["graphs"]["sovits_decoder"]["inputs"]["noise"]


def test_mismatched_gpt_and_sovits_versions(tiny_voice, tmp_path: Path) -> None:
    out = tmp_path / "voice"
    with pytest.raises(CheckpointError, match=r"mismatched checkpoints.*v1 symbols.*v2"):
        export_bundle(tiny_voice("v1")["gpt"], tiny_voice("v2")["sovits"], out)
    assert not out.exists()


def test_wrong_kind_and_missing_file(tiny_voice, tmp_path: Path) -> None:
    paths = tiny_voice("v2")
    with pytest.raises(CheckpointError, match="expected a GPT"):
        export_bundle(paths["sovits"], paths["sovits"], tmp_path / "a")
    with pytest.raises(CheckpointError, match="no such file"):
        export_bundle(tmp_path / "nope.ckpt", paths["sovits"], tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_and_precision(tiny_voice, tmp_path: Path) -> None:
    paths = tiny_voice("v2")
    with pytest.raises(InputError, match="unknown format"):
        export_bundle(paths["gpt"], paths["sovits"], tmp_path / "a", formats=["tensorrt"])
    with pytest.raises(InputError, match="unknown precision"):
        export_bundle(paths["gpt"], paths["sovits"], tmp_path / "a", precisions=["fp8"])


def test_refuses_a_non_bundle_output_dir(tiny_voice, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    paths = tiny_voice("v2")
    with pytest.raises(BundleError, match="refusing to overwrite"):
        export_bundle(paths["gpt"], paths["sovits"], out, formats=["onnx"])
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cli_export_verifies_and_reports(tiny_voice, tmp_path: Path) -> None:
    paths = tiny_voice("v1")
    out = tmp_path / "voice"
    result = CliRunner().invoke(
        main,
        [
            "export",
            "--gpt",
            str(paths["gpt"]),
            "--sovits",
            str(paths["sovits"]),
            "-o",
            str(out),
            "--format",
            "onnx",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "checking parity against PyTorch" in result.output and "FAIL" not in result.output
    checks = Bundle.load(out).manifest.parity["checks"]
    assert checks and all(c["ok"] for c in checks)
    # one line per graph variant, not one per check
    assert f"parity: {len(checks)} checks, 0 failed; worst per variant:" in result.output
    assert "  v1/sovits_decoder onnxruntime fp32: wav_lengths_mismatch 0 (≤ 0)" in result.output
    assert result.output.count("\n") < len(checks)
    bad = CliRunner().invoke(
        main,
        [
            "export",
            "--gpt",
            str(paths["sovits"]),
            "--sovits",
            str(paths["sovits"]),
            "-o",
            str(tmp_path / "x"),
        ],
    )
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ")
    assert bad.stderr.strip().count("\n") == 0


def test_onnx_graphs_share_one_weight_file(tmp_path: Path) -> None:
    """Graphs holding the same weights (the GPT's prefill, step and GQA step) store them once."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from gsv_export.graph_io import share_onnx_weights
    from gsv_runtime.bundle import GraphFile, GraphSpec

    torch.manual_seed(0)
    shared, own = torch.nn.Linear(64, 64), torch.nn.Linear(64, 32)
    modules = {"a": torch.nn.Sequential(shared), "b": torch.nn.Sequential(shared, own)}
    x = torch.randn(2, 64)
    folder = tmp_path / "onnx"
    folder.mkdir()
    graphs, expected = {}, {}
    for name, module in modules.items():
        path = folder / f"{name}.onnx"
        torch.onnx.export(module, (x,), str(path), input_names=["x"], dynamo=False)
        model = onnx.load(str(path))
        onnx.save_model(
            model, str(path), save_as_external_data=True, location=f"{name}.onnx.data",
            size_threshold=0,
        )  # fmt: skip
        (expected[name],) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
        graphs[name] = GraphSpec({}, {}, (GraphFile("onnx", "fp32", f"onnx/{name}.onnx"),))
    before = sum(f.stat().st_size for f in folder.glob("*.data"))

    sizes = share_onnx_weights(tmp_path, graphs)

    assert sorted(p.name for p in folder.iterdir()) == ["a.onnx", "b.onnx", "weights.data"]
    weights = 64 * 64 * 4 + 64 * 4 + 32 * 64 * 4 + 32 * 4
    assert weights <= sizes["fp32"] < before and sizes["fp32"] < weights + 4 * 4096
    for name in modules:
        session = ort.InferenceSession(str(folder / f"{name}.onnx"))
        (got,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_array_equal(got, expected[name])


def test_bundle_without_fp32(tiny_voice, tiny_support: Path, ref_wav: Path, tmp_path: Path) -> None:
    """``--precision int8,bf16``: graphs with a lower precision lose their fp32 variant and its
    files; fp32-only graphs keep it; the runtime runs it and refuses fp32 by name."""
    from gsv_runtime.synthesizer import Synthesizer

    paths, out = tiny_voice("v2"), tmp_path / "edge"
    export_bundle(
        paths["gpt"],
        paths["sovits"],
        out,
        precisions=["int8", "bf16"],
        support=str(tiny_support),
        progress=lambda _: None,
    )
    bundle = Bundle.load(out, verify_hashes=True)

    def held(graph: str, fmt: str) -> set[str]:
        return {v.precision for v in bundle.graph(graph).variants if v.format == fmt}

    for graph in ("t2s_prefill", "t2s_step", "t2s_step_gqa"):
        assert held(graph, "onnx") == {"int8"}
    assert held("t2s_decoder", "openvino") == {"bf16", "int8"}
    assert held("sovits_decoder", "onnx") == {"fp32"} and held("sovits_decoder", "openvino") == {
        "bf16"
    }
    assert held("t2s_token_embed", "openvino") == {"fp32"}
    names = {p.name for p in (out / "onnx").iterdir()}
    assert "t2s_prefill.onnx" not in names and "t2s_prefill-int8.onnx" in names
    assert (out / "openvino" / "t2s_decoder.xml").is_file()  # the bf16 variant compiles it
    kwargs = {"ref_audio": ref_wav, "prompt_text": "这是一段参考音频。", "prompt_lang": "zh"}
    synth = Synthesizer.load(out, backend="onnxruntime", precision="int8")
    try:
        assert synth.model.precisions == {"gpt": "int8", "acoustic": "fp32"}
        audio = synth.synthesize("你好。", "zh", seed=1, **kwargs)
        assert audio.samples.size > 0
    finally:
        synth.close()
    with pytest.raises(BundleError, match=r"t2s_prefill has no onnxruntime fp32 variant"):
        Synthesizer.load(out, backend="onnxruntime", precision="gpt=fp32")
