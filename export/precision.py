"""Lower-precision variants of an exported fp32 graph: ONNX int8/fp16 and OpenVINO int8.

One implementation for every exporter (GPT, SoVITS, support graphs).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from gsv_export.graph_io import ExportError, GraphDecl, save_onnx
from gsv_runtime.errors import first_line


def onnx_int8(src: Path, dst: Path, graph: str, keep_float: Sequence[str] = ()) -> Path:
    """Dynamic int8 quantization of every MatMul with a constant weight, per output channel,
    except the nodes named in ``keep_float``.

    Activation×activation MatMuls (attention) stay fp32.

    Raises:
        ExportError: the quantizer failed.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    extra: dict[str, Any] = {"MatMulConstBOnly": True}
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        out = Path(tmp) / dst.name
        try:
            quantize_dynamic(
                src,
                out,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                # 7-bit weights: without VNNI, ORT's AVX2 u8×s8 kernel saturates on full-range
                # weights (tiny GPT top-1 agreement 0.84 on an AVX2-only CPU vs 0.97 like this)
                reduce_range=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(keep_float),
                use_external_data_format=True,
                extra_options=extra,
            )
        except Exception as exc:
            raise ExportError(f"{src.name}: int8 quantization failed: {exc}") from exc
        model = onnx.load(str(out))
    set_metadata(model, {"gsv.graph": graph, "gsv.precision": "int8"})
    save_onnx(model, dst)
    return dst


def onnx_int8_blockwise(src: Path, dst: Path, graph: str, block: int = 128) -> Path:
    """Int8 weights in blocks of ``block`` input channels as MatMulNBits (symmetric; accuracy
    level 4: activations quantized to int8 per block inside the kernel, int8 dot products).

    For single-token decode graphs: one fused op per projection instead of
    DynamicQuantizeLinear + MatMulInteger + Cast + Mul (+ Add), and weights read once as int8.
    Measured (full-size v2 GPT step, batch 1, context ≈ 600, 2 threads, onnxruntime 1.32):
    6.3-6.4 ms vs 6.9-8.5 ms for :func:`onnx_int8`; at M ≈ 270 (prefill) it is the slower one
    (236-251 ms vs 131-193 ms), so prefill graphs keep :func:`onnx_int8`.

    Raises:
        ExportError: the quantizer failed.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    try:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(src)), bits=8, block_size=block, is_symmetric=True, accuracy_level=4
        )
        quantizer.process()
    except Exception as exc:
        raise ExportError(f"{src.name}: blockwise int8 quantization failed: {exc}") from exc
    model = quantizer.model.model
    set_metadata(model, {"gsv.graph": graph, "gsv.precision": "int8"})
    save_onnx(model, dst)
    return dst


def onnx_fp16(src: Path, dst: Path, graph: str) -> Path:
    """fp16 weights and compute with float32 graph inputs and outputs.

    Raises:
        ExportError: the conversion failed.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        OnnxModel(model).topological_sort()  # the converter appends its I/O casts at the end
    except Exception as exc:
        raise ExportError(f"{src.name}: fp16 conversion failed: {exc}") from exc
    set_metadata(model, {"gsv.graph": graph, "gsv.precision": "fp16"})
    save_onnx(model, dst)
    return dst


def onnx_fp16_if_runnable(
    src: Path,
    dst: Path,
    graph: str,
    args: tuple[Tensor, ...],
    decl: GraphDecl,
    notes: list[str],
) -> Path | None:
    """:func:`onnx_fp16`, kept only if onnxruntime's CPU provider runs it (kernels for some
    fp16 ops are missing in older onnxruntime builds); otherwise a note says why."""
    import onnxruntime as ort

    onnx_fp16(src, dst, graph)
    feeds = {name: arg.numpy() for name, arg in zip(decl.inputs, args, strict=True)}
    try:
        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as exc:
        for path in dst.parent.glob(dst.name + "*"):
            path.unlink()
        reason = first_line(exc)[:200]
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


def compress_int8(model: Any) -> Any:
    """NNCF INT8_ASYM weight compression of an OpenVINO model (activations stay float)."""
    import nncf

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def openvino_int8(src: Path, dst: Path) -> Path:
    """:func:`compress_int8` of an ONNX graph, saved as OpenVINO IR."""
    import openvino as ov

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = compress_int8(ov.convert_model(str(src)))
        ov.save_model(model, str(dst), compress_to_fp16=False)
    except Exception as exc:
        raise ExportError(f"{src.name}: NNCF int8 weight compression failed: {exc}") from exc
    return dst


def openvino_int8_static(
    src: Path, dst: Path, calibration: list[dict[str, Any]], keep_float: Sequence[str] = ()
) -> Path:
    """NNCF static int8 (weights and activations, transformer scheme) of an OpenVINO IR,
    calibrated on ``calibration`` feeds; the nodes named in ``keep_float`` (they must exist)
    and the operations it leaves float run at the compile hint's precision.

    Raises:
        ExportError: the quantizer failed.
    """
    import nncf
    import openvino as ov

    try:
        model = nncf.quantize(
            ov.Core().read_model(str(src)),
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=list(keep_float)),
        )
        ov.save_model(model, str(dst), compress_to_fp16=False)
    except Exception as exc:
        raise ExportError(f"{src.name}: NNCF int8 quantization failed: {exc}") from exc
    return dst
