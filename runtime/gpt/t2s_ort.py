"""onnxruntime GPT sessions: ``canonical`` (explicit past → present) and ``gqa`` (shared cache).

Both keep the KV cache as OrtValues on the session's device between steps (IOBinding), so on
CUDA nothing but tokens, positions, masks and logits crosses the bus. ``canonical`` also runs
on OpenVINO through the plain runner (KV then round-trips through numpy each step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from gsv_runtime.backends import BackendName, GraphRunner, RunnerOptions, make_runner
from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import BackendError, InputError
from gsv_runtime.gpt.t2s import (
    PREFILL,
    STEP,
    STEP_GQA,
    STEP_GQA_KV16,
    PrefixBatch,
    RowState,
    RowTracking,
    T2SSession,
    as_rows,
    as_tokens,
    graph_file,
    kv_names,
    layer_count,
    widen_cache,
)

_DTYPES = {"float32": np.float32, "float16": np.float16}


class _Device:
    """Where OrtValues live: ``cpu`` or ``cuda`` + index, from RunnerOptions.device."""

    def __init__(self, device: str) -> None:
        kind, _, index = device.lower().partition(":")
        self.kind = kind
        self.index = int(index or 0)

    def upload(self, array: np.ndarray) -> Any:
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.kind, self.index)


class _OrtGraph:
    """One ORT session used through IOBinding: host inputs in, KV OrtValues stay on device."""

    def __init__(self, runner: GraphRunner, device: _Device) -> None:
        self.session = runner.session  # type: ignore[attr-defined]
        self.input_names = runner.input_names
        self.output_names = runner.output_names
        self.device = device

    def run(
        self, host: dict[str, np.ndarray], kv_in: dict[str, Any], kv_out: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], list[Any]]:
        """Run once; outputs in ``kv_out`` stay OrtValues on the device, the rest come to host."""
        io = self.session.io_binding()
        for name, value in host.items():
            io.bind_cpu_input(name, value)
        for name, value in kv_in.items():
            io.bind_ortvalue_input(name, value)
        kv_set = set(kv_out)
        host_out = [n for n in self.output_names if n not in kv_set]
        for name in host_out:
            io.bind_output(name, "cpu")
        for name in kv_out:
            io.bind_output(name, self.device.kind, self.device.index)
        self.session.run_with_iobinding(io)
        values = dict(zip(self.output_names, io.get_outputs(), strict=True))
        host = {n: np.array(values[n].numpy(), copy=True) for n in host_out}
        return host, [values[n] for n in kv_out]


class _PlainGraph:
    """Any GraphRunner (e.g. OpenVINO on the canonical ONNX): KV round-trips through numpy."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner
        self.output_names = runner.output_names

    def run(
        self, host: dict[str, np.ndarray], kv_in: dict[str, Any], kv_out: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], list[Any]]:
        out = self.runner.run({**host, **kv_in})
        kv_set = set(kv_out)
        return {n: v for n, v in out.items() if n not in kv_set}, [out[n] for n in kv_out]


