"""GPT (T2S) decode sessions: one host-side interface over every exported KV-cache design.

A :class:`T2SSession` holds one batch of requests: ``prefill`` runs the right-padded prefix and
returns each row's next-token logits, ``step`` feeds one token per row, ``keep`` drops finished
rows. Sampling is not done here (see ``gsv_runtime.gpt.sampling``). The designs, chosen by
:func:`load_t2s` from what the bundle holds and the backend (timings: ``gsv_bench.kv_step``):

``gqa`` (onnxruntime)
    ``t2s_prefill`` + ``t2s_step_gqa``: com.microsoft.GroupQueryAttention on a preallocated
    [B, nh, Tmax, hs] cache per layer; ``present`` is bound to the same OrtValue as ``past`` so
    the op writes each row's new K/V in place at that row's own length (``seqlens_k``).
``canonical`` (onnxruntime, or OpenVINO without the stateful IR)
    ``t2s_prefill`` + ``t2s_step``: explicit past → present (Concat) with an additive mask; the
    reference design, standard ops only. KV stays on the device between steps (IOBinding).
``stateful`` (OpenVINO)
    ``t2s_prefix_embed`` + ``t2s_token_embed`` + the stateful ``t2s_decoder``: the CPU plugin
    keeps the KV itself (fused ScaledDotProductAttention with cache); prefill and steps run the
    same compiled graph, so the prefill writes the state directly (no ``set_state``).

Slot layout (all designs): row i's prefix fills slots [0, L_i) with L_i = phones_i + prompt_i;
its decode step t feeds its token at audio position ``prompt_i + t``. ``gqa`` writes it at slot
``L_i + t`` (rows contiguous, each row in a slot of a preallocated pool); ``canonical`` and
``stateful`` append one slot per step for every row and mask, per row, the slots it does not own
(the padding of its prefix, slots from before it joined). Rows can join a running batch
(:meth:`T2SSession.join`) and leave it (:meth:`T2SSession.keep`) at any step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from gsv_runtime.backends import BackendName, RunnerOptions
from gsv_runtime.bundle import Bundle, GraphSpec
from gsv_runtime.errors import BundleError, InputError

_LOGGER = logging.getLogger(__name__)

PREFILL: Final = "t2s_prefill"
STEP: Final = "t2s_step"
STEP_GQA: Final = "t2s_step_gqa"
STEP_GQA_KV16: Final = "t2s_step_gqa_kv16"
"""GQA step with float16 caches and attention (the form ORT-CUDA's kernel needs)."""
PREFIX_EMBED: Final = "t2s_prefix_embed"
TOKEN_EMBED: Final = "t2s_token_embed"
DECODER: Final = "t2s_decoder"
"""OpenVINO stateful decoder (prefill and steps); KV lives in the infer request's state."""

DESIGNS: Final = ("gqa", "canonical", "stateful")
MAX_POSITIONS: Final = 4000
"""Rows of the graphs' sinusoidal tables (``gsv_models.t2s.DEFAULT_MAX_POSITIONS``): the
longest phone sequence, and the last audio position (prompt + decoded tokens) + 1."""
DEFAULT_MAX_TOKENS: Final = 1500
"""Decode steps a GQA cache is sized for, beyond the prefix (upstream's hard cap)."""
NEG_INF: Final = np.float32(-np.inf)

OV_PRECISION: Final[dict[str, tuple[str, str]]] = {
    "fp32": ("f32", "f32"),
    "fp16": ("f32", "f32"),
    "bf16": ("bf16", "bf16"),
    "int8": ("f32", "u8"),
}
"""OpenVINO (INFERENCE_PRECISION_HINT, KV_CACHE_PRECISION) per bundle precision. fp16 IRs hold
fp16 weights decompressed at load; bf16 uses the f32 IR with a bf16 hint."""


def past_name(layer: int, kind: str) -> str:
    """Step input name of one layer's cache: ``past_key_values.{i}.key|value``."""
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    """Output name of one layer's cache: ``present.{i}.key|value``."""
    return f"present.{layer}.{kind}"


def kv_names(n_layer: int, prefix: str) -> list[str]:
    """``[k0, v0, k1, v1, …]`` names for ``past`` or ``present``."""
    name = past_name if prefix == "past" else present_name
    return [name(i, kind) for i in range(n_layer) for kind in ("key", "value")]


class T2SSession(Protocol):
    """One batch of decoding rows; every design implements this."""

    design: str

    @property
    def batch(self) -> int:
        """Rows currently decoding."""
        ...

    def prefill(
        self,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None,
        prompt_lens: np.ndarray | None,
    ) -> np.ndarray:
        """Start a batch: right-padded prefix → float32 logits [B, V] of each row's next token."""
        ...

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row ([B] ids) → logits [B, V]."""
        ...

    def keep(self, rows: Sequence[int] | np.ndarray) -> None:
        """Continue with only ``rows`` (indices into the current batch, in that order)."""
        ...

    def join(
        self,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None,
        prompt_lens: np.ndarray | None,
    ) -> np.ndarray:
        """Prefill new rows and append them after the running ones (continuous batching).

        The running rows' caches are kept as they are; on an empty session this is
        :meth:`prefill`. Returns the new rows' next-token logits [b, V].
        """
        ...


@dataclass
class PrefixBatch:
    """Checked, normalised prefill inputs (a ref-free batch gets one dummy prompt column)."""

    phones: np.ndarray
    phone_lens: np.ndarray
    bert: np.ndarray
    prompt: np.ndarray
    prompt_lens: np.ndarray

    @classmethod
    def build(
        cls,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None,
        prompt_lens: np.ndarray | None,
    ) -> PrefixBatch:
        """Validate shapes and lengths.

        Raises:
            InputError: naming the first inconsistent argument.
        """
        phones = np.ascontiguousarray(phones, dtype=np.int64)
        if phones.ndim != 2 or phones.shape[1] == 0:
            raise InputError(f"phones must be [B, Sx] with Sx >= 1, got shape {phones.shape}")
        b, sx = phones.shape
        lens = np.ascontiguousarray(phone_lens, dtype=np.int64).reshape(-1)
        if lens.shape != (b,) or lens.min() < 1 or lens.max() > sx:
            raise InputError(f"phone_lens must be {b} values in [1, {sx}], got {lens.tolist()}")
        bert = np.ascontiguousarray(bert, dtype=np.float32)
        if bert.ndim != 3 or bert.shape[:2] != (b, sx):
            raise InputError(
                f"bert must be [B, Sx, bert_dim] with B, Sx = {b, sx}, got {bert.shape}"
            )
        if prompt is None or np.asarray(prompt).size == 0:
            prompt = np.zeros((b, 1), np.int64)
            prompt_lens = np.zeros(b, np.int64)
        prompt = np.ascontiguousarray(prompt, dtype=np.int64)
        if prompt.ndim != 2 or prompt.shape[0] != b:
            raise InputError(f"prompt must be [B, Sy] with B = {b}, got shape {prompt.shape}")
        sy = prompt.shape[1]
        plens = (
            np.full(b, sy, np.int64)
            if prompt_lens is None
            else np.ascontiguousarray(prompt_lens, dtype=np.int64).reshape(-1)
        )
        if plens.shape != (b,) or plens.min() < 0 or plens.max() > sy:
            raise InputError(f"prompt_lens must be {b} values in [0, {sy}], got {plens.tolist()}")
        if max(sx, sy) > MAX_POSITIONS:
            raise InputError(f"phones and prompt must be at most {MAX_POSITIONS} long each")
        return cls(phones, lens, bert, prompt, plens)

    def feed(self) -> dict[str, np.ndarray]:
        """The prefill/prefix-embed graph inputs by name."""
        return {
            "phones": self.phones,
            "phone_lens": self.phone_lens,
            "bert": self.bert,
            "prompt": self.prompt,
            "prompt_lens": self.prompt_lens,
        }

    @property
    def width(self) -> int:
        """Padded prefix length S = Sx + Sy."""
        return self.phones.shape[1] + self.prompt.shape[1]


class RowState:
    """Per-row bookkeeping shared by the designs: lengths, positions, visible slots, compaction.

    Every row carries its own step count, so rows that joined the batch at different times (see
    :meth:`T2SSession.join`) feed their tokens at their own audio positions. ``visible`` marks
    the cache slots each row attends in the appending designs (``canonical``, ``stateful``),
    where every step appends one slot for all rows; ``gqa`` keeps each row contiguous instead.
    """

    def __init__(self, batch: PrefixBatch, max_positions: int = MAX_POSITIONS) -> None:
        self.lens = batch.phone_lens + batch.prompt_lens  # (B,) real prefix slots
        self.prompt_lens = batch.prompt_lens.copy()
        self.steps = np.zeros(len(self.lens), np.int64)  # tokens fed so far, per row
        self.max_positions = max_positions
        slots = np.arange(batch.width)
        self.visible = slots[None, :] < self.lens[:, None]  # (B, W) attended cache slots

    @property
    def batch(self) -> int:
        return int(self.lens.shape[0])

    @property
    def width(self) -> int:
        """Cache slots of the appending designs (prefix slots + appended ones)."""
        return int(self.visible.shape[1])

    def positions(self) -> np.ndarray:
        """Audio position of the token fed now, [B] int64."""
        pos = self.prompt_lens + self.steps
        if int(pos.max()) >= self.max_positions:
            raise InputError(
                f"audio position {int(pos.max())} is beyond the {self.max_positions}-row "
                "position table (prompt + decoded tokens too long)"
            )
        return pos

    def append_mask(self) -> np.ndarray:
        """Additive mask [B, 1, 1, W + 1] of an appending step: visible slots and the new one."""
        visible = np.concatenate([self.visible, np.ones((self.batch, 1), bool)], axis=1)
        mask = np.where(visible, np.float32(0), NEG_INF).astype(np.float32)
        return mask.reshape(self.batch, 1, 1, self.width + 1)

    def appended(self) -> None:
        """Every row fed one token into a new slot at the end of the cache."""
        self.visible = np.concatenate([self.visible, np.ones((self.batch, 1), bool)], axis=1)
        self.steps += 1

    def keep(self, rows: np.ndarray) -> None:
        self.lens = self.lens[rows]
        self.prompt_lens = self.prompt_lens[rows]
        self.steps = self.steps[rows]
        self.visible = self.visible[rows]

    def extend(self, other: RowState) -> None:
        """Append ``other``'s rows (a fresh prefill) after this batch's rows; both widen to
        the larger width, the added slots invisible."""
        width = max(self.width, other.width)
        self.lens = np.concatenate([self.lens, other.lens])
        self.prompt_lens = np.concatenate([self.prompt_lens, other.prompt_lens])
        self.steps = np.concatenate([self.steps, other.steps])
        self.visible = np.concatenate(
            [_widen(self.visible, width), _widen(other.visible, width)], axis=0
        )


def _widen(visible: np.ndarray, width: int) -> np.ndarray:
    pad = np.zeros((visible.shape[0], width - visible.shape[1]), bool)
    return np.concatenate([visible, pad], axis=1)


def widen_cache(kv: np.ndarray, width: int) -> np.ndarray:
    """``[B, nh, S, hs]`` → ``[B, nh, width, hs]``, zeros in the added (invisible) slots."""
    if kv.shape[2] == width:
        return kv
    out = np.zeros((*kv.shape[:2], width, kv.shape[3]), kv.dtype)
    out[:, :, : kv.shape[2]] = kv
    return out


class RowTracking:
    """Row bookkeeping every session design shares: the rows after prefill, and the guard."""

    _rows: RowState | None = None

    @property
    def batch(self) -> int:
        """Rows currently decoding."""
        return 0 if self._rows is None else self._rows.batch

    def _state(self) -> RowState:
        if self._rows is None:
            raise InputError("call prefill() before step() or keep()")
        return self._rows

    def reset(self) -> None:
        """Drop every row (and its cache)."""
        raise NotImplementedError

    def join(self, *prefix: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def prefill(
        self,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None = None,
        prompt_lens: np.ndarray | None = None,
    ) -> np.ndarray:
        """Start a new batch: every design is :meth:`reset` then :meth:`join`."""
        self.reset()
        return self.join(phones, phone_lens, bert, prompt, prompt_lens)


def as_rows(rows: Sequence[int] | np.ndarray, batch: int) -> np.ndarray:
    """Validated int64 row indices (empty: every row leaves).

    Raises:
        InputError: out of range or repeated.
    """
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        return idx
    if idx.min() < 0 or idx.max() >= batch or len(set(idx.tolist())) != idx.size:
        raise InputError(f"rows must be distinct indices in [0, {batch}), got {idx.tolist()}")
    return idx


def as_tokens(tokens: np.ndarray, batch: int) -> np.ndarray:
    """[B] or [B, 1] ids → [B, 1] int64.

    Raises:
        InputError: wrong row count.
    """
    tok = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1)
    if tok.shape[0] != batch:
        raise InputError(f"step needs {batch} tokens (one per running row), got {tok.shape[0]}")
    return tok


def layer_count(spec: GraphSpec) -> int:
    """Number of layers, from a step graph's ``past_key_values.*`` inputs."""
    return sum(1 for name in spec.inputs if name.startswith("past_key_values.")) // 2


@dataclass(frozen=True)
class T2SDecoder:
    """Compiled graphs of one design; :meth:`session` starts an independent batch.

    Sessions share the compiled graphs and hold all per-request state themselves. Load one
    decoder per worker thread: the OpenVINO embedding graphs keep a single infer request each.
    """

    design: str
    backend: BackendName
    precision: str
    factory: Any
    """Callable that builds a fresh session (design-specific)."""

    def session(self) -> T2SSession:
        """A new, empty session."""
        return self.factory()  # type: ignore[no-any-return]


def _has(bundle: Bundle, graph: str, fmt: str, precision: str) -> bool:
    spec = bundle.manifest.graphs.get(graph)
    return spec is not None and spec.variant(fmt, precision) is not None  # type: ignore[arg-type]


def choose_design(bundle: Bundle, backend: BackendName, device: str, precision: str) -> str:
    """The fastest design the bundle supports for this backend, device and precision."""
    if backend == "openvino":
        if _has(bundle, DECODER, "openvino", precision):
            return "stateful"
        return "canonical"
    # ORT-CUDA's GroupQueryAttention kernel is float16-only: fp32/int8 on CUDA stay canonical
    gqa = STEP_GQA_KV16 if precision == "fp16" else STEP_GQA
    if device.startswith("cuda") and gqa == STEP_GQA:
        return "canonical"
    gqa_precision = "fp16" if gqa == STEP_GQA_KV16 else precision
    if _has(bundle, gqa, "onnx", gqa_precision) and _has(bundle, PREFILL, "onnx", precision):
        return "gqa"
    return "canonical"


def load_t2s(
    bundle: Bundle,
    backend: BackendName = "onnxruntime",
    options: RunnerOptions | None = None,
    precision: str = "fp32",
    *,
    design: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    kv_precision: str | None = None,
) -> T2SDecoder:
    """Compile the GPT graphs of ``bundle`` for one design.

    Args:
        bundle: a bundle with the t2s graphs.
        backend: ``onnxruntime`` or ``openvino``.
        options: device and threads. KV stays on the device between steps (CUDA included).
        precision: fp32, fp16, bf16 (OpenVINO only) or int8. On onnxruntime, fp16 means the
            fp16 prefill with the float16-KV GQA step (``t2s_step_gqa_kv16``); ORT-CUDA's GQA
            kernel is float16-only, so fp32 and int8 on CUDA use the canonical step.
        design: force ``gqa``, ``canonical`` or ``stateful``; None picks :func:`choose_design`.
        max_tokens: decode steps a GQA cache holds beyond the prefix.
        kv_precision: OpenVINO KV_CACHE_PRECISION override (f32, bf16, u8).

    Raises:
        BundleError: the bundle lacks the graphs of that design and precision.
        BackendError: the backend or device is unavailable, or OpenVINO did not fuse the cache.
        InputError: an unknown design.
    """
    options = options or RunnerOptions()
    device = options.device.lower()
    chosen = design or choose_design(bundle, backend, device, precision)
    if chosen not in DESIGNS:
        raise InputError(f"unknown t2s design {chosen!r}; accepted: {', '.join(DESIGNS)}")
    if chosen == "stateful":
        if backend != "openvino":
            raise InputError("the stateful design needs the openvino backend")
        from gsv_runtime.gpt.t2s_ov import load_stateful

        factory = load_stateful(bundle, options, precision, kv_precision)
    elif chosen == "gqa":
        if backend != "onnxruntime":
            raise InputError("the gqa design needs the onnxruntime backend")
        from gsv_runtime.gpt.t2s_ort import load_gqa

        factory = load_gqa(bundle, options, precision, max_tokens)
    else:
        from gsv_runtime.gpt.t2s_ort import load_canonical

        factory = load_canonical(bundle, backend, options, precision)
    _LOGGER.debug("t2s: %s design on %s %s (%s)", chosen, backend, device, precision)
    return T2SDecoder(chosen, backend, precision, factory)


def open_t2s(
    bundle: Bundle,
    backend: BackendName = "onnxruntime",
    options: RunnerOptions | None = None,
    precision: str = "fp32",
    **kwargs: Any,
) -> T2SSession:
    """One session of :func:`load_t2s`'s decoder (for a single batch; load once to share)."""
    return load_t2s(bundle, backend, options, precision, **kwargs).session()


def graph_file(bundle: Bundle, graph: str, backend: str, precision: str) -> Path:
    """``bundle.graph_path`` with a message naming the export option that adds the graph.

    Raises:
        BundleError: the bundle holds no such variant.
    """
    try:
        return bundle.graph_path(graph, backend, precision)
    except BundleError as exc:
        raise BundleError(f"{exc}; re-export with that format and precision") from None


__all__ = [
    "DECODER",
    "DESIGNS",
    "PREFILL",
    "PREFIX_EMBED",
    "STEP",
    "STEP_GQA",
    "STEP_GQA_KV16",
    "TOKEN_EMBED",
    "PrefixBatch",
    "RowState",
    "T2SDecoder",
    "T2SSession",
    "choose_design",
    "load_t2s",
    "open_t2s",
]
