"""Per-stage precision choice: parsing, auto by ISA, what a bundle holds."""

from __future__ import annotations

import pytest

from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import BundleError, InputError
from gsv_runtime.variants import auto_order, parse_precision, stage_precision


def test_parse_precision() -> None:
    assert parse_precision("int8") == {"gpt": "int8", "acoustic": "int8"}
    assert parse_precision("gpt=int8,acoustic=bf16") == {"gpt": "int8", "acoustic": "bf16"}
    assert parse_precision("acoustic=bf16") == {"gpt": "fp32", "acoustic": "bf16"}
    for bad in ("fp8", "vocoder=bf16", "gpt=int4"):
        with pytest.raises(InputError):
            parse_precision(bad)


def test_auto_order_follows_the_isa() -> None:
    amx = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    assert auto_order("gpt", "openvino", amx) == ("int8", "bf16", "fp32")
    assert auto_order("acoustic", "openvino", amx) == ("bf16", "fp32")
    assert auto_order("gpt", "openvino", frozenset({"avx2"})) == ("fp32",)
    assert auto_order("gpt", "onnxruntime", amx) == ("fp32",)


def test_stage_precision_takes_what_the_bundle_holds(tiny_bundle) -> None:
    bundle = Bundle.load(tiny_bundle("v2"))  # fp32 only
    assert stage_precision(bundle, "t2s_decoder", "gpt", "openvino", "auto") == "fp32"
    assert stage_precision(bundle, "sovits_decoder", "acoustic", "openvino", "fp32") == "fp32"
    with pytest.raises(BundleError, match=r"no openvino bf16 variant \(it holds fp32\)"):
        stage_precision(bundle, "sovits_decoder", "acoustic", "openvino", "bf16")
    with pytest.raises(BundleError, match="no onnxruntime int8 variant"):
        stage_precision(bundle, "t2s_prefill", "gpt", "onnxruntime", "gpt=int8")
