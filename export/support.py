"""Support graphs shared by every voice: HuBERT content features, BERT text features, SV vector.

Graph signatures (dims named as in the manifest; D = the folder's hidden size):

``hubert``  wav16k float32 [batch, samples] → features float32 [batch, 768, frames]
    Raw 16 kHz waveform, no normalisation and no attention mask, as upstream
    (``TTS.py::_set_prompt_semantic`` calls ``HubertModel`` directly). frames ≈ samples / 320
    (conv front-end: floor((samples − 400) / 320) + 1). The feature extractor's GroupNorm
    normalises each item over its whole length, so batch items must not be padded: batch only
    equal-length clips (the runtime always runs batch 1).
``bert``    input_ids, attention_mask, token_type_ids int64 [batch, tokens]
            → hidden float32 [batch, tokens, 1024]
    ``hidden_states[-3]`` of chinese-roberta-wwm-ext-large (``TextPreprocessor.get_bert_feature``):
    the graph holds only the embeddings and the first 22 of 24 layers. Padded positions
    (mask 0) are masked as keys, exactly as transformers does.
``sv``      fbank float32 [batch, frames, 80] → sv float32 [batch, 20480]
    ERes2NetV2 ``forward3`` of upstream ``sv.py`` (see ``gsv_models.sv``).

Files: ``onnx/<graph>[-<precision>].onnx`` and ``openvino/<graph>[-<precision>].xml``; fp32 has
no suffix. The BERT tokenizer is copied to ``tokenizer/tokenizer.json``.

Precisions (``export_support_graphs(precisions=...)``):

* fp32: always written; the parity reference.
* fp16: OpenVINO ``compress_to_fp16`` (fp16 storage; compute follows the runtime's precision
  hint) and onnxruntime ``convert_float_to_float16`` with float32 I/O (fp16 compute). The .onnx
  variant is kept only if onnxruntime's CPU provider runs it (checked at export; else a note).
* int8: HuBERT and BERT only (weight-only; activations stay float). onnxruntime:
  ``quantize_dynamic`` of MatMul, per-channel int8 weights; OpenVINO: ``nncf.compress_weights``
  INT8_ASYM. The speaker model is convolutional and is kept in float (noted in info).
* bf16: OpenVINO only, the fp32 IR compiled with a bf16 inference hint (no file of its own;
  onnxruntime's CPU provider has no bf16 kernels).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor, nn

from gsv_export.graph_io import (
    ExportError,
    GraphDecl,
    export_onnx,
    tensor,
    to_openvino,
)
from gsv_export.parity import Check, ParityReport, relative_max_diff
from gsv_export.precision import onnx_fp16_if_runnable, onnx_int8, openvino_int8
from gsv_runtime.bundle import GraphFile, GraphSpec, sha256_file
from gsv_runtime.errors import InputError

_LOGGER = logging.getLogger(__name__)

SUPPORT_GRAPHS: Final = ("hubert", "bert", "sv")
SUPPORT_PRECISIONS: Final = ("fp32", "fp16", "bf16", "int8")
INT8_GRAPHS: Final = frozenset({"hubert", "bert"})
TOKENIZER_PATH: Final = "tokenizer/tokenizer.json"
"""Where the bundle keeps the BERT tokenizer (also recorded as ``text.tokenizer``)."""
BERT_MAX_CHARS: Final = 510
"""512 positions minus [CLS] and [SEP]; upstream splits longer texts before BERT."""
HUBERT_HOP: Final = 320
SSL_SAMPLE_RATE: Final = 16000
FORMATS: Final = ("onnx", "openvino")
FP32_LIMIT: Final = 1e-4
"""fp32 graphs (every declaration's ``atol``): max |torch − graph| / max |torch| per output."""


# ---------------------------------------------------------------------------------- declarations


def hubert_decl(dim: int) -> GraphDecl:
    """``hubert``: wav16k [batch, samples] → features [batch, dim, frames]."""
    return GraphDecl(
        "hubert",
        inputs={"wav16k": tensor("float32", "batch", "samples")},
        outputs={"features": tensor("float32", "batch", dim, "frames")},
        atol=FP32_LIMIT,
        metadata={"gsv.sample_rate": str(SSL_SAMPLE_RATE), "gsv.hop": str(HUBERT_HOP)},
    )


def bert_decl(dim: int) -> GraphDecl:
    """``bert``: ids, mask, token types [batch, tokens] → hidden [batch, tokens, dim]."""
    ids = tensor("int64", "batch", "tokens")
    return GraphDecl(
        "bert",
        inputs={"input_ids": ids, "attention_mask": ids, "token_type_ids": ids},
        outputs={"hidden": tensor("float32", "batch", "tokens", dim)},
        atol=FP32_LIMIT,
        metadata={"gsv.bert_layer": "-3"},
    )


def sv_decl(feat_dim: int, dim: int) -> GraphDecl:
    """``sv``: fbank [batch, frames, feat_dim] → sv [batch, dim]."""
    return GraphDecl(
        "sv",
        inputs={"fbank": tensor("float32", "batch", "frames", feat_dim)},
        outputs={"sv": tensor("float32", "batch", dim)},
        atol=FP32_LIMIT,
    )


# -------------------------------------------------------------------------------------- adapters


class HubertGraph(nn.Module):
    """HubertModel → [B, D, T] features (``last_hidden_state`` transposed, as SoVITS wants)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, wav16k: Tensor) -> Tensor:
        return self.model(wav16k).last_hidden_state.transpose(1, 2)  # (B, D, T)


def _plain_conv1d(conv: nn.Module) -> nn.Conv1d:
    """A plain Conv1d holding the effective (g · v / ‖v‖) weight of a weight-normed one."""
    if not isinstance(conv, nn.Conv1d):
        raise ExportError(f"cannot fold weight norm of a {type(conv).__name__}")
    plain = nn.Conv1d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        stride=conv.stride[0],
        padding=conv.padding[0],  # type: ignore[arg-type]
        dilation=conv.dilation[0],
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        plain.weight.copy_(conv.weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain.eval()


@contextmanager
def weight_norm_folded(module: nn.Module) -> Iterator[nn.Module]:
    """Swap every weight-normed Conv1d (HuBERT's positional conv) for a plain one, then restore.

    transformers ≥ 4.31 registers ``parametrizations.weight.original0/1`` on ``pos_conv_embed``;
    folding it keeps the norm out of the graph. The swap is undone on exit: removing the
    parametrization instead (even on a deep copy, which shares the generated
    ``ParametrizedConv1d`` class) would strip the ``weight`` property of the reference model too.
    """
    from torch.nn.utils import parametrize

    swaps = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if parametrize.is_parametrized(child, "weight")
    ]
    for parent, name, child in swaps:
        setattr(parent, name, _plain_conv1d(child))
    try:
        yield module
    finally:
        for parent, name, child in swaps:
            setattr(parent, name, child)


class BertGraph(nn.Module):
    """Embeddings + the first L−2 layers of a BertForMaskedLM: ``hidden_states[-3]`` directly.

    The additive key mask is built here ((1 − mask) · float32 min, broadcast over heads and
    queries), as transformers' eager attention does, so no data-dependent mask shortcut of
    ``create_bidirectional_mask`` ends up in the trace.
    """

    def __init__(self, mlm: nn.Module, layer: int = -3) -> None:
        super().__init__()
        bert = mlm.bert
        n_states = len(bert.encoder.layer) + 1  # embeddings + one per layer
        self.embeddings = bert.embeddings
        self.layers = nn.ModuleList(bert.encoder.layer[: n_states + layer])

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        h = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, D)
        keep = attention_mask[:, None, None, :].to(h.dtype)  # (B, 1, 1, T)
        mask = (1.0 - keep) * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h, mask)
        return h


# ------------------------------------------------------------------------------- torch models


@dataclass
class SupportModules:
    """The PyTorch reference networks (None where not exported) and where they came from."""

    hubert: nn.Module | None = None
    bert: nn.Module | None = None
    sv: nn.Module | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Manifest ``source`` entries: file names, sha256 and sizes (never absolute paths)."""


def _dir_source(folder: Path) -> dict[str, Any]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in {".bin", ".safetensors", ".json"}:
            files[path.name] = {"sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    return {"dir": folder.name, "files": files}


def load_support_modules(
    hubert_dir: str | Path | None, bert_dir: str | Path | None, sv_ckpt: str | Path | None
) -> SupportModules:
    """Load whichever support models are given (offline, float32, eval mode).

    Raises:
        CheckpointError: a folder or checkpoint that is missing, unsafe or of the wrong kind.
    """
    from gsv_models.load import load_model
    from gsv_models.support import load_bert, load_hubert

    mods = SupportModules()
    if hubert_dir is not None:
        mods.hubert = load_hubert(hubert_dir)
        mods.sources["hubert"] = _dir_source(Path(hubert_dir))
    if bert_dir is not None:
        mods.bert = load_bert(bert_dir)
        mods.sources["bert"] = _dir_source(Path(bert_dir))
    if sv_ckpt is not None:
        ckpt, mods.sv = load_model(sv_ckpt, kind="sv")
        mods.sources["sv"] = {
            "file": Path(sv_ckpt).name,
            "sha256": ckpt.sha256,
            "size_bytes": Path(sv_ckpt).stat().st_size,
        }
    return mods


# ------------------------------------------------------------------------- precision variants


def variant_stem(graph: str, precision: str) -> str:
    """``hubert`` for fp32, ``hubert-int8`` otherwise."""
    return graph if precision == "fp32" else f"{graph}-{precision}"


# ----------------------------------------------------------------------------------- export


def check_choices(formats: Sequence[str], precisions: Sequence[str]) -> None:
    bad_f = [f for f in formats if f not in FORMATS]
    if bad_f or not formats:
        raise InputError(f"formats must be among {', '.join(FORMATS)}; got {list(formats)}")
    bad_p = [p for p in precisions if p not in SUPPORT_PRECISIONS]
    if bad_p:
        raise InputError(
            f"support precisions must be among {', '.join(SUPPORT_PRECISIONS)}; got {bad_p}"
        )


def _trace_args(name: str, mods: SupportModules) -> tuple[nn.Module, tuple[Tensor, ...], GraphDecl]:
    """Adapter, example inputs and declaration of one graph."""
    gen = torch.Generator().manual_seed(0)
    if name == "hubert":
        assert mods.hubert is not None
        wav = 0.1 * torch.randn(1, 16000 + 1234, generator=gen)
        return HubertGraph(mods.hubert), (wav,), hubert_decl(mods.hubert.config.hidden_size)
    if name == "bert":
        assert mods.bert is not None
        ids = torch.randint(1, mods.bert.config.vocab_size, (2, 11), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0  # a padded row keeps the mask arithmetic in the trace
        types = torch.zeros_like(ids)
        return (
            BertGraph(mods.bert).eval(),
            (ids, mask, types),
            bert_decl(mods.bert.config.hidden_size),
        )
    assert mods.sv is not None
    fbank = torch.randn(1, 123, mods.sv.feat_dim, generator=gen) * 2.0 - 6.0
    return mods.sv.eval(), (fbank,), sv_decl(mods.sv.feat_dim, mods.sv.embed_dim)


def _write_variant(
    name: str,
    fmt: str,
    precision: str,
    fp32: Path,
    example: tuple[tuple[Tensor, ...], GraphDecl],
    notes: list[str],
) -> GraphFile | None:
    """Write one format × precision of a graph from its fp32 ONNX file (None: skipped)."""
    stem = variant_stem(name, precision)
    work_dir = fp32.parent.parent
    if precision == "bf16":  # a compile hint on the fp32 IR, which the fp32 pass wrote
        return GraphFile("openvino", "bf16", f"openvino/{name}.xml") if fmt == "openvino" else None
    if fmt == "onnx":
        path = work_dir / "onnx" / f"{stem}.onnx"
        if precision == "int8":
            onnx_int8(fp32, path, name)
        elif (
            precision == "fp16" and onnx_fp16_if_runnable(fp32, path, name, *example, notes) is None
        ):
            return None
        return GraphFile("onnx", precision, f"onnx/{stem}.onnx")  # type: ignore[arg-type]
    xml = work_dir / "openvino" / f"{stem}.xml"
    if precision == "int8":
        openvino_int8(fp32, xml)
    else:
        to_openvino(fp32, xml, fp16_weights=precision == "fp16")
    return GraphFile("openvino", precision, f"openvino/{stem}.xml")  # type: ignore[arg-type]


def _export_graph(
    name: str,
    mods: SupportModules,
    work_dir: Path,
    formats: Sequence[str],
    precisions: Sequence[str],
    notes: list[str],
    seconds: dict[str, float],
) -> GraphSpec:
    start = time.perf_counter()
    module, args, decl = _trace_args(name, mods)
    with weight_norm_folded(module):
        fp32 = export_onnx(module, args, decl, work_dir / "onnx" / f"{name}.onnx")
    seconds[f"{name}/trace"] = round(time.perf_counter() - start, 2)
    variants: list[GraphFile] = []
    for precision in ("fp32", *[p for p in precisions if p != "fp32"]):
        if precision == "int8" and name not in INT8_GRAPHS:
            notes.append(f"{name}: no int8 variant (convolutional network; kept in float)")
            continue
        for fmt in formats:
            start = time.perf_counter()
            variant = _write_variant(name, fmt, precision, fp32, (args, decl), notes)
            if variant is not None:
                variants.append(variant)
            seconds[f"{name}/{fmt}/{precision}"] = round(time.perf_counter() - start, 2)
    if "onnx" not in formats:  # the fp32 .onnx was only the route to OpenVINO
        for path in (work_dir / "onnx").glob(f"{name}.onnx*"):
            path.unlink()
    return decl.spec(variants)


def export_support_graphs(
    hubert_dir: str | Path | None,
    bert_dir: str | Path | None,
    sv_ckpt: str | Path | None,
    work_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    precisions: Sequence[str] = ("fp32",),
    modules: SupportModules | None = None,
) -> tuple[dict[str, GraphSpec], dict[str, Any]]:
    """Export the support graphs of the given sources into ``work_dir``.

    Args:
        hubert_dir: Local chinese-hubert-base folder (None: no ``hubert`` graph).
        bert_dir: Local chinese-roberta-wwm-ext-large folder (None: no ``bert`` graph).
        sv_ckpt: Upstream ERes2NetV2 checkpoint (``pretrained_eres2netv2w24s4ep4.ckpt``;
            None: no ``sv`` graph, as for v1/v2-only support bundles).
        work_dir: Bundle staging directory; files go to onnx/, openvino/ and tokenizer/.
        formats: Any of "onnx", "openvino".
        precisions: Any of "fp32" (always written), "fp16", "int8".
        modules: Already loaded models (from :func:`load_support_modules`); the paths are then
            used only to copy the tokenizer.

    Returns:
        (graph specs by name, info). ``info["text"]``, ``info["audio"]`` and ``info["source"]``
        are manifest sections; ``info["notes"]`` lists skipped variants; ``info["seconds"]``
        the export time per graph (``<graph>``) and per step (``<graph>/trace``,
        ``<graph>/<format>/<precision>``).

    Raises:
        ValueError: unknown format or precision, or no source given.
        CheckpointError: a source that cannot be loaded.
        ExportError: tracing, conversion or quantization failed.
    """
    check_choices(formats, precisions)
    if hubert_dir is None and bert_dir is None and sv_ckpt is None:
        raise ValueError("give at least one of hubert_dir, bert_dir, sv_ckpt")
    work_dir = Path(work_dir)
    mods = modules or load_support_modules(hubert_dir, bert_dir, sv_ckpt)
    present = {"hubert": mods.hubert, "bert": mods.bert, "sv": mods.sv}
    specs: dict[str, GraphSpec] = {}
    notes: list[str] = []
    seconds: dict[str, float] = {}
    for name in SUPPORT_GRAPHS:
        if present[name] is None:
            continue
        start = time.perf_counter()
        specs[name] = _export_graph(name, mods, work_dir, formats, precisions, notes, seconds)
        seconds[name] = round(time.perf_counter() - start, 2)
        _LOGGER.info("support graph %s exported in %.1f s", name, seconds[name])
    info = _info(mods, bert_dir, work_dir)
    info.update(notes=sorted(set(notes)), seconds=seconds)
    return specs, info


def _info(mods: SupportModules, bert_dir: str | Path | None, work_dir: Path) -> dict[str, Any]:
    text: dict[str, Any] = {}
    audio: dict[str, Any] = {}
    if mods.bert is not None:
        tokenizer = Path(bert_dir) / "tokenizer.json" if bert_dir is not None else None
        if tokenizer is None or not tokenizer.is_file():
            raise ValueError("the bert graph needs bert_dir (its tokenizer.json is bundled)")
        (work_dir / TOKENIZER_PATH).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer, work_dir / TOKENIZER_PATH)
        text = {
            "tokenizer": TOKENIZER_PATH,
            "bert_dim": mods.bert.config.hidden_size,
            "bert_layer": -3,
            "bert_max_chars": BERT_MAX_CHARS,
        }
    if mods.hubert is not None:
        audio.update(
            ssl_sample_rate=SSL_SAMPLE_RATE,
            ssl_hop=HUBERT_HOP,
            ssl_dim=mods.hubert.config.hidden_size,
        )
    if mods.sv is not None:
        audio.update(sv_sample_rate=16000, sv_feat_dim=mods.sv.feat_dim, sv_dim=mods.sv.embed_dim)
    return {"text": text, "audio": audio, "source": dict(mods.sources)}


# ------------------------------------------------------------------------------------ parity

COSINE_FLOORS: Final[dict[str, float]] = {
    "fp16": 0.999,
    "bf16": 0.995,
    "int8": 0.99,
    "sv/fp16": 0.995,
    "sv/bf16": 0.99,
}
"""Lower precisions: minimum cosine similarity of any single feature vector (one HuBERT frame,
one BERT token, one speaker vector) against torch fp32, by ``precision`` or ``graph/precision``.

Measured on full-size random weights: HuBERT fp16 ≥ 0.99999, int8 ≥ 0.9991; BERT fp16
≥ 0.99999, int8 ≥ 0.9974; SV fp16 ≥ 0.9973 (its BatchNorm-folded weights lose more to fp16
rounding, and the random 36-conv network amplifies it; its fp32 error is also 50× the others')."""


def _parity_feeds(name: str, mods: SupportModules) -> list[dict[str, np.ndarray]]:
    """A small shape grid per graph: batch 1 and 2, odd lengths, BERT with a padded row."""
    rng = np.random.default_rng(1234)
    if name == "hubert":
        feeds = []
        for batch, seconds in ((1, 1.37), (2, 0.83)):
            n = int(seconds * SSL_SAMPLE_RATE)
            t = np.arange(n) / SSL_SAMPLE_RATE
            f0 = rng.uniform(90, 260, (batch, 1))
            voiced = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
            wav = 0.2 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.normal(
                size=(batch, n)
            )
            if batch == 1:  # upstream's 0.6 s of trailing zeros
                wav = np.concatenate([wav, np.zeros((1, 9600))], axis=1)
            feeds.append({"wav16k": wav.astype(np.float32)})
        return feeds
    if name == "bert":
        assert mods.bert is not None
        vocab = mods.bert.config.vocab_size
        feeds = []
        for batch, tokens, pad in ((1, 9, 0), (2, 14, 4)):
            ids = rng.integers(106, vocab, (batch, tokens))
            ids[:, 0], ids[:, -1] = 101, 102  # [CLS] … [SEP]
            mask = np.ones((batch, tokens), np.int64)
            if pad:
                ids[-1, -pad:], mask[-1, -pad:] = 0, 0
            feeds.append(
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )
        return feeds
    assert mods.sv is not None
    from gsv_runtime.audio_features import SOVITS_SAMPLE_RATE, sv_fbank

    feeds = []
    for batch, seconds in ((1, 1.6), (2, 2.1)):  # fbank of a speech-like signal, as the SV sees
        rows = []
        for _ in range(batch):
            rows.append(sv_fbank(_speech_like(rng, seconds, SOVITS_SAMPLE_RATE)))
        frames = min(len(r) for r in rows)
        feeds.append({"fbank": np.stack([r[:frames] for r in rows]).astype(np.float32)})
    return feeds


def _speech_like(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """Harmonics of a wandering pitch, syllable-rate amplitude, a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 2.5 * t))
    return (0.2 * voiced * envelope + 0.01 * rng.normal(size=len(t))).astype(np.float32)


@torch.no_grad()
def _torch_outputs(name: str, mods: SupportModules, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from gsv_models.support import bert_hidden_states, hubert_features

    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    if name == "hubert":
        return hubert_features(mods.hubert, t["wav16k"]).numpy()
    if name == "bert":
        return bert_hidden_states(
            mods.bert, t["input_ids"], t["attention_mask"], t["token_type_ids"]
        ).numpy()
    assert mods.sv is not None
    return mods.sv.embed(t["fbank"]).numpy()


CONDITIONING_FACTOR: Final = 10.0
"""An fp32 graph passes within this multiple of torch fp32's own distance from fp64."""
CONDITIONING_CAP: Final = 0.05
"""…but never beyond this relative difference, so a wrong graph fails on any net."""


def _exact_outputs(
    name: str, mods: SupportModules, grid: list[dict[str, np.ndarray]], fp32: list[np.ndarray]
) -> tuple[float, list[np.ndarray]]:
    """The net in fp64 on the grid, and how far torch fp32 is from it (relative max
    difference): the rounding error the net's own conditioning causes, so a check against
    the fp64 answer judges the export, not the weights."""
    import copy

    module = {"hubert": mods.hubert, "bert": mods.bert, "sv": mods.sv}[name]
    doubled = SupportModules(**{name: copy.deepcopy(module).double()})  # type: ignore[arg-type]
    worst, exact = 0.0, []
    for feeds, ref in zip(grid, fp32, strict=True):
        wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
        exact.append(_torch_outputs(name, doubled, wide))
        worst = max(worst, relative_max_diff(exact[-1], ref))
    return worst, exact


def min_cosine(expected: np.ndarray, actual: np.ndarray, axis: int) -> float:
    """Smallest cosine similarity between corresponding vectors along ``axis``."""
    if expected.shape != actual.shape:
        return float("-inf")
    e = np.moveaxis(np.asarray(expected, np.float64), axis, -1).reshape(-1, expected.shape[axis])
    a = np.moveaxis(np.asarray(actual, np.float64), axis, -1).reshape(-1, expected.shape[axis])
    num = np.sum(e * a, axis=-1)
    den = np.linalg.norm(e, axis=-1) * np.linalg.norm(a, axis=-1)
    return float(np.min(num / np.maximum(den, 1e-30)))


_VECTOR_AXIS: Final = {"hubert": 1, "bert": -1, "sv": -1}
_BACKEND_OF_FORMAT: Final = {"onnx": "onnxruntime", "openvino": "openvino"}


def verify_support(
    work_dir: str | Path,
    specs: dict[str, GraphSpec],
    modules: SupportModules,
    backends: Sequence[str] = ("onnxruntime", "openvino"),
    floors: dict[str, float] | None = None,
) -> ParityReport:
    """Run every variant of every support graph on a shape grid and compare with torch fp32.

    fp32 variants: relative max difference ≤ the graph's ``atol`` (:data:`FP32_LIMIT`);
    fp16/int8: minimum per-vector cosine similarity ≥ ``floors`` (default
    :data:`COSINE_FLOORS`). The caller decides whether to ``raise_if_failed()``.
    """
    from gsv_runtime.backends import RunnerOptions, make_runner
    from gsv_runtime.variants import variant_options

    floors = {**COSINE_FLOORS, **(floors or {})}
    report = ParityReport()
    conditioning: dict[str, tuple[float, list[np.ndarray]]] = {}
    work_dir = Path(work_dir)
    for name, spec in specs.items():
        grid = _parity_feeds(name, modules)
        expected = [_torch_outputs(name, modules, feeds) for feeds in grid]
        (out_name,) = spec.outputs
        for variant in spec.variants:
            backend = _BACKEND_OF_FORMAT[variant.format]
            if backend not in backends:
                continue
            options = variant_options(backend, variant.precision, RunnerOptions())
            runner = make_runner(work_dir / variant.path, backend, options)  # type: ignore[arg-type]
            actual = [runner.run(feeds)[out_name] for feeds in grid]
            if variant.precision == "fp32" and name not in conditioning:
                conditioning[name] = _exact_outputs(name, modules, grid, expected)
            label = f"{name}/{backend}" + (
                "" if variant.precision == "fp32" else f"-{variant.precision}"
            )
            for i, (exp, act) in enumerate(zip(expected, actual, strict=True)):
                where = f"{label}[{'x'.join(map(str, exp.shape))}]"
                if variant.precision == "fp32":
                    # judged against the exact (fp64) answer, allowed what torch fp32 itself
                    # loses on these inputs ×10 (at least atol, at most CONDITIONING_CAP)
                    torch_error, exact = conditioning[name]
                    limit = min(max(spec.atol, CONDITIONING_FACTOR * torch_error), CONDITIONING_CAP)
                    value = relative_max_diff(exact[i], act)
                    report.add(Check(f"{where}/{out_name} vs fp64", value, limit))
                else:
                    cos = min_cosine(exp, act, _VECTOR_AXIS[name])
                    report.add(
                        Check(
                            f"{where}/{out_name} min cosine",
                            cos,
                            floors.get(f"{name}/{variant.precision}", floors[variant.precision]),
                            higher_is_better=True,
                        )
                    )
    return report
