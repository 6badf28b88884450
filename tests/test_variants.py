"""Per-stage backend and precision choice: parsing, auto by ISA, what a bundle holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest.mock import patch

import pytest

from gsv_runtime.backends import RunnerOptions
from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import BackendError, BundleError, InputError
from gsv_runtime.variants import (
    auto_order,
    backend_order,
    bundle_formats,
    choose_backend,
    choose_precisions,
    parse_backend,
    parse_precision,
    variant_options,
)


def test_parse_precision() -> None:
    assert parse_precision("int8") == {"gpt": "int8", "acoustic": "int8", "support": "int8"}
    assert parse_precision("gpt=int8,acoustic=bf16") == {
        "gpt": "int8",
        "acoustic": "bf16",
        "support": "fp32",
    }
    assert parse_precision("support=bf16") == {"gpt": "fp32", "acoustic": "fp32", "support": "bf16"}
    for bad in ("fp8", "vocoder=bf16", "gpt=int4"):
        with pytest.raises(InputError):
            parse_precision(bad)


def test_auto_order_follows_the_isa() -> None:
    amx = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    assert auto_order("gpt", "openvino", amx) == ("int8", "bf16", "fp32")
    assert auto_order("gpt", "openvino", frozenset({"avx512_vnni"})) == ("int8", "fp32")
    assert auto_order("acoustic", "openvino", amx) == ("int8", "bf16", "fp32")
    assert auto_order("acoustic", "openvino", frozenset({"avx512_bf16"})) == ("bf16", "fp32")
    assert auto_order("gpt", "openvino", frozenset({"avx2"})) == ("int8", "fp32")  # 14.0 vs 20.6
    assert auto_order("gpt", "onnxruntime", amx) == ("int8", "fp32")
    # a CFM voice's dynamic int8 DiT step on any CPU (1.4× fp32 on AVX2 alone), else fp32
    assert auto_order("acoustic", "onnxruntime", amx) == ("int8", "fp32")
    assert auto_order("acoustic", "onnxruntime", frozenset({"avx2"})) == ("int8", "fp32")
    assert auto_order("acoustic", "onnxruntime", frozenset()) == ("fp32",)  # not a CPU
    assert auto_order("support", "onnxruntime", amx) == ("int8", "fp32")
    assert auto_order("support", "onnxruntime", frozenset({"avx2"})) == ("int8", "fp32")
    assert auto_order("support", "openvino", amx) == ("int8", "bf16", "fp32")
    assert auto_order("support", "openvino", frozenset({"avx512_vnni"})) == ("fp32",)
    assert auto_order("gpt", "onnxruntime", frozenset({"avx2"})) == ("int8", "fp32")  # 8.7 vs 15.5
    assert auto_order("gpt", "onnxruntime", frozenset()) == ("fp32",)  # not a CPU
    assert auto_order("acoustic", "openvino", frozenset({"avx2"})) == ("fp32",)  # no faster
    graviton = frozenset({"fp", "asimd", "asimddp", "i8mm", "bf16"})  # Arm Neoverse V1
    assert auto_order("gpt", "openvino", graviton) == ("int8", "bf16", "fp32")
    # Arm with dot products but no bf16: a CFM voice's int8 DiT, else fp32 (by analogy)
    assert auto_order("acoustic", "openvino", frozenset({"asimd", "asimddp"})) == ("int8", "fp32")
    assert auto_order("acoustic", "openvino", frozenset({"asimd"})) == ("fp32",)


def test_variant_hints() -> None:
    """OpenVINO compiles bf16 variants, the acoustic stage's int8 (a quantized DiT step among
    bf16 operations) and the support graphs' int8 (int8 weights) with the bf16 hint; the GPT's
    int8 weights decompress to f32."""
    options = RunnerOptions()
    assert variant_options("openvino", "bf16", options).precision_hint == "bf16"
    assert variant_options("openvino", "int8", options, "acoustic").precision_hint == "bf16"
    assert variant_options("openvino", "int8", options, "support").precision_hint == "bf16"
    assert variant_options("openvino", "int8", options, "gpt") == options
    assert variant_options("onnxruntime", "int8", options, "acoustic") == options
    assert variant_options("openvino", "fp32", options, "acoustic") == options


def test_choose_precisions_takes_what_the_bundle_holds(tiny_bundle, caplog) -> None:
    bundle = Bundle.load(tiny_bundle("v2"))  # fp32 only
    fp32 = {"gpt": "fp32", "acoustic": "fp32"}
    assert choose_precisions(bundle, "openvino", "auto") == fp32
    assert choose_precisions(bundle, "onnxruntime", "fp32") == fp32
    with pytest.raises(
        BundleError, match=r"sovits_decoder has no openvino bf16 variant \(it holds fp32\)"
    ):
        choose_precisions(bundle, "openvino", "acoustic=bf16")
    with pytest.raises(BundleError, match="no onnxruntime int8 variant"):
        choose_precisions(bundle, "onnxruntime", "gpt=int8")
    with pytest.raises(BundleError, match="no stage has a onnxruntime int8 variant"):
        choose_precisions(bundle, "onnxruntime", "int8")


def _with_variant(source: Path, tmp_path: Path, graph: str, precision: str) -> Path:
    """A copy of a bundle whose manifest also lists ``precision`` for ``graph`` (metadata only:
    nothing compiles it)."""
    root = tmp_path / "voice"
    shutil.copytree(source, root)
    manifest = json.loads((root / "bundle.json").read_text())
    variants = manifest["graphs"][graph]["variants"]
    variants.append({**variants[0], "precision": precision})
    (root / "bundle.json").write_text(json.dumps(manifest))
    return root


def test_one_precision_is_a_preference_per_stage(tiny_bundle, tmp_path, caplog) -> None:
    """``int8`` on a bundle with an int8 GPT and an fp32-only SoVITS: GPT int8, SoVITS fp32."""
    root = _with_variant(tiny_bundle("v2"), tmp_path, "t2s_prefill", "int8")
    with caplog.at_level("WARNING"):
        chosen = choose_precisions(Bundle.load(root), "onnxruntime", "int8")
    assert chosen == {"gpt": "int8", "acoustic": "fp32"}
    assert "the acoustic stage runs fp32" in caplog.text
    # auto ranks by this CPU's ISA only on the CPU; another device runs fp32 until measured
    gpu = choose_precisions(Bundle.load(root), "onnxruntime", "auto", device="cuda:0")
    assert gpu == {"gpt": "fp32", "acoustic": "fp32"}


def test_parse_backend() -> None:
    assert parse_backend("auto") == dict.fromkeys(("gpt", "acoustic", "support"), "auto")
    assert parse_backend("openvino") == dict.fromkeys(("gpt", "acoustic", "support"), "openvino")
    assert parse_backend("gpt=onnxruntime,acoustic=openvino") == {
        "gpt": "onnxruntime",
        "acoustic": "openvino",
        "support": "auto",
    }
    for bad in ("tensorrt", "vocoder=openvino", "gpt=torch", ""):
        with pytest.raises(InputError):
            parse_backend(bad)


def test_backend_order_follows_the_isa() -> None:
    epyc = frozenset({"avx512f", "avx512_vnni", "avx512_bf16"})
    assert [b for b, _ in backend_order("gpt", epyc)] == ["onnxruntime", "openvino"]
    assert [b for b, _ in backend_order("acoustic", epyc)] == ["openvino", "onnxruntime"]
    assert [b for b, _ in backend_order("support", epyc)] == ["openvino", "onnxruntime"]
    for stage in ("gpt", "acoustic", "support"):  # no measured reason: the default order
        assert [b for b, _ in backend_order(stage, frozenset({"avx2"}))] == [
            "onnxruntime",
            "openvino",
        ]


def test_choose_backend_per_stage() -> None:
    both, epyc = ["onnxruntime", "openvino"], frozenset({"avx512_vnni", "avx512_bf16"})
    formats = {"onnx", "openvino"}
    with patch("gsv_runtime.variants.cpu_flags", return_value=epyc):
        assert choose_backend("gpt", "auto", formats, both) == "onnxruntime"
        assert choose_backend("acoustic", "auto", formats, both) == "openvino"
        assert choose_backend("acoustic", "auto", {"onnx"}, both) == "onnxruntime"
        assert choose_backend("acoustic", "auto", formats, ["onnxruntime"]) == "onnxruntime"
        # off the CPU nothing is ranked by ISA, and each backend takes only its devices
        assert choose_backend("acoustic", "auto", formats, both, "cuda:0") == "onnxruntime"
        assert choose_backend("gpt", "auto", formats, both, "GPU") == "openvino"
    assert choose_backend("gpt", "openvino", formats, both) == "openvino"
    with pytest.raises(BackendError, match="not installed"):
        choose_backend("gpt", "openvino", formats, ["onnxruntime"])
    with pytest.raises(BackendError, match="no openvino graphs"):
        choose_backend("gpt", "openvino", {"onnx"}, both)
    with pytest.raises(BackendError, match="no installed backend"):
        choose_backend("gpt", "auto", {"openvino"}, ["onnxruntime"])


def test_voice_model_runs_a_backend_per_stage(tiny_bundle) -> None:
    """A per-stage request puts each stage on its backend and names both."""
    from gsv_runtime.config import RuntimeConfig
    from gsv_runtime.engine import VoiceModel

    runtime = RuntimeConfig(backend="gpt=onnxruntime,acoustic=openvino", threads=1)
    model = VoiceModel(Bundle.load(tiny_bundle("v2")), runtime)
    assert model.backends == {"gpt": "onnxruntime", "acoustic": "openvino"}
    assert model.t2s.design in ("gqa", "canonical")
    assert model.backend == "gpt=onnxruntime,acoustic=openvino"
    support = model.support  # auto: this CPU's ranking among what the support bundle holds
    assert model.backends["support"] == support.backend in ("onnxruntime", "openvino")


def test_named_precision_steers_the_auto_backend(tiny_bundle, tmp_path) -> None:
    """``--precision bf16`` with ``--backend auto``: the GPT goes where a bf16 variant is
    (OpenVINO), not to the backend ``auto`` ranks first for the GPT (onnxruntime)."""
    bundle = Bundle.load(_with_variant(tiny_bundle("v2"), tmp_path, "t2s_decoder", "bf16"))
    assert bundle_formats(bundle, "gpt") == {"onnx", "openvino"}
    assert bundle_formats(bundle, "gpt", "bf16") == {"openvino"}
    assert bundle_formats(bundle, "acoustic", "bf16") == set()  # VoiceModel then ignores it
    both, epyc = ["onnxruntime", "openvino"], frozenset({"avx512_vnni", "avx512_bf16"})
    with patch("gsv_runtime.variants.cpu_flags", return_value=epyc):
        assert choose_backend("gpt", "auto", bundle_formats(bundle, "gpt"), both) == "onnxruntime"
        steered = choose_backend("gpt", "auto", bundle_formats(bundle, "gpt", "bf16"), both)
        assert steered == "openvino"
