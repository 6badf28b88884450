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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gsv_runtime.backends import RunnerOptions, make_runner
from gsv_runtime.backends.ov import compile_model
from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import BackendError, InputError
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
    hint, kv = OV_PRECISION.get(precision, ("f32", "f32"))
    options = replace(options, precision_hint=hint)
    compiled = compile_model(Path(path), options, {"KV_CACHE_PRECISION": kv_precision or kv})
    device = options.device.upper()
    if device.startswith("CPU"):  # the fusion this design relies on is the CPU plugin's
        states = len(compiled.create_infer_request().query_state())  # K and V per layer
        check_stateful_fusion(compiled, states // 2)
    return compiled


@dataclass(eq=False)
class _Cohort:
    """Rows that were prefilled together: one infer request, whose state is their KV cache."""

    request: Any
    rows: RowState
    beam: np.ndarray | None = None
    """Rows to gather from the state at the next infer (set by keep)."""


class StatefulSession(RowTracking):
    """Infer requests of the stateful decoder, one per cohort of rows that joined together.

    The CPU plugin keeps each cohort's KV cache in its own layout; reading or writing it from
    the host (get_state/set_state) costs about 0.5 s per 100 MB here, far more than a prefill,
    so rows that join a running batch start a new cohort instead of being merged into the
    cache. A step embeds every row's token at once and runs each cohort's request in turn (the
    weights stream once per cohort); the engine's ``admit_wait`` gathers newcomers so cohorts
    stay few, and a cohort's request is reused once all its rows have left.
    """

    design = "stateful"

    def __init__(self, compiled: Any, prefix_embed: Any, token_embed: Any) -> None:
        self._compiled = compiled
        self._idle: list[Any] = []
        self._logits = compiled.output("logits")
        self._prefix_embed = prefix_embed
        self._token_embed = token_embed
        self._cohorts: list[_Cohort] = []

    @property
    def batch(self) -> int:
        return sum(c.rows.batch for c in self._cohorts)

    def _state(self) -> RowState:
        if not self._cohorts:
            raise InputError("call prefill() before step() or keep()")
        return self._cohorts[0].rows

    def _infer(self, cohort: _Cohort, embeds: np.ndarray, mask: np.ndarray, last: Any) -> Any:
        beam = cohort.beam if cohort.beam is not None else np.arange(len(embeds), dtype=np.int32)
        cohort.beam = None
        result = cohort.request.infer(
            {"embeds": embeds, "mask": mask, "last": last, "beam_idx": beam}
        )
        return np.array(result[self._logits])

    def _release(self, cohort: _Cohort) -> None:
        cohort.request.reset_state()
        self._idle.append(cohort.request)

    def reset(self) -> None:
        for cohort in self._cohorts:
            self._release(cohort)
        self._cohorts = []

    def join(
        self,
        phones: np.ndarray,
        phone_lens: np.ndarray,
        bert: np.ndarray,
        prompt: np.ndarray | None = None,
        prompt_lens: np.ndarray | None = None,
    ) -> np.ndarray:
        batch = PrefixBatch.build(phones, phone_lens, bert, prompt, prompt_lens)
        prefix = self._prefix_embed.run(batch.feed())
        request = self._idle.pop() if self._idle else self._compiled.create_infer_request()
        request.reset_state()
        cohort = _Cohort(request, RowState(batch))
        logits = self._infer(cohort, prefix["embeds"], prefix["mask"], cohort.rows.lens - 1)
        self._cohorts.append(cohort)
        return logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self._state()
        tok = as_tokens(tokens, self.batch)
        positions = np.concatenate([c.rows.positions() for c in self._cohorts])
        embeds = self._token_embed.run({"tokens": tok, "positions": positions})["embeds"]
        out, start = [], 0
        for cohort in self._cohorts:
            rows = cohort.rows
            part = embeds[start : start + rows.batch]
            start += rows.batch
            out.append(
                self._infer(cohort, part, rows.append_mask(), np.zeros(rows.batch, np.int64))
            )
            rows.appended()
        return np.concatenate(out)

    def keep(self, rows: Sequence[int] | np.ndarray) -> None:
        """Keep ``rows``; rows of different cohorts must stay in join order (within a cohort
        any order).

        Raises:
            InputError: bad indices, or rows of a later join placed before an earlier one.
        """
        self._state()
        idx = as_rows(rows, self.batch)
        bounds = np.cumsum([0] + [c.rows.batch for c in self._cohorts])
        owner = np.searchsorted(bounds, idx, side="right") - 1
        if np.any(np.diff(owner) < 0):
            raise InputError("a stateful session keeps rows of different joins in join order")
        kept = []
        for k, cohort in enumerate(self._cohorts):
            local = (idx[owner == k] - bounds[k]).astype(np.int64)
            if local.size == 0:
                self._release(cohort)
                continue
            cohort.rows.keep(local)
            # the next infer gathers the state rows; a second keep before it composes the two
            previous = cohort.beam
            cohort.beam = (previous[local] if previous is not None else local).astype(np.int32)
            kept.append(cohort)
        self._cohorts = kept


def load_stateful(
    bundle: Bundle, options: RunnerOptions, precision: str, kv_precision: str | None
) -> Callable[[], T2SSession]:
    """Compile the decoder (``precision``) and the fp32 embedding graphs; a session factory."""
    compiled = compile_decoder(
        graph_file(bundle, DECODER, "openvino", precision), options, precision, kv_precision
    )
    embed_options = replace(options, precision_hint="f32")
    prefix = make_runner(
        graph_file(bundle, PREFIX_EMBED, "openvino", "fp32"), "openvino", embed_options
    )
    token = make_runner(
        graph_file(bundle, TOKEN_EMBED, "openvino", "fp32"), "openvino", embed_options
    )
    return lambda: StatefulSession(compiled, prefix, token)
