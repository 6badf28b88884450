"""A submitted request as its client sees it: chunks in order, the result, cancellation.

The engine's threads push into a handle; any number of client threads (or one asyncio loop)
read from it. Chunks come out in segment order whatever order the stages finish them in.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from gsv_runtime.engine.request import AudioChunk, AudioResult, SynthesisRequest
from gsv_runtime.errors import RequestCancelledError, RequestTimeoutError

_END = object()


class RequestHandle:
    """Returned by ``Engine.submit``; iterate it (sync or ``async for``) or call ``result``."""

    def __init__(self, request: SynthesisRequest, request_id: int) -> None:
        self.request = request
        self.id = request_id
        self.submitted = time.perf_counter()
        self.deadline = None if request.timeout is None else self.submitted + request.timeout
        self.metadata: dict[str, Any] = {}
        """seed, segments (text and tokens per segment), text (frontend metadata)."""
        self.timings: dict[str, float] = {}
        """Seconds: queue, reference, frontend, t2s, sovits, first_audio, total."""
        self._cond = threading.Condition()
        self._events: deque[Any] = deque()
        self._error: BaseException | None = None
        self._finished = False
        self._started = False
        self._cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aqueue: asyncio.Queue[Any] | None = None
        self._pending: dict[int, list[AudioChunk]] = {}
        self._next_segment = 0
        self._segments: int | None = None
        self._on_done: Any = None
        """Called once, with this handle, when it finishes or fails (the engine's bookkeeping)."""

    # ------------------------------------------------------------------ state, any thread

    @property
    def cancelled(self) -> bool:
        """Cancelled by the client, or past its deadline (the engine then drops its work)."""
        expired = self.deadline is not None and time.perf_counter() > self.deadline
        if expired and not self._cancelled and not self._finished:
            timeout = self.request.timeout
            self._fail(RequestTimeoutError(f"request {self.id} timed out after {timeout:g} s"))
        return self._cancelled

    @property
    def done(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        """Stop the request: its rows leave the GPT batch at the next step, nothing more is
        vocoded, and readers get RequestCancelledError. Safe to call at any time, more than once."""
        self._fail(RequestCancelledError(f"request {self.id} was cancelled"))

    # ------------------------------------------------------------------ producer side

    def _push(self, event: Any) -> None:
        self._events.append(event)
        if self._loop is not None and self._aqueue is not None:
            self._loop.call_soon_threadsafe(self._aqueue.put_nowait, event)
        self._cond.notify_all()

    def _start(self, segments: int, metadata: dict[str, Any]) -> None:
        with self._cond:
            self._segments = segments
            self.metadata.update(metadata)
            self._started = True
            self._cond.notify_all()
            self._flush()
            ended = self._finished
        if ended:
            self._done_callback()

    def _add_chunk(self, chunk: AudioChunk) -> None:
        """A chunk of segment ``chunk.index``; released once every earlier segment is out."""
        with self._cond:
            if self._finished:
                return
            if "first_audio" not in self.timings:
                self.timings["first_audio"] = time.perf_counter() - self.submitted
            self._pending.setdefault(chunk.index, []).append(chunk)
            self._flush()
            ended = self._finished
        if ended:
            self._done_callback()

    def _done_callback(self) -> None:
        callback, self._on_done = self._on_done, None
        if callback is not None:
            callback(self)

    def _flush(self) -> None:
        while self._next_segment in self._pending:
            parts = self._pending[self._next_segment]
            ended = False
            while parts and not ended:
                chunk = parts.pop(0)
                self._push(chunk)
                ended = chunk.last
            if not ended:
                break
            del self._pending[self._next_segment]
            self._next_segment += 1
        if self._segments is not None and self._next_segment >= self._segments:
            self.timings["total"] = time.perf_counter() - self.submitted
            self._finished = True
            self._push(_END)

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            if self._finished:
                return
            self._error = error
            self._cancelled = True
            self._finished = True
            self._started = True
            self._push(_END)
        self._done_callback()

    # ------------------------------------------------------------------ consumer side

    def wait_started(self, timeout: float | None = None) -> None:
        """Block until the text is split and the voice ready (or the request failed).

        Raises:
            The request's error (InputError, RequestCancelledError, ...).
        """
        with self._cond:
            self._cond.wait_for(lambda: self._started, timeout)
            if self._error is not None:
                raise self._error

    def __iter__(self) -> Iterator[AudioChunk]:
        """Chunks in order as they are ready; raises the request's error if it fails."""
        seen = 0
        while True:
            with self._cond:
                while len(self._events) <= seen:
                    self._cond.wait()
                event = self._events[seen]
            seen += 1
            if event is _END:
                if self._error is not None:
                    raise self._error
                return
            yield event

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        """``async for`` over the chunks, for one asyncio loop (a server)."""
        with self._cond:
            self._loop = asyncio.get_running_loop()
            self._aqueue = asyncio.Queue()
            for event in self._events:
                self._aqueue.put_nowait(event)
        while True:
            event = await self._aqueue.get()
            if event is _END:
                if self._error is not None:
                    raise self._error
                return
            yield event

    def result(self, timeout: float | None = None) -> AudioResult:
        """Wait for the whole utterance.

        Raises:
            The request's error; TimeoutError (builtin) if ``timeout`` passes first.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished, timeout):
                raise TimeoutError(f"request {self.id} still running after {timeout} s")
        chunks = list(self)
        rate = chunks[0].sample_rate if chunks else int(self.metadata.get("sample_rate", 32000))
        samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.int16)
        return AudioResult(samples, rate, dict(self.timings), dict(self.metadata))
