"""Export the GPT (T2S) graphs: declarations, ONNX and OpenVINO files per precision.

Graph I/O (B = batch, S = padded prefix Sx + Sy, T = cache slots, V = vocab, nh × hs = heads):

``t2s_prefill`` (onnx)
    phones i64 [B, Sx], phone_lens i64 [B], bert f32 [B, Sx, 1024], prompt i64 [B, Sy],
    prompt_lens i64 [B] → logits f32 [B, V] (each row's last real position),
    present.{i}.key|value f32 [B, nh, S, hs]. Right padding: row i's slots [0, Lx_i + P_i).
``t2s_step`` (onnx; the canonical step, standard ops, opset 17; also compiles on OpenVINO)
    tokens i64 [B, 1], positions i64 [B] (audio position per row), mask f32 [B, 1, 1, T+1]
    (additive: 0 visible, −inf blocked), past_key_values.{i}.key|value f32 [B, nh, T, hs]
    → logits f32 [B, V], present.{i}.key|value f32 [B, nh, T+1, hs] (new slot appended).
``t2s_step_gqa`` (onnx, onnxruntime only: com.microsoft.GroupQueryAttention)
    tokens, positions as above, seqlens_k i32 [B] (each row's past length),
    total_sequence_length i32 [] (max seqlens_k + 1), past_key_values.{i}.* f32
    [B, nh, Tmax, hs] → logits, present.{i}.* [B, nh, Tmax, hs]: bind present to the past
    OrtValue and the op writes in place.
``t2s_step_gqa_kv16`` (onnx, onnxruntime only): ``t2s_step_gqa`` with float16 caches and the
    attention in float16 (Casts around the op): the form ORT-CUDA's kernel needs.
``t2s_prefix_embed`` (openvino): the t2s_prefill inputs → embeds f32 [B, S, D],
    mask f32 [B, 1, S, S].
``t2s_token_embed`` (openvino): tokens i64 [B, 1], positions i64 [B] → embeds f32 [B, 1, D].
``t2s_decoder`` (openvino, stateful): embeds f32 [B, s, D], mask f32 [B, 1, s, T+s],
    last i64 [B], beam_idx i32 [B] → logits f32 [B, V] at position ``last`` of each row;
    the state ``past_key_values.{i}.*`` (gathered by beam_idx) is the KV cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import torch

from gsv_export.gpt_wrappers import (
    GqaStepGraph,
    PrefillGraph,
    StepGraph,
    dummy_prefix,
    fix_gqa_nodes,
)
from gsv_export.graph_io import (
    FORMATS,
    PRECISIONS,
    ExportError,
    GraphDecl,
    export_onnx,
    save_onnx,
    tensor,
)
from gsv_export.precision import onnx_fp16, onnx_int8, onnx_int8_blockwise
from gsv_models.config import T2SConfig
from gsv_models.t2s import T2SModel
from gsv_runtime.bundle import GraphFile, GraphSpec, TensorSpec
from gsv_runtime.gpt.t2s import (
    DECODER,
    PREFILL,
    PREFIX_EMBED,
    STEP,
    STEP_GQA,
    STEP_GQA_KV16,
    TOKEN_EMBED,
    kv_names,
)

_LOGGER = logging.getLogger(__name__)

UNSUPPORTED: Final[dict[tuple[str, str], str]] = {
    ("onnx", "bf16"): "onnxruntime has no bf16 CPU kernels; use the openvino bf16 variant",
}
"""(format, precision) pairs that are skipped for every GPT graph, with the reason."""


def _kv(cfg: T2SConfig, which: str, seq: str, dtype: str = "float32") -> dict[str, TensorSpec]:
    hs = cfg.hidden_dim // cfg.n_head
    return {n: tensor(dtype, "batch", cfg.n_head, seq, hs) for n in kv_names(cfg.n_layer, which)}


def gpt_decls(cfg: T2SConfig) -> dict[str, GraphDecl]:
    """Every GPT graph's declaration for a model shape (see the module docstring)."""
    v, d = cfg.vocab_size, cfg.hidden_dim
    meta = {"gsv.eos": str(cfg.eos)}
    prefix_in = {
        "phones": tensor("int64", "batch", "phones"),
        "phone_lens": tensor("int64", "batch"),
        "bert": tensor("float32", "batch", "phones", cfg.bert_dim),
        "prompt": tensor("int64", "batch", "prompt"),
        "prompt_lens": tensor("int64", "batch"),
    }
    logits = {"logits": tensor("float32", "batch", v)}
    token_in = {"tokens": tensor("int64", "batch", 1), "positions": tensor("int64", "batch")}
    gqa_in = {
        **token_in,
        "seqlens_k": tensor("int32", "batch"),
        "total_sequence_length": tensor("int32"),
    }
    decls = [
        GraphDecl(PREFILL, prefix_in, {**logits, **_kv(cfg, "present", "prefix")}, metadata=meta),
        GraphDecl(
            STEP,
            {
                **token_in,
                "mask": tensor("float32", "batch", 1, 1, "total"),
                **_kv(cfg, "past", "past"),
            },
            {**logits, **_kv(cfg, "present", "total")},
            metadata=meta,
        ),
        GraphDecl(
            STEP_GQA,
            {**gqa_in, **_kv(cfg, "past", "max_len")},
            {**logits, **_kv(cfg, "present", "max_len")},
            metadata=meta,
        ),
        GraphDecl(
            STEP_GQA_KV16,
            {**gqa_in, **_kv(cfg, "past", "max_len", "float16")},
            {**logits, **_kv(cfg, "present", "max_len", "float16")},
            atol=2e-3,
            metadata=meta,
        ),
        GraphDecl(
            PREFIX_EMBED,
            prefix_in,
            {
                "embeds": tensor("float32", "batch", "prefix", d),
                "mask": tensor("float32", "batch", 1, "prefix", "prefix"),
            },
        ),
        GraphDecl(TOKEN_EMBED, token_in, {"embeds": tensor("float32", "batch", 1, d)}),
        GraphDecl(
            DECODER,
            {
                "embeds": tensor("float32", "batch", "seq", d),
                "mask": tensor("float32", "batch", 1, "seq", "total"),
                "last": tensor("int64", "batch"),
                "beam_idx": tensor("int32", "batch"),
            },
            logits,
            metadata={**meta, "gsv.state": ",".join(kv_names(cfg.n_layer, "past"))},
        ),
    ]
    return {decl.name: decl for decl in decls}


