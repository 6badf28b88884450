"""GPT (T2S) export: graphs, runtime sessions of every KV design, parity and precision floors.

Tiny random GPTs (2 layers × 64) for v1 and v2 phone tables; one export per version per run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from gsv_export.gpt import UNSUPPORTED, export_gpt_graphs, verify_gpt
from gsv_export.gpt_verify import (
    AGREEMENT_FLOORS,
    VERIFY_STEPS,
    run_greedy,
    teacher_forced,
    torch_reference,
    verify_batch,
)
from gsv_export.writer import write_manifest
from gsv_models.testing import random_t2s, t2s_config
from gsv_models.version import ModelVersion
from gsv_runtime.backends import RunnerOptions
from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import BackendError, InputError
from gsv_runtime.gpt.t2s import (
    DECODER,
    PREFILL,
    STEP,
    STEP_GQA,
    STEP_GQA_KV16,
    choose_design,
    load_t2s,
    open_t2s,
)

OPTIONS = RunnerOptions(threads=2)
DESIGNS = [("onnxruntime", "canonical"), ("onnxruntime", "gqa"), ("openvino", "stateful")]
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class Exported:
    """One tiny model, its bundle and its export notes."""

    def __init__(self, model: torch.nn.Module, bundle: Bundle, notes: list[str]) -> None:
        self.model = model
        self.bundle = bundle
        self.notes = notes


@pytest.fixture(scope="module", params=["v1", "v2"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    version = ModelVersion.parse(request.param)
    model = random_t2s(t2s_config(version, "tiny"), seed=3)
    root = tmp_path_factory.mktemp(f"gpt-{request.param}")
    notes: list[str] = []
    specs = export_gpt_graphs(model, root, ("onnx", "openvino"), PRECISIONS, notes)
    write_manifest(root, "voice", specs)
    return Exported(model, Bundle.load(root), notes)


def _rows(cfg_model: torch.nn.Module, text: list[int], prompt: list[int], seed: int = 5) -> dict:
    cfg = cfg_model.config
    g = torch.Generator().manual_seed(seed)
    b, sx, sy = len(text), max(text), max(prompt)
    return {
        "phones": torch.randint(0, cfg.phoneme_vocab_size, (b, sx), generator=g).numpy(),
        "phone_lens": np.array(text),
        "bert": torch.randn(b, sx, cfg.bert_dim, generator=g).numpy(),
        "prompt": torch.randint(0, cfg.eos, (b, sy), generator=g).numpy(),
        "prompt_lens": np.array(prompt),
    }


def _slice(inputs: dict, row: int) -> dict:
    """Row ``row`` alone, with its own (unpadded) lengths."""
    lx, ly = int(inputs["phone_lens"][row]), int(inputs["prompt_lens"][row])
    return {
        "phones": inputs["phones"][row : row + 1, :lx],
        "phone_lens": inputs["phone_lens"][row : row + 1],
        "bert": inputs["bert"][row : row + 1, :lx],
        "prompt": inputs["prompt"][row : row + 1, : max(ly, 1)],
        "prompt_lens": inputs["prompt_lens"][row : row + 1],
    }


def _prefill(session, inputs: dict) -> np.ndarray:
    i = inputs
    return session.prefill(i["phones"], i["phone_lens"], i["bert"], i["prompt"], i["prompt_lens"])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


# --- export -----------------------------------------------------------------------------------


def test_manifest_lists_every_design_and_precision(exported: Exported) -> None:
    graphs = exported.bundle.manifest.graphs
    assert {v.precision for v in graphs[STEP].variants} == {"fp32", "fp16", "int8"}
    assert {v.precision for v in graphs[STEP_GQA].variants} == {"fp32", "int8"}
    assert [v.precision for v in graphs[STEP_GQA_KV16].variants] == ["fp16"]
    assert {v.precision for v in graphs[DECODER].variants} == set(PRECISIONS)
    assert graphs[STEP_GQA_KV16].inputs["past_key_values.0.key"].dtype == "float16"
    # bf16 on OpenVINO is the f32 IR with a runtime hint; onnxruntime has no bf16 variant
    assert graphs[DECODER].variant("openvino", "bf16").path == "openvino/t2s_decoder.xml"
    assert any("bf16" in line for line in exported.notes)
    assert ("onnx", "bf16") in UNSUPPORTED


def test_canonical_step_uses_standard_ops_only(exported: Exported) -> None:
    import onnx

    model = onnx.load(str(exported.bundle.graph_path(STEP, "onnxruntime")))
    assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}
    assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [17]
    for node in model.graph.node:
        assert node.domain in ("", "ai.onnx"), node.op_type
        if node.op_type == "Squeeze":  # axis-less Squeeze breaks static rank downstream
            assert len(node.input) == 2, node.name
    assert any(node.op_type == "Concat" for node in model.graph.node)


def test_gqa_graph_has_empty_key_value_inputs(exported: Exported) -> None:
    import onnx

    model = onnx.load(str(exported.bundle.graph_path(STEP_GQA, "onnxruntime")))
    nodes = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(nodes) == exported.model.config.n_layer
    assert all(list(n.input)[1:3] == ["", ""] for n in nodes)


def test_int8_steps_are_blockwise_and_prefill_dynamic(exported: Exported) -> None:
    """The decode steps use fused blockwise int8 (faster at one token), the prefill dynamic
    per-channel int8 (faster at a few hundred positions); see gsv_export.precision."""
    import onnx

    def ops(graph: str) -> set[str]:
        path = exported.bundle.graph_path(graph, "onnxruntime", "int8")
        return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}

    for graph in (STEP, STEP_GQA):
        assert "MatMulNBits" in ops(graph) and "MatMulInteger" not in ops(graph), graph
    assert "MatMulInteger" in ops(PREFILL) and "MatMulNBits" not in ops(PREFILL)


def test_unknown_precision_is_refused(tmp_path: Path) -> None:
    model = random_t2s(t2s_config(ModelVersion.V2, "tiny"), seed=0)
    with pytest.raises(ValueError, match="int4"):
        export_gpt_graphs(model, tmp_path, ("onnx",), ("fp32", "int4"))


# --- parity -----------------------------------------------------------------------------------


def test_verify_gpt_passes(exported: Exported) -> None:
    """fp32 logits ≤ 1e-4, 300-token greedy identity on all designs, precision floors."""
    report = verify_gpt(
        exported.bundle.root, exported.bundle.manifest.graphs, exported.model, options=OPTIONS
    )
    report.raise_if_failed()
    names = {c.name for c in report.checks}
    for design in ("canonical/onnxruntime", "gqa/onnxruntime", "stateful/openvino"):
        assert f"{design}/fp32/greedy_mismatches" in names
        assert f"{design}/int8/top1_agreement" in names
    assert "stateful/openvino/bf16/top1_agreement" in names
    assert "gqa/onnxruntime/fp16/top1_agreement" in names


def test_floors_fail_broken_variants() -> None:
    """Every top-1 agreement floor rejects a naively quantized GPT (8-bit per-tensor weights,
    the kind of export a wrong scale or granularity gives) and another checkpoint."""
    import copy

    model = random_t2s(t2s_config(ModelVersion.V2, "tiny"), seed=3)
    inputs = verify_batch(model)
    ref = torch_reference(model, inputs, VERIFY_STEPS)
    eos = model.config.eos

    def agreement(candidate: torch.nn.Module) -> float:
        logits, _ = teacher_forced(candidate, inputs, ref.tokens)
        return float(np.mean(ref.logits[..., :eos].argmax(-1) == logits[..., :eos].argmax(-1)))

    naive = copy.deepcopy(model)
    with torch.no_grad():
        for layer in naive.modules():
            if isinstance(layer, torch.nn.Linear):
                scale = layer.weight.abs().max() / 127
                layer.weight.copy_((layer.weight / scale).round() * scale)
    other = random_t2s(t2s_config(ModelVersion.V2, "tiny"), seed=4)
    assert agreement(model) == 1.0
    assert agreement(naive) < min(AGREEMENT_FLOORS.values())
    assert agreement(other) < 0.1


@pytest.mark.parametrize(("backend", "design"), DESIGNS)
def test_batch_matches_rows_alone_and_keep(exported: Exported, backend: str, design: str) -> None:
    """Rows of different lengths decode in one batch exactly as alone; keep() drops rows."""
    inputs = _rows(exported.model, text=[9, 4, 7], prompt=[3, 6, 0])
    tokens = np.random.default_rng(0).integers(0, 1024, (3, 8))
    batch = open_t2s(exported.bundle, backend, OPTIONS, design=design)  # type: ignore[arg-type]
    assert batch.design == design
    got = [_prefill(batch, inputs)]
    for t in range(3):
        got.append(batch.step(tokens[:, t]))
    batch.keep([2, 0])  # row 1 finished; continue rows 2 and 0 in that order
    assert batch.batch == 2
    for t in range(3, 8):
        got.append(batch.step(tokens[[2, 0], t]))
    for row in range(3):
        alone = open_t2s(exported.bundle, backend, OPTIONS, design=design)  # type: ignore[arg-type]
        want = [_prefill(alone, _slice(inputs, row))]
        want += [alone.step(tokens[row : row + 1, t]) for t in range(8 if row != 1 else 3)]
        for t, w in enumerate(want):
            b = got[t][row] if t <= 3 else got[t][[2, 0].index(row)]
            assert _rel(w[0], b) < 1e-5, (row, t)


@pytest.mark.parametrize(("backend", "design"), DESIGNS)
def test_ref_free_prefill_matches_torch(exported: Exported, backend: str, design: str) -> None:
    inputs = _rows(exported.model, text=[6, 3], prompt=[1, 1])
    session = open_t2s(exported.bundle, backend, OPTIONS, design=design)  # type: ignore[arg-type]
    got = session.prefill(inputs["phones"], inputs["phone_lens"], inputs["bert"], None, None)
    with torch.no_grad():
        want = exported.model.prefill(
            torch.from_numpy(inputs["phones"]),
            torch.from_numpy(inputs["phone_lens"]),
            torch.from_numpy(inputs["bert"]),
        )[0].numpy()
    assert _rel(want, got) < 1e-5


def test_second_batch_on_a_session_starts_clean(exported: Exported) -> None:
    """A session is reusable: prefill resets the KV of every design."""
    inputs = verify_batch(exported.model)
    ref = torch_reference(exported.model, inputs, 12)
    for backend, design in DESIGNS:
        session = open_t2s(exported.bundle, backend, OPTIONS, design=design)  # type: ignore[arg-type]
        first = run_greedy(session, inputs, 12, exported.model.config.eos)
        second = run_greedy(session, inputs, 12, exported.model.config.eos)
        np.testing.assert_array_equal(first, ref.tokens)
        np.testing.assert_array_equal(second, ref.tokens)


# --- runtime behaviour ------------------------------------------------------------------------


def test_design_choice(exported: Exported) -> None:
    b = exported.bundle
    assert choose_design(b, "onnxruntime", "cpu", "fp32") == "gqa"
    assert choose_design(b, "onnxruntime", "cpu", "fp16") == "gqa"  # t2s_step_gqa_kv16
    assert choose_design(b, "onnxruntime", "cuda", "fp32") == "canonical"
    assert choose_design(b, "onnxruntime", "cuda", "fp16") == "gqa"
    assert choose_design(b, "openvino", "cpu", "int8") == "stateful"


def test_gqa_cache_overflow_is_an_input_error(exported: Exported) -> None:
    session = load_t2s(
        exported.bundle, "onnxruntime", OPTIONS, design="gqa", max_tokens=2
    ).session()
    inputs = _rows(exported.model, text=[4], prompt=[2])
    _prefill(session, inputs)
    session.step(np.array([1]))
    session.step(np.array([2]))
    with pytest.raises(InputError, match="max_tokens"):
        session.step(np.array([3]))


def test_bad_calls_are_input_errors(exported: Exported) -> None:
    b = exported.bundle
    with pytest.raises(InputError, match="design"):
        load_t2s(b, "onnxruntime", OPTIONS, design="paged")
    with pytest.raises(InputError, match="openvino"):
        load_t2s(b, "onnxruntime", OPTIONS, design="stateful")
    session = open_t2s(b, "onnxruntime", OPTIONS)
    with pytest.raises(InputError, match="prefill"):
        session.step(np.array([1]))
    inputs = _rows(exported.model, text=[4, 2], prompt=[2, 2])
    _prefill(session, inputs)
    with pytest.raises(InputError, match="one per running row"):
        session.step(np.array([1]))
    with pytest.raises(InputError, match="distinct"):
        session.keep([0, 0])
    with pytest.raises(InputError, match="phone_lens"):
        session.prefill(inputs["phones"], np.array([5, 2]), inputs["bert"], None, None)


def test_cuda_without_provider_is_a_backend_error(exported: Exported) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendError, match="CUDA"):
        open_t2s(exported.bundle, "onnxruntime", RunnerOptions(device="cuda"), "fp16")


def test_unfused_openvino_graph_is_refused(exported: Exported) -> None:
    """The fusion check fails loudly on a graph whose KV path is a Concat (the ONNX step)."""
    import openvino as ov

    from gsv_runtime.gpt.t2s_ov import check_stateful_fusion

    path = exported.bundle.graph_path(STEP, "onnxruntime")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    with pytest.raises(BackendError, match="did not fuse"):
        check_stateful_fusion(compiled, exported.model.config.n_layer)


def test_runtime_sessions_do_not_import_torch() -> None:
    code = (
        "import sys, gsv_runtime.gpt.t2s, gsv_runtime.gpt.t2s_ort, gsv_runtime.gpt.t2s_ov; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prefill_graph_is_batch_and_length_dynamic(exported: Exported) -> None:
    """One prefill graph serves any batch and lengths (traced shapes are not baked in)."""
    from gsv_runtime.backends import make_runner

    runner = make_runner(exported.bundle.graph_path(PREFILL, "onnxruntime"), "onnxruntime", OPTIONS)
    inputs = _rows(exported.model, text=[17, 11, 2, 5], prompt=[13, 1, 7, 4], seed=9)
    got = runner.run(inputs)
    with torch.no_grad():
        want = exported.model.prefill(*(torch.from_numpy(inputs[k]) for k in inputs))[0].numpy()
    assert _rel(want, got["logits"]) < 1e-5
