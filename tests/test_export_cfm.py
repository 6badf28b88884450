"""v3/v4 export: per-graph parity of the CFM graphs, a bundle from a v3 LoRA file, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import openvino as ov
import pytest
import torch
from click.testing import CliRunner

from gsv_export import export_bundle
from gsv_export.cfm import SNR_MIN_DB, export_cfm_graphs, verify_cfm
from gsv_models.testing import make_checkpoint
from gsv_models.testing.bigvgan_init import make_bigvgan_dir
from gsv_models.testing.cfm_init import (
    make_v3_checkpoint,
    make_v3_lora_checkpoint,
    make_v4_vocoder,
    random_v3,
    random_v4_vocoder,
    v3_config,
    v4_vocoder_config,
)
from gsv_models.version import ModelVersion
from gsv_runtime.acoustic.cfm import GRAPHS
from gsv_runtime.bundle import Bundle
from gsv_runtime.cli import main
from gsv_runtime.errors import CheckpointError

V3, V4, V5TURBO = ModelVersion.V3, ModelVersion.V4, ModelVersion.V5TURBO


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("cfm-src")
    lora, base = make_v3_lora_checkpoint(V3, out / "v3lora.pth", out / "v3base.pth", rank=4)
    v5lora, v5base = make_v3_lora_checkpoint(
        V5TURBO, out / "v5lora.pth", out / "v5base.pth", rank=4, seed=6
    )
    return {
        "gpt": make_checkpoint("v2", "gpt", out / "gpt.ckpt"),
        "v2": make_checkpoint("v2", "sovits", out / "v2.pth"),
        "v3lora": lora,
        "v3base": base,
        "v5lora": v5lora,
        "v5base": v5base,
        "v4": make_v3_checkpoint(V4, out / "v4.pth", seed=3),
        "bigvgan": make_bigvgan_dir(out / "bigvgan"),
        "v4vocoder": make_v4_vocoder(out / "vocoder.pth"),
    }


def _snr_checks(checks: list[dict]) -> list[dict]:
    return [c for c in checks if c["name"].endswith("_snr_db")]


def test_v4_graph_parity_both_backends(tmp_path: Path) -> None:
    """Every CFM graph on onnxruntime and OpenVINO at ≥ 60 dB against torch (fp32), and the
    fp16 variants, the OpenVINO bf16 one (the fp32 IR with a bf16 hint) and the int8 ones (a
    quantized DiT step; the other graphs' fp32 file, on OpenVINO compiled in bf16) above
    their floors."""
    model = random_v3(v3_config(V4, "tiny"), 0)
    vocoder = random_v4_vocoder(v4_vocoder_config("tiny"), 0)
    precisions = ("fp32", "fp16", "bf16", "int8")
    specs = export_cfm_graphs(model, vocoder, tmp_path, ("onnx", "openvino"), precisions)
    held = {(v.format, v.precision) for v in specs["cfm_step"].variants}
    assert held == {(f, p) for f in ("onnx", "openvino") for p in ("fp32", "fp16", "int8")} | {
        ("openvino", "bf16"),
    }
    step = {(v.format, v.precision): v.path for v in specs["cfm_step"].variants}
    assert step[("openvino", "bf16")] == step[("openvino", "fp32")]
    assert step[("openvino", "int8")] == "openvino/cfm_step-int8.xml"
    assert step[("onnx", "int8")] == "onnx/cfm_step-int8.onnx"
    int8_ops = {n.op_type for n in onnx.load(str(tmp_path / step[("onnx", "int8")])).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= int8_ops
    ir = ov.Core().read_model(str(tmp_path / step[("openvino", "fp32")]))
    fused = [op for op in ir.get_ordered_ops() if op.get_type_name() == "ScaledDotProductAttention"]
    assert len(fused) == model.cfg.dit.depth  # the key mask exports without per-softmax guards
    vocoder_files = {(v.format, v.precision): v.path for v in specs["cfm_vocoder"].variants}
    assert vocoder_files[("openvino", "int8")] == vocoder_files[("openvino", "fp32")]
    assert vocoder_files[("onnx", "int8")] == vocoder_files[("onnx", "fp32")]
    assert list(specs) == list(GRAPHS)
    report = verify_cfm(tmp_path, specs, model, vocoder)
    assert not report.failures, [c.line() for c in report.failures]
    names = {c.name for c in report.checks}
    for graph in GRAPHS[2:]:
        for backend in ("onnxruntime", "openvino"):
            assert any(n.startswith(f"v4/{graph}/{backend}/fp32/") for n in names)
    variants = ("onnxruntime/fp16", "openvino/fp16", "openvino/bf16", "openvino/int8")
    for variant in (*variants, "onnxruntime/int8"):
        assert any(f"/{variant}/" in n for n in names)
    snr = [c for c in report.checks if c.name.endswith("_snr_db") and "/fp32/" in c.name]
    assert min(c.value for c in snr) >= SNR_MIN_DB
    assert {c.name.split("/")[-2] for c in snr if "/cfm_step/" in c.name} == {"b2-t0", "b2-masked"}


def _export_lora(files: dict[str, Path], lora: str, base: str, vocoder: str, out: Path) -> Path:
    """``gsv export`` (ONNX) of the LoRA file ``files[lora]`` over ``files[base]``; ``out``."""
    args = ["export", "--gpt", str(files["gpt"]), "--sovits", str(files[lora])]
    args += ["--sovits-base", str(files[base]), "--vocoder", str(files[vocoder])]
    args += ["-o", str(out), "--format", "onnx"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_v3_lora_bundle_through_the_cli(files: dict[str, Path], tmp_path: Path) -> None:
    """``gsv export`` of a v3 LoRA fine-tune with its base and BigVGAN: a ``cfm`` bundle whose
    graphs passed parity against the merged model."""
    out = _export_lora(files, "v3lora", "v3base", "bigvgan", tmp_path / "v3lora.gsv")
    bundle = Bundle.load(out, verify_hashes=True)
    manifest = bundle.manifest
    assert manifest.model["version"] == "v3"
    audio = manifest.audio
    assert (audio["family"], audio["sample_rate"], audio["samples_per_frame"]) == (
        "cfm",
        24000,
        256,
    )
    assert audio["mel"]["sample_rate"] == 24000 and audio["mel"]["n_fft"] == 1024
    assert audio["cfm"]["t_ref"] == 468 and audio["cfm"]["steps"] == 32
    assert manifest.source["sovits_base"]["file"] == "v3base.pth"
    assert manifest.source["vocoder"]["file"] == "bigvgan"
    assert set(GRAPHS) <= set(manifest.graphs)
    checks = manifest.parity["checks"]
    assert all(c["ok"] for c in checks)
    cfm = [c for c in _snr_checks(checks) if c["name"].startswith("v3/cfm_")]
    assert len(cfm) >= 7 and min(c["value"] for c in cfm) >= SNR_MIN_DB
    raw = json.loads((out / "bundle.json").read_text())
    assert raw["audio"]["family"] == "cfm"


def test_v5_lora_bundle_through_the_cli(files: dict[str, Path], tmp_path: Path) -> None:
    """A v5turbo LoRA fine-tune (tag 08, like the full v5turbo base) exports merged into its
    base, with v4's vocoder at 48 kHz and v5turbo's sampler defaults."""
    out = _export_lora(files, "v5lora", "v5base", "v4vocoder", tmp_path / "v5lora.gsv")
    manifest = Bundle.load(out, verify_hashes=True).manifest
    assert manifest.model["version"] == "v5turbo"
    assert manifest.audio["sample_rate"] == 48000 and manifest.audio["cfm"]["steps"] == 4
    assert manifest.source["sovits_base"]["file"] == "v5base.pth"
    checks = manifest.parity["checks"]
    assert all(c["ok"] for c in checks)
    cfm = [c for c in _snr_checks(checks) if c["name"].startswith("v5turbo/cfm_")]
    assert len(cfm) >= 7 and min(c["value"] for c in cfm) >= SNR_MIN_DB


@pytest.mark.parametrize(
    ("sovits", "vocoder", "base", "message"),
    [
        ("v3lora", "bigvgan", None, "--sovits-base\\): upstream's pretrained"),
        ("v3base", None, None, "needs its vocoder: pass vocoder="),
        ("v3base", "v4vocoder", None, "a v3 voice needs the BigVGAN model folder"),
        ("v4", "bigvgan", None, "a v4 voice needs upstream's vocoder.pth"),
        ("v2", "v4vocoder", None, "has its own decoder; vocoder= is for v3/v4"),
        ("v4", "v4vocoder", "v3base", "base= is for LoRA files"),
    ],
)
def test_refusals(files, tmp_path: Path, sovits, vocoder, base, message) -> None:
    out = tmp_path / "bad"
    with pytest.raises(CheckpointError, match=message):
        export_bundle(
            files["gpt"],
            files[sovits],
            out,
            vocoder=files[vocoder] if vocoder else None,
            sovits_base=files[base] if base else None,
            progress=lambda _: None,
        )
    assert not out.exists()