def _dummy_kv(cfg: T2SConfig, batch: int, slots: int, dtype: torch.dtype) -> list[torch.Tensor]:
    hs = cfg.hidden_dim // cfg.n_head
    return [torch.randn(batch, cfg.n_head, slots, hs).to(dtype) for _ in range(2 * cfg.n_layer)]


def _step_args(cfg: T2SConfig, gqa: bool, kv_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    b, past = 2, 9
    tokens = torch.tensor([[3], [7]])
    positions = torch.tensor([4, 3])
    if gqa:
        seqlens = torch.tensor([past - 1, past - 3], dtype=torch.int32)
        total = torch.tensor(past, dtype=torch.int32)
        return (tokens, positions, seqlens, total, *_dummy_kv(cfg, b, past + 4, kv_dtype))
    mask = torch.zeros(b, 1, 1, past + 1)
    mask[1, ..., past - 2 : past] = float("-inf")
    return (tokens, positions, mask, *_dummy_kv(cfg, b, past, kv_dtype))


def _name(graph: str, precision: str, suffix: str) -> str:
    return f"{graph}{'' if precision == 'fp32' else '-' + precision}{suffix}"


def _onnx_precision(src: Path, precision: str) -> Path:
    """Write the ``precision`` variant of an fp32 ONNX graph beside it.

    Raises:
        ExportError: quantization or conversion failed.
    """
    dst = src.with_name(_name(src.stem, precision, ".onnx"))
    if precision == "int8" and src.stem == PREFILL:
        return onnx_int8(src, dst, src.stem)
    if precision == "int8":  # single-token steps: fused blockwise int8 (see its docstring)
        return onnx_int8_blockwise(src, dst, src.stem)
    if precision == "fp16":
        return onnx_fp16(src, dst, src.stem)
    raise ExportError(f"{src.name}: no ONNX conversion to {precision}")


def _export_onnx_graphs(
    model: T2SModel,
    work_dir: Path,
    decls: dict[str, GraphDecl],
    precisions: Sequence[str],
    notes: list[str],
) -> dict[str, list[GraphFile]]:
    cfg = model.config
    out = work_dir / "onnx"
    files: dict[str, list[GraphFile]] = {}

    def add(graph: str, precision: str, path: Path) -> None:
        rel = path.relative_to(work_dir).as_posix()
        files.setdefault(graph, []).append(GraphFile("onnx", precision, rel))

    jobs: list[tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]] = [
        (PREFILL, PrefillGraph(model), dummy_prefix(cfg)),
        (STEP, StepGraph(model), _step_args(cfg, False, torch.float32)),
        (STEP_GQA, GqaStepGraph(model), _step_args(cfg, True, torch.float32)),
    ]
    for graph, module, args in jobs:
        path = export_onnx(module, args, decls[graph], out / f"{graph}.onnx")
        if graph == STEP_GQA:
            _finish_gqa(path)
        add(graph, "fp32", path)
        for precision in precisions:
            if precision == "fp32" or ("onnx", precision) in UNSUPPORTED:
                continue
            if graph == STEP_GQA and precision == "fp16":
                continue  # served by t2s_step_gqa_kv16 (float16 caches, in place)
            add(graph, precision, _onnx_precision(path, precision))
    if "fp16" in precisions:
        args = _step_args(cfg, True, torch.float16)
        decl = decls[STEP_GQA_KV16]
        path = export_onnx(GqaStepGraph(model, kv_half=True), args, decl, out / f"{decl.name}.onnx")
        _finish_gqa(path)
        # weights stay fp32: the graph's "fp16" is its float16 cache and attention
        add(STEP_GQA_KV16, "fp16", path)
        notes.append(
            "onnx fp16: prefill/step converted with fp32 I/O (float16 weights and math) for "
            "CUDA; onnxruntime CPU runs them but slower than fp32. t2s_step_gqa_kv16 keeps "
            "fp32 weights with float16 caches and attention (ORT-CUDA GQA needs float16)"
        )
    for precision in precisions:
        reason = UNSUPPORTED.get(("onnx", precision))
        if reason:
            notes.append(f"onnx {precision}: skipped ({reason})")
    return files