def _to_host(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


class CanonicalSession(RowTracking):
    """``t2s_prefill`` + ``t2s_step``: the step appends one slot per row (Concat in the graph)."""

    design = "canonical"

    def __init__(
        self, prefill: Any, step: Any, n_layer: int, upload: Callable[[np.ndarray], Any]
    ) -> None:
        self._prefill, self._step = prefill, step
        self._past = kv_names(n_layer, "past")
        self._present = kv_names(n_layer, "present")
        self._upload = upload
        self._rows: RowState | None = None
        self._kv: list[Any] = []

    def _run_prefill(self, *args: np.ndarray | None) -> tuple[np.ndarray, RowState, list[Any]]:
        batch = PrefixBatch.build(*args)  # type: ignore[arg-type]
        host, kv = self._prefill.run(batch.feed(), {}, self._present)
        return host["logits"], RowState(batch), kv

    def reset(self) -> None:
        self._rows, self._kv = None, []

    def join(
        self,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None = None,
        prompt_lens: np.ndarray | None = None,
    ) -> np.ndarray:
        logits, rows, kv = self._run_prefill(phones, phone_lens, bert, prompt, prompt_lens)
        if self._rows is None:
            self._rows, self._kv = rows, kv
            return logits
        width = max(self._rows.width, rows.width)
        self._kv = [
            self._upload(np.concatenate([widen_cache(_to_host(a), width) for a in (old, new)]))
            for old, new in zip(self._kv, kv, strict=True)
        ]
        self._rows.extend(rows)
        return logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        rows = self._state()
        feed = {
            "tokens": as_tokens(tokens, rows.batch),
            "positions": rows.positions(),
            "mask": rows.append_mask(),
        }
        host, self._kv = self._step.run(
            feed, dict(zip(self._past, self._kv, strict=True)), self._present
        )
        rows.appended()
        return host["logits"]

    def keep(self, rows: Sequence[int] | np.ndarray) -> None:
        state = self._state()
        idx = as_rows(rows, state.batch)
        if idx.size == 0:
            self.reset()
            return
        state.keep(idx)
        self._kv = [self._upload(_to_host(v)[idx]) for v in self._kv]


class GqaSession(RowTracking):
    """``t2s_prefill`` + ``t2s_step_gqa[_kv16]``: a pool of cache slots written in place.

    Each layer's K and V live in one pool ``[slots, nh, W, hs]``; a row owns one slot from its
    prefill until it leaves. The step runs over slots ``[0, n)`` (n = highest owned slot + 1),
    binds ``present.*`` to the same OrtValues as ``past_key_values.*``, and GroupQueryAttention
    writes row i's new K/V at position ``seqlens_k[i]`` (= L_i + t_i) of its slot. A free slot
    below n is fed a dummy token with ``seqlens_k`` 0 (it only scribbles on its own slot 0).
    Rows leaving free their slot without copying anything; a joining row's prefix is copied
    into the lowest free slot. The pool grows (slots, or W by at least ``GROW_SLOTS``) only when
    a row needs it, so memory follows the live context. On CPU the OrtValues alias the numpy
    pool; on another device the pool is mirrored to the host only when rows join or it grows.
    """

    design = "gqa"
    GROW_SLOTS = 256
    """Cache positions added per growth (a growth copies the pool once)."""

    def __init__(
        self,
        prefill: _OrtGraph,
        step: _OrtGraph,
        n_layer: int,
        kv_dtype: type,
        max_tokens: int,
    ) -> None:
        self._prefill, self._step = prefill, step
        self._past = kv_names(n_layer, "past")
        self._present = kv_names(n_layer, "present")
        self._kv_dtype = kv_dtype
        self._max_tokens = max_tokens
        self._rows: RowState | None = None
        self._slot = np.zeros(0, np.int64)  # slot of each row, in batch order
        self._pool: np.ndarray | None = None  # [2 * n_layer, slots, nh, W, hs]
        self._device_kv: list[Any] = []
        self._io: Any = None
        self._bound = 0  # slots the binding covers
        self._logits = np.zeros((0, 0), np.float32)  # the binding's logits buffer

    def reset(self) -> None:
        self._rows, self._slot, self._pool, self._io = None, np.zeros(0, np.int64), None, None
        self._device_kv = []

    def join(
        self,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None = None,
        prompt_lens: np.ndarray | None = None,
    ) -> np.ndarray:
        batch = PrefixBatch.build(phones, phone_lens, bert, prompt, prompt_lens)
        host, kv = self._prefill.run(batch.feed(), {}, self._present)
        new = RowState(batch)
        self._to_host()
        free = sorted(set(range(self._slots())) - set(self._slot.tolist()))
        slots = (free + list(range(self._slots(), self._slots() + new.batch)))[: new.batch]
        need_w = int(new.lens.max()) + min(self._max_tokens, self.GROW_SLOTS)
        self._grow(max(slots) + 1, need_w)
        assert self._pool is not None
        prefix = [_to_host(v) for v in kv]  # each (b, nh, S, hs)
        for i, slot in enumerate(slots):
            n = int(new.lens[i])
            for j, value in enumerate(prefix):
                self._pool[j, slot, :, :n] = value[i, :, :n]
        if self._rows is None:
            self._rows = new
        else:
            self._rows.extend(new)
        self._slot = np.concatenate([self._slot, np.array(slots, np.int64)])
        self._io = None
        return host["logits"]

    def _slots(self) -> int:
        return 0 if self._pool is None else int(self._pool.shape[1])

    def _grow(self, slots: int, width: int) -> None:
        """Make the pool at least ``slots`` × ``width``, copying what it holds."""
        if self._pool is not None and self._pool.shape[1] >= slots and self._pool.shape[3] >= width:
            return
        spec = self._prefill.session.get_outputs()
        if self._pool is None:
            n_kv = len(self._present)
            shape = next(o.shape for o in spec if o.name == self._present[0])
            nh, hs = int(shape[1]), int(shape[3])
            self._pool = np.zeros((n_kv, slots, nh, width, hs), self._kv_dtype)
            return
        old = self._pool
        n_kv, s, nh, w, hs = old.shape
        grown = np.zeros((n_kv, max(slots, s), nh, max(width, w), hs), self._kv_dtype)
        grown[:, :s, :, :w] = old
        self._pool = grown
        self._io = None

    def _to_host(self) -> None:
        """Off-CPU, bring the device caches back into the pool before editing it."""
        if self._step.device.kind != "cpu" and self._io is not None and self._pool is not None:
            for j, value in enumerate(self._device_kv):
                self._pool[j, : self._bound] = value.numpy()

    def _bind(self, n: int) -> None:
        """Bind slots [0, n) of every cache as both past and present of one IOBinding."""
        import onnxruntime as ort

        assert self._pool is not None
        upload = self._step.device.upload
        self._device_kv = [upload(self._pool[j, :n]) for j in range(len(self._pool))]
        io = self._step.session.io_binding()
        # logits land in a host array bound once, instead of IOBinding.get_outputs() wrapping
        # all 1 + 2 × n_layer outputs in new OrtValues every step
        vocab = int(self._step.session.get_outputs()[0].shape[-1])
        self._logits = np.empty((n, vocab), np.float32)
        io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits))
        for past, present, value in zip(self._past, self._present, self._device_kv, strict=True):
            io.bind_ortvalue_input(past, value)
            io.bind_ortvalue_output(present, value)
        self._io, self._bound = io, n

    def step(self, tokens: np.ndarray) -> np.ndarray:
        rows = self._state()
        tok = as_tokens(tokens, rows.batch)
        positions = rows.positions()
        if int(rows.steps.max()) >= self._max_tokens:
            raise InputError(
                f"a row reached the GQA cache's {self._max_tokens} decode slots "
                "(max_tokens); load the decoder with a larger max_tokens"
            )
        seqlens_rows = rows.lens + rows.steps  # past length of each row
        assert self._pool is not None
        if int(seqlens_rows.max()) >= self._pool.shape[3]:
            self._to_host()
            self._grow(self._slots(), int(seqlens_rows.max()) + self.GROW_SLOTS)
        n = int(self._slot.max()) + 1
        if self._io is None or n != self._bound:
            self._to_host()
            self._bind(n)
        full_tokens = np.zeros((n, 1), np.int64)
        full_positions = np.zeros(n, np.int64)
        seqlens = np.zeros(n, np.int32)
        full_tokens[self._slot] = tok
        full_positions[self._slot] = positions
        seqlens[self._slot] = seqlens_rows
        io = self._io
        io.bind_cpu_input("tokens", full_tokens)
        io.bind_cpu_input("positions", full_positions)
        io.bind_cpu_input("seqlens_k", seqlens)
        io.bind_cpu_input("total_sequence_length", np.array(int(seqlens.max()) + 1, np.int32))
        self._step.session.run_with_iobinding(io)
        rows.steps += 1
        return self._logits[self._slot]  # fancy indexing copies out of the bound buffer

    def keep(self, rows: Sequence[int] | np.ndarray) -> None:
        state = self._state()
        idx = as_rows(rows, state.batch)
        if idx.size == 0:  # nothing left: release the pool
            self.reset()
            return
        state.keep(idx)
        self._slot = self._slot[idx]


