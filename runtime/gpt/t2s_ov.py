"""OpenVINO GPT session: the stateful ``t2s_decoder``, whose KV cache the CPU plugin keeps.

Prefill and steps run the same compiled graph: the prefill feeds the packed prefix embeddings
(``t2s_prefix_embed``) with its prefix mask into an empty state, each step feeds one token
embedding (``t2s_token_embed``) with an appending mask. The host never reads or writes the
state. The alternative (a separate prefill graph whose K/V the host injects with
``set_state``) measured about the same here (full size, B1, W1200: prefill 4.2 s either way,
set_state 0.14 s, first step 0.18 s against 0.14 s), but moves 2 × 24 × S × 512 floats per row
through the host and needs a second prefill graph compiled next to the decoder. Dropping rows
uses the graph's ``beam_idx`` input (a Gather the plugin folds into the fused attention).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gsv_runtime.backends import RunnerOptions, make_runner
from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import BackendError, first_line
from gsv_runtime.gpt.t2s import (
    DECODER,
    OV_PRECISION,
    PREFIX_EMBED,
    TOKEN_EMBED,
    PrefixBatch,
    RowState,
    RowTracking,
    T2SSession,
    as_rows,
    as_tokens,
    graph_file,
    widen_cache,
)

FUSED_LAYER: tuple[str, ...] = ("ScaledDotProductAttention", "ScaledAttnWithKVCache")
"""Runtime-model layer types of the fused stateful attention (plugin versions differ)."""


def check_stateful_fusion(compiled: Any, n_layer: int) -> dict[str, int]:
    """Check the CPU plugin fused every layer's attention with its cache.

    Returns:
        Counts: ``sdpa`` fused attention nodes, ``kv_concat`` rank-4 Concatenations.

    Raises:
        BackendError: fewer fused attentions than layers, or a Concatenation on the KV path
            (the plugin would then copy the whole cache every step).
    """
    types: Counter[str] = Counter()
    kv_concat = 0
    for op in compiled.get_runtime_model().get_ops():
        kind = str(op.get_rt_info()["layerType"].astype(str))
        types[kind] += 1
        if kind == "Concatenation" and op.get_output_partial_shape(0).rank.get_length() == 4:
            kv_concat += 1
    sdpa = sum(types[k] for k in FUSED_LAYER)
    if sdpa < n_layer or kv_concat:
        raise BackendError(
            f"OpenVINO did not fuse the stateful KV cache ({sdpa}/{n_layer} fused attention "
            f"nodes, {kv_concat} KV Concat nodes); this plugin would copy the cache every step"
        )
    return {"sdpa": sdpa, "kv_concat": kv_concat}


def compile_decoder(
    path: Any, options: RunnerOptions, precision: str, kv_precision: str | None = None
) -> Any:
    """Compile the stateful decoder with the precision's hints and check its fusion.

    Raises:
        BackendError: OpenVINO missing, device absent, compile failure, or no fusion.
    """
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendError("OpenVINO is not installed (pip install openvino)") from exc
    hint, kv = OV_PRECISION.get(precision, ("f32", "f32"))
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": hint,
        "KV_CACHE_PRECISION": kv_precision or kv,
    }
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    device = options.device.upper()
    core = ov.Core()
    if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
        raise BackendError(
            f"OpenVINO device {device} is not available here "
            f"(available: {', '.join(core.available_devices)})"
        )
    try:
        compiled = core.compile_model(str(path), device, config)
    except Exception as exc:  # OpenVINO raises RuntimeError with a long plugin log
        raise BackendError(f"OpenVINO cannot compile {DECODER}: {first_line(exc)}") from None
    if device.startswith("CPU"):  # the fusion this design relies on is the CPU plugin's
        states = len(compiled.create_infer_request().query_state())  # K and V per layer
        check_stateful_fusion(compiled, states // 2)
    return compiled


class StatefulSession(RowTracking):
    """One infer request of the stateful decoder: its state is this batch's KV cache.

    Joining rows prefill on a second infer request of the same compiled model; their states are
    then merged with the running rows' (read, widened, concatenated, written back): a copy of
    the cache per join, the price of keeping the fused in-plugin cache for every step.
    """

    design = "stateful"

    def __init__(self, compiled: Any, prefix_embed: Any, token_embed: Any) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._scratch: Any = None
        self._logits = compiled.output("logits")
        self._prefix_embed = prefix_embed
        self._token_embed = token_embed
        self._rows: RowState | None = None
        self._beam: np.ndarray | None = None

    def _infer(self, request: Any, embeds: np.ndarray, mask: np.ndarray, last: np.ndarray) -> Any:
        b = embeds.shape[0]
        beam = self._beam if self._beam is not None else np.arange(b, dtype=np.int32)
        self._beam = None
        result = request.infer({"embeds": embeds, "mask": mask, "last": last, "beam_idx": beam})
        return np.array(result[self._logits])

    def _prefill_on(self, request: Any, *args: np.ndarray | None) -> tuple[np.ndarray, RowState]:
        batch = PrefixBatch.build(*args)  # type: ignore[arg-type]
        prefix = self._prefix_embed.run(batch.feed())
        rows = RowState(batch)
        request.reset_state()
        return self._infer(request, prefix["embeds"], prefix["mask"], rows.lens - 1), rows

    def prefill(
        self,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None = None,
        prompt_lens: np.ndarray | None = None,
    ) -> np.ndarray:
        self._beam = None
        logits, self._rows = self._prefill_on(
            self._request, phones, phone_lens, bert, prompt, prompt_lens
        )
        return logits

    def join(
        self,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None = None,
        prompt_lens: np.ndarray | None = None,
    ) -> np.ndarray:
        if self._rows is None:
            return self.prefill(phones, phone_lens, bert, prompt, prompt_lens)
        import openvino as ov

        pending = self._beam
        self._beam = None
        if self._scratch is None:
            self._scratch = self._compiled.create_infer_request()
        logits, rows = self._prefill_on(
            self._scratch, phones, phone_lens, bert, prompt, prompt_lens
        )
        width = max(self._rows.width, rows.width)
        added = {s.name: s.state.data for s in self._scratch.query_state()}
        for state in self._request.query_state():
            old = state.state.data
            old = old[pending] if pending is not None else old
            merged = np.concatenate(
                [widen_cache(old, width), widen_cache(added[state.name], width)]
            )
            state.state = ov.Tensor(np.ascontiguousarray(merged))
        self._rows.extend(rows)
        return logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        rows = self._state()
        feed = {"tokens": as_tokens(tokens, rows.batch), "positions": rows.positions()}
        embeds = self._token_embed.run(feed)["embeds"]
        logits = self._infer(
            self._request, embeds, rows.append_mask(), np.zeros(rows.batch, np.int64)
        )
        rows.appended()
        return logits

    def keep(self, rows: Sequence[int] | np.ndarray) -> None:
        state = self._state()
        idx = as_rows(rows, state.batch)
        if idx.size == 0:
            self._rows, self._beam = None, None
            self._request.reset_state()
            return
        state.keep(idx)
        # the next infer gathers the state rows; a second keep before it composes the two
        previous = self._beam if self._beam is not None else None
        self._beam = (previous[idx] if previous is not None else idx).astype(np.int32)


def load_stateful(
    bundle: Bundle, options: RunnerOptions, precision: str, kv_precision: str | None
) -> Callable[[], T2SSession]:
    """Compile the decoder (``precision``) and the fp32 embedding graphs; a session factory."""
    compiled = compile_decoder(
        graph_file(bundle, DECODER, "openvino", precision), options, precision, kv_precision
    )
    embed_options = RunnerOptions(options.device, options.threads, "f32")
    prefix = make_runner(
        graph_file(bundle, PREFIX_EMBED, "openvino", "fp32"), "openvino", embed_options
    )
    token = make_runner(
        graph_file(bundle, TOKEN_EMBED, "openvino", "fp32"), "openvino", embed_options
    )
    return lambda: StatefulSession(compiled, prefix, token)