def _finish_gqa(path: Path) -> None:
    """Insert the empty key/value inputs of the traced GroupQueryAttention nodes."""
    import onnx

    model = onnx.load(str(path))
    if fix_gqa_nodes(model) == 0:
        raise ExportError(f"{path.name}: no GroupQueryAttention node was traced")
    save_onnx(model, path)


def export_gpt_graphs(
    model: T2SModel,
    work_dir: Path,
    formats: Sequence[str] = FORMATS,
    precisions: Sequence[str] = ("fp32",),
    notes: list[str] | None = None,
) -> dict[str, GraphSpec]:
    """Export the GPT graphs under ``work_dir`` (``onnx/…``, ``openvino/…``).

    Args:
        model: the reference model (eval mode, fp32).
        work_dir: bundle staging directory; returned paths are relative to it.
        formats: ``onnx`` and/or ``openvino``.
        precisions: any of fp32 (always exported), fp16, bf16, int8. Unsupported (format,
            precision) pairs are skipped, logged and appended to ``notes``.
        notes: collects one line per skipped variant or caveat.

    Returns:
        Manifest GraphSpecs by graph name.

    Raises:
        ValueError: an unknown format or precision.
        ExportError: a graph failed to export, convert or quantize.
    """
    notes = notes if notes is not None else []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    wanted = ["fp32", *(p for p in PRECISIONS if p in precisions and p != "fp32")]
    model = model.eval().float()
    decls = gpt_decls(model.config)
    files: dict[str, list[GraphFile]] = {}
    if "onnx" in formats:
        files.update(_export_onnx_graphs(model, work_dir, decls, wanted, notes))
    if "openvino" in formats:
        from gsv_export.gpt_openvino import export_openvino_graphs

        for graph, variants in export_openvino_graphs(model, work_dir, decls, wanted).items():
            files.setdefault(graph, []).extend(variants)
    for line in notes:
        _LOGGER.info("gpt export: %s", line)
    return {graph: decls[graph].spec(variants) for graph, variants in files.items()}


from gsv_export.gpt_verify import AGREEMENT_FLOORS, verify_gpt  # noqa: E402  (re-export)

__all__ = [
    "AGREEMENT_FLOORS",
    "UNSUPPORTED",
    "export_gpt_graphs",
    "gpt_decls",
    "verify_gpt",
]
