"""OpenVINO GPT graphs: the stateful, SDPA-fused ``t2s_decoder`` and its two embedding graphs.

The decoder is converted from torch (not from ONNX) so the IR keeps ScaledDotProductAttention:
OpenVINO does not re-fuse the attention pattern of an ONNX export. It is then made stateful the
way the CPU plugin's StatefulSDPAFusion expects (intel_cpu: ReadValue → Gather(beam_idx) →
Concat → SDPA, with the Assign fed by the Concat):

1. a ``beam_idx`` i32 [B] input and a Gather on axis 0 of every past K/V input;
2. ``apply_make_stateful_transformation`` (past input → ReadValue, present output → Assign);
3. each ReadValue gets an initializer, zeros [B of ``embeds``, nh, 0, hs]; without one the
   plugin refuses to compile ("contains less parent edges than 0").

Precisions: fp32 (f32 IR), fp16 (the IR's weights compressed to fp16), int8 (NNCF
INT8_ASYM weight compression), bf16 (the f32 IR; the runtime sets INFERENCE_PRECISION_HINT bf16).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsv_export.gpt_wrappers import (
    DecoderGraph,
    PrefixEmbedGraph,
    TokenEmbedGraph,
    dummy_prefix,
)
from gsv_export.graph_io import ExportError, GraphDecl, export_onnx, to_openvino
from gsv_export.precision import compress_int8
from gsv_models.t2s import T2SModel
from gsv_runtime.bundle import FORMAT_VERSION, GraphFile
from gsv_runtime.gpt.t2s import DECODER, PREFIX_EMBED, TOKEN_EMBED, kv_names


def export_embed_ir(
    module: torch.nn.Module, args: tuple[Any, ...], decl: GraphDecl, xml: Path
) -> Path:
    """Small OpenVINO-only graph: ONNX in a temporary directory (graph_io), then IR."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(module, args, decl, Path(tmp) / f"{decl.name}.onnx")
        to_openvino(onnx_path, xml)
    return xml


def convert_decoder(model: T2SModel) -> Any:
    """Torch → ov.Model of :class:`DecoderGraph` with named, dynamic inputs (not yet stateful)."""
    import openvino as ov

    cfg = model.config
    n, nh, d = cfg.n_layer, cfg.n_head, cfg.hidden_dim
    hs = d // nh
    b, s, past = 2, 3, 4
    example = (
        torch.randn(b, s, d),
        torch.zeros(b, 1, s, past + s),
        torch.tensor([s - 1, 0]),
        *(torch.randn(b, nh, past, hs) for _ in range(2 * n)),
    )
    shapes = [([-1, -1, d], ov.Type.f32), ([-1, 1, -1, -1], ov.Type.f32), ([-1], ov.Type.i64)]
    shapes += [([-1, nh, -1, hs], ov.Type.f32)] * (2 * n)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert_model traces with the deprecated torch.jit
        ov_model = ov.convert_model(
            DecoderGraph(model).eval(),
            example_input=example,
            input=[(ov.PartialShape(shape), kind) for shape, kind in shapes],
        )
    names = ["embeds", "mask", "last", *kv_names(n, "past")]
    for port, name in zip(ov_model.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, ["logits", *kv_names(n, "present")], strict=True):
        port.get_tensor().set_names({name})
    return ov_model


def make_stateful(ov_model: Any, n_layer: int, n_head: int, head_dim: int) -> Any:
    """Add beam_idx Gathers, turn past/present into state, give each ReadValue a zero init."""
    import openvino as ov
    import openvino.opset13 as op
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam = op.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    past = set(kv_names(n_layer, "past"))
    for param in ov_model.get_parameters():
        if param.output(0).get_any_name() in past:
            consumers = list(param.output(0).get_target_inputs())
            gathered = op.gather(param, beam, op.constant(np.int64(0)))
            for consumer in consumers:
                consumer.replace_source_output(gathered.output(0))
    ov_model.add_parameters([beam])
    pairs = dict(zip(kv_names(n_layer, "past"), kv_names(n_layer, "present"), strict=True))
    apply_make_stateful_transformation(ov_model, pairs)
    batch = op.gather(
        op.shape_of(ov_model.input("embeds"), "i64"),
        op.constant(np.array([0], np.int64)),
        op.constant(np.int64(0)),
    )
    rest = op.constant(np.array([n_head, 0, head_dim], np.int64))
    inits = 0
    for node in ov_model.get_ops():
        if node.get_type_name() == "ReadValue":
            shape = op.concat([batch, rest], 0)
            node.set_arguments([op.broadcast(op.constant(np.float32(0.0)), shape)])
            inits += 1
    if inits != 2 * n_layer:
        raise ExportError(f"{DECODER}: expected {2 * n_layer} states, made {inits}")
    ov_model.validate_nodes_and_infer_types()
    return ov_model


def _tag(ov_model: Any, decl: GraphDecl, precision: str) -> None:
    meta = {
        "gsv.graph": decl.name,
        "gsv.format_version": str(FORMAT_VERSION),
        "gsv.precision": precision,
        **decl.metadata,
    }
    for key, value in meta.items():
        ov_model.set_rt_info(value, ["gsv", key.removeprefix("gsv.")])


def export_openvino_graphs(
    model: T2SModel, work_dir: Path, decls: dict[str, GraphDecl], precisions: Sequence[str]
) -> dict[str, list[GraphFile]]:
    """Write ``openvino/t2s_prefix_embed.xml``, ``t2s_token_embed.xml`` and ``t2s_decoder*.xml``.

    Raises:
        ExportError: conversion or compression failed.
    """
    import openvino as ov

    out = work_dir / "openvino"
    rel = lambda p: p.relative_to(work_dir).as_posix()  # noqa: E731
    cfg = model.config
    files: dict[str, list[GraphFile]] = {}
    prefix_xml = export_embed_ir(
        PrefixEmbedGraph(model), dummy_prefix(cfg), decls[PREFIX_EMBED], out / f"{PREFIX_EMBED}.xml"
    )
    token_args = (torch.tensor([[3], [7]]), torch.tensor([4, 3]))
    token_xml = export_embed_ir(
        TokenEmbedGraph(model), token_args, decls[TOKEN_EMBED], out / f"{TOKEN_EMBED}.xml"
    )
    files[PREFIX_EMBED] = [GraphFile("openvino", "fp32", rel(prefix_xml))]
    files[TOKEN_EMBED] = [GraphFile("openvino", "fp32", rel(token_xml))]
    try:
        stateful = make_stateful(
            convert_decoder(model), cfg.n_layer, cfg.n_head, cfg.hidden_dim // cfg.n_head
        )
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{DECODER}: OpenVINO conversion failed: {exc}") from exc
    decl = decls[DECODER]
    variants: list[GraphFile] = []
    fp32_xml = out / f"{DECODER}.xml"
    for precision in precisions:
        if precision == "bf16":  # same IR, compiled with a bf16 hint
            variants.append(GraphFile("openvino", "bf16", rel(fp32_xml)))
            continue
        xml = out / (f"{DECODER}.xml" if precision == "fp32" else f"{DECODER}-{precision}.xml")
        try:
            variant = stateful.clone()
            if precision == "int8":
                variant = compress_int8(variant)
            _tag(variant, decl, precision)
            ov.save_model(variant, str(xml), compress_to_fp16=precision == "fp16")
        except Exception as exc:
            raise ExportError(f"{DECODER}: {precision} variant failed: {exc}") from exc
        variants.append(GraphFile("openvino", precision, rel(xml)))
    files[DECODER] = variants
    return files
