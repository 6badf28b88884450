"""Lower-precision variants of an exported fp32 graph: ONNX int8/fp16 and OpenVINO int8.

Used by the support graphs (``gsv_export.support``); nothing here is specific to them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor

from gsv_export.graph_io import ExportError, GraphDecl, save_onnx


def onnx_int8(src: Path, dst: Path, graph: str) -> Path:
    """Dynamic int8 quantization of every MatMul with a constant weight, per output channel."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        out = Path(tmp) / dst.name
        quantize_dynamic(
            src,
            out,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
        )
        model = onnx.load(str(out))
    set_metadata(model, {"gsv.graph": graph, "gsv.precision": "int8"})
    save_onnx(model, dst)
    return dst


def onnx_fp16(
    src: Path,
    dst: Path,
    graph: str,
    args: tuple[Tensor, ...],
    decl: GraphDecl,
    notes: list[str],
) -> Path | None:
    """fp16 weights and compute with float32 inputs/outputs, kept only if onnxruntime's CPU
    provider runs it (kernels for some fp16 ops are missing in older onnxruntime builds)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    OnnxModel(model).topological_sort()  # the converter appends its I/O casts at the end
    set_metadata(model, {"gsv.graph": graph, "gsv.precision": "fp16"})
    save_onnx(model, dst)
    feeds = {name: arg.numpy() for name, arg in zip(decl.inputs, args, strict=True)}
    try:
        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as exc:
        for path in dst.parent.glob(dst.name + "*"):
            path.unlink()
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        notes.append(f"{graph}: no fp16 .onnx (onnxruntime on CPU cannot run it: {reason})")
        return None
    return dst


def set_metadata(model: Any, meta: dict[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of an ONNX ModelProto."""
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for p in kept:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)


def openvino_int8(src: Path, dst: Path) -> Path:
    """INT8_ASYM weight compression of an ONNX graph with NNCF, saved as OpenVINO IR."""
    import nncf
    import openvino as ov

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = ov.convert_model(str(src))
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(model, str(dst), compress_to_fp16=False)
    except Exception as exc:
        raise ExportError(f"{src.name}: NNCF int8 weight compression failed: {exc}") from exc
    return dst