def _ort_graphs(
    bundle: Bundle, names: Sequence[tuple[str, str]], options: RunnerOptions
) -> list[_OrtGraph]:
    device = _Device(options.device)
    graphs = []
    for name, precision in names:
        runner = make_runner(
            graph_file(bundle, name, "onnxruntime", precision), "onnxruntime", options
        )
        graphs.append(_OrtGraph(runner, device))
    return graphs


def load_canonical(
    bundle: Bundle, backend: BackendName, options: RunnerOptions, precision: str
) -> Callable[[], T2SSession]:
    """Compile ``t2s_prefill`` and ``t2s_step``; return a session factory.

    On OpenVINO the ONNX graphs are compiled as they are (explicit I/O; slow at long context).
    """
    n_layer = layer_count(bundle.graph(STEP))
    if backend == "onnxruntime":
        prefill, step = _ort_graphs(bundle, [(PREFILL, precision), (STEP, precision)], options)
        upload = step.device.upload
        return lambda: CanonicalSession(prefill, step, n_layer, upload)
    if precision not in ("fp32", "bf16"):
        raise BackendError(
            f"OpenVINO without the stateful t2s_decoder runs the fp32 ONNX graphs only "
            f"(asked for {precision}); export the openvino format"
        )
    hint = "bf16" if precision == "bf16" else "f32"
    ov_options = replace(options, precision_hint=hint)
    graphs = [
        _PlainGraph(make_runner(graph_file(bundle, g, "onnxruntime", "fp32"), backend, ov_options))
        for g in (PREFILL, STEP)
    ]
    return lambda: CanonicalSession(graphs[0], graphs[1], n_layer, lambda a: a)


def load_gqa(
    bundle: Bundle, options: RunnerOptions, precision: str, max_tokens: int
) -> Callable[[], T2SSession]:
    """Compile ``t2s_prefill`` and the GQA step (``t2s_step_gqa_kv16`` for fp16).

    Raises:
        InputError: max_tokens < 1.
    """
    if max_tokens < 1:
        raise InputError(f"max_tokens must be >= 1, but got {max_tokens}")
    kv16 = precision == "fp16"
    step_name, step_precision = (STEP_GQA_KV16, "fp16") if kv16 else (STEP_GQA, precision)
    prefill_precision = precision
    spec = bundle.graph(step_name)
    kv_dtype = _DTYPES[spec.inputs["past_key_values.0.key"].dtype]
    prefill, step = _ort_graphs(
        bundle, [(PREFILL, prefill_precision), (step_name, step_precision)], options
    )
    n_layer = layer_count(spec)
    return lambda: GqaSession(prefill, step, n_layer, kv_dtype, max_tokens)
