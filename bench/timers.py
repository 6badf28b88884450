"""Timing helpers shared by every benchmark: summaries of repeated timings and stage clocks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, std (sample), median, p90, p95, min and max of ``values`` (empty → n = 0).

    The median is the headline figure; ``std`` and ``min``–``max`` state the spread, ``min`` is
    the figure least disturbed by other load on a shared host (micro-benchmarks).
    """
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": len(values),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(values) > 1 else 0.0,
        "median": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "p95": float(np.percentile(arr, 95)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def time_calls(fn: Callable[[int], Any], warmup: int, repeats: int) -> list[float]:
    """Call ``fn(i)`` ``warmup + repeats`` times; the last ``repeats`` durations in seconds."""
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn(i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


@dataclass
class StepRecord:
    """One GPT decode step: its duration, the rows it ran and the KV slots they attend."""

    seconds: float
    batch: int
    context: int


@dataclass
class StageClock:
    """Accumulates seconds per pipeline stage, and the individual GPT steps, for one engine.

    One clock per engine instance (engines are not shared between threads); :meth:`take`
    returns what was recorded since the last call and starts afresh.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    dit: list[StepRecord] = field(default_factory=list)
    """CFM voices: every DiT velocity call (``batch`` = rows, ``context`` = mel frames)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        """Count one call of ``stage`` lasting ``seconds``."""
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.calls[stage] = self.calls.get(stage, 0) + 1

    def step(self, seconds: float, batch: int, context: int) -> None:
        """Record one GPT step (also counted in the ``gpt_steps`` stage)."""
        self.add("gpt_steps", seconds)
        with self._lock:
            self.steps.append(StepRecord(seconds, batch, context))

    def dit_step(self, seconds: float, rows: int, frames: int) -> None:
        """Record one DiT velocity call of a CFM voice (also counted in ``cfm_dit``)."""
        self.add("cfm_dit", seconds)
        with self._lock:
            self.dit.append(StepRecord(seconds, rows, frames))

    def take_dit(self) -> list[StepRecord]:
        """The DiT calls recorded since the last call, then reset (:meth:`take` keeps them)."""
        with self._lock:
            out, self.dit = self.dit, []
        return out

    def wrap(self, fn: F, stage: str) -> F:
        """``fn`` with every call timed into ``stage``."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - t0)

        return timed  # type: ignore[return-value]

    def take(self) -> tuple[dict[str, float], dict[str, int], list[StepRecord]]:
        """Everything recorded so far, then reset."""
        with self._lock:
            out = (self.seconds, self.calls, self.steps)
            self.seconds, self.calls, self.steps = {}, {}, []
        return out
