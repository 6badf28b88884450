"""The serving engine: loaded models, a bounded request queue, continuous GPT batching and
a pipelined acoustic stage.

A request flows through three kinds of threads (see the thread rule in ``gsv_runtime.engine``):

1. the frontend thread resolves the voice (reference clip → prompt tokens and ``ge``) and splits
   the text into segments (phones + BERT), then hands the request to its model's GPT thread;
2. each model's GPT thread keeps one :class:`~gsv_runtime.gpt.decode.DecodeBatch`: at every step
   finished rows leave and waiting rows of any request join after their own prefill, up to
   ``max_rows``; a request keeps at most ``batch_size`` of its segments in the batch at once, in
   order, so segments come out in order;
3. the acoustic thread decodes finished segments (or token windows when streaming by token)
   while the GPT goes on, and pushes audio into the request's handle, which releases it in order.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gsv_runtime.acoustic import NoiseSource, VocodeJob
from gsv_runtime.audio import to_int16
from gsv_runtime.config import SynthesisConfig
from gsv_runtime.engine.handle import RequestHandle
from gsv_runtime.engine.model import SegmentInput, VoiceModel
from gsv_runtime.engine.request import AudioChunk, SynthesisRequest
from gsv_runtime.engine.stream import TokenChunker, TokenStitcher
from gsv_runtime.errors import EngineBusyError, GsvError, InputError, RequestCancelledError
from gsv_runtime.gpt.decode import DecodeBatch, DecodeRow, LiveRow
from gsv_runtime.gpt.t2s import layer_count
from gsv_runtime.voice import Voice

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
JOIN_WAIT = {"stateful": 0.25}
"""Default ``admit_wait`` per KV design (seconds)."""
MAX_ROWS_CAP = 32
ROW_CONTEXT_TOKENS = 1000
"""Context a row is budgeted for when ``max_rows`` is derived from free memory."""


@dataclass(frozen=True)
class EngineConfig:
    """Admission and batching limits."""

    max_queued: int = 64
    """Requests in the engine (waiting or running) before ``submit`` raises EngineBusyError."""
    max_rows: int | None = None
    """Live GPT rows per model; None: from free memory and the model's KV size, ≤ 32."""
    admit_wait: float | None = None
    """Seconds newcomers may wait so that they join the batch together: they join once the
    first of them has waited this long, once no other request for the model is still in the
    frontend, or as soon as they fill the free rows. None: by KV design — 0 where a join
    copies only the new rows' cache (``gqa``, ``canonical``), 0.25 s for OpenVINO's
    ``stateful`` design, where each join starts a cohort that steps on its own."""
    acoustic_batch: int = 1
    """Finished segments of one voice the acoustic stage decodes as one batch (CPU: 1 measured
    fastest; a batch of 4 took 1.9 s where one by one took 1.5 s at 8 concurrent requests)."""
    max_text_chars: int = 20_000
    """Longest text one request may carry (upstream's frontend needs ≈ 0.1 s per 1000
    Chinese characters; a million took 94 s)."""

    def validate(self) -> None:
        checks = [
            ("max_queued", self.max_queued >= 1),
            ("max_rows", self.max_rows is None or self.max_rows >= 1),
            ("admit_wait", self.admit_wait is None or 0.0 <= self.admit_wait <= 10.0),
            ("acoustic_batch", self.acoustic_batch >= 1),
            ("max_text_chars", self.max_text_chars >= 1),
        ]
        for name, ok in checks:
            if not ok:
                raise InputError(f"EngineConfig.{name} is out of range: {getattr(self, name)!r}")


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def default_max_rows(model: VoiceModel) -> int:
    """Rows whose fp32 KV caches (``ROW_CONTEXT_TOKENS`` each) fit a quarter of free memory."""
    spec = model.bundle.manifest.graphs.get("t2s_step")
    if spec is None:
        return 8
    width = spec.inputs["past_key_values.0.key"].shape
    per_token = 2 * layer_count(spec) * int(width[1]) * int(width[3]) * 4
    rows = int(0.25 * _available_memory() / (per_token * ROW_CONTEXT_TOKENS))
    return max(1, min(MAX_ROWS_CAP, rows))


@dataclass(eq=False)
class _Job:
    """Engine-side state of one request."""

    handle: RequestHandle
    model: VoiceModel
    config: SynthesisConfig
    seed: int
    voice: Voice | None = None
    segments: list[SegmentInput] = field(default_factory=list)
    next_segment: int = 0
    live: int = 0
    chunkers: dict[int, TokenChunker] = field(default_factory=dict)
    stitchers: dict[int, TokenStitcher] = field(default_factory=dict)
    noises: dict[int, NoiseSource] = field(default_factory=dict)
    t2s_start: float | None = None

    @property
    def cancelled(self) -> bool:
        return self.handle.cancelled

    def noise(self, index: int) -> NoiseSource:
        if index not in self.noises:
            self.noises[index] = NoiseSource([self.seed, 1, index])
        return self.noises[index]

    def decode_row(self, index: int) -> DecodeRow:
        seg = self.segments[index]
        voice = self.voice
        if self.config.ref_free or voice is None:
            return DecodeRow(seg.phones, seg.bert, np.zeros(0, np.int64))
        return DecodeRow(
            np.concatenate([voice.prompt_phones, seg.phones]),
            np.concatenate([voice.prompt_bert, seg.bert], axis=0),
            voice.prompt_tokens,
        )


@dataclass(frozen=True)
class _Segment:
    """A GPT row's tag: which request and segment it decodes."""

    job: _Job
    index: int


@dataclass(frozen=True)
class _AcousticTask:
    job: _Job
    index: int
    tokens: np.ndarray
    start: int
    end: int
    final: bool


class _GptWorker:
    """One model's GPT thread: admits rows, steps the batch, hands tokens on."""

    def __init__(self, engine: Engine, model: VoiceModel, name: str) -> None:
        self.engine = engine
        self.model = model
        self.max_rows = engine.config.max_rows or default_max_rows(model)
        self.jobs: deque[_Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.draining = False
        self.pending = 0
        """Requests submitted for this model and not finished."""
        self.backlog = 0
        """Requests submitted for this model still in the frontend."""
        self.batch = DecodeBatch(model.t2s.session())
        wait = engine.config.admit_wait
        self.admit_wait = wait if wait is not None else JOIN_WAIT.get(model.t2s.design, 0.0)
        self._waiting_since: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"gsv-gpt-{name}", daemon=True)
        self.thread.start()

    @property
    def live_rows(self) -> int:
        return len(self.batch)

    def enqueue(self, job: _Job) -> None:
        with self.cond:
            if not self.stopping:
                self.jobs.append(job)
                self.cond.notify()
                return
        job.handle._fail(RequestCancelledError("the model was unloaded"))

    def acquire(self) -> None:
        """A request for this model was submitted (its frontend may still be running)."""
        with self.cond:
            self.pending += 1
            self.backlog += 1

    def prepared(self) -> None:
        """A request left the frontend (enqueued or failed)."""
        with self.cond:
            self.backlog -= 1
            self.cond.notify()

    def release(self, _handle: RequestHandle | None = None) -> None:
        with self.cond:
            self.pending -= 1
            self.cond.notify()

    def stop(self, drain: bool = False) -> None:
        """End the thread: at once (rows and queued requests fail), or once every request
        submitted for this model has finished (``drain``)."""
        with self.cond:
            if drain:
                self.draining = True
            else:
                self.stopping = True
            self.cond.notify()

    def _idle(self) -> bool:
        return not self.jobs and not self.batch.rows

    def _run(self) -> None:
        while True:
            with self.cond:
                while (
                    not self.stopping and self._idle() and not (self.draining and self.pending <= 0)
                ):
                    self.cond.wait()
                if self.stopping or (self.draining and self.pending <= 0 and self._idle()):
                    self.stopping = True
                    break
                jobs = [j for j in self.jobs if not j.cancelled]
                self.jobs = deque(jobs)
            try:
                self._iterate()
                if not self.batch.rows:  # newcomers are gathering (admit_wait): doze
                    with self.cond:
                        self.cond.wait(0.01)
            except Exception as exc:  # a backend failure: fail the rows' requests, go on
                _LOGGER.exception("GPT step failed")
                error = exc if isinstance(exc, GsvError) else GsvError(f"GPT stage failed: {exc}")
                for live in self.batch.remove(lambda _: True):
                    live.tag.job.handle._fail(error)
                self.batch = DecodeBatch(self.model.t2s.session())
        gone = RequestCancelledError("the engine is shutting down")
        for live in self.batch.remove(lambda _: True):
            live.tag.job.handle._fail(gone)
        with self.cond:
            jobs, self.jobs = list(self.jobs), deque()
        for job in jobs:
            job.handle._fail(gone)

    def _admit(self) -> list[LiveRow]:
        """Rows to join now: round-robin over waiting requests, each within its batch_size."""
        new: list[LiveRow] = []
        free = self.max_rows - len(self.batch)
        with self.cond:
            if self.admit_wait > 0 and not self._gathered(free):
                return new
            self._waiting_since = None
            progress = True
            while free > 0 and progress:
                progress = False
                for job in list(self.jobs):
                    if free <= 0:
                        break
                    if job.next_segment >= len(job.segments):
                        self.jobs.remove(job)
                        continue
                    if job.live >= job.config.batch_size:
                        continue
                    try:
                        row = self._row(job, job.next_segment)
                    except Exception as exc:  # e.g. a bundle's sampling defaults out of range
                        self.jobs.remove(job)
                        job.handle._fail(exc if isinstance(exc, GsvError) else InputError(str(exc)))
                        continue
                    new.append(row)
                    job.next_segment += 1
                    job.live += 1
                    free -= 1
                    progress = True
        return new

    def _gathered(self, free: int) -> bool:
        """Whether waiting rows should join now (see ``EngineConfig.admit_wait``)."""
        waiting = sum(
            min(j.config.batch_size - j.live, len(j.segments) - j.next_segment) for j in self.jobs
        )
        if waiting <= 0:
            self._waiting_since = None
            return False
        now = time.perf_counter()
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since
        return waiting >= free or self.backlog <= 0 or waited >= self.admit_wait

    def _row(self, job: _Job, index: int) -> LiveRow:
        config = job.config
        if job.t2s_start is None:
            job.t2s_start = time.perf_counter()
        return LiveRow(
            job.decode_row(index),
            config.sampling(job.model.bundle.manifest.sampling),
            np.random.default_rng([job.seed, 0, index]),
            max_steps=config.max_steps,
            fixed_length=config.fixed_length,
            tag=_Segment(job, index),
        )

    def _iterate(self) -> None:
        for live in self.batch.remove(lambda r: r.tag.job.cancelled):
            live.tag.job.live -= 1
        new = self._admit()
        if new:
            try:
                self.batch.add(new)
            except Exception as exc:  # e.g. a prefix beyond the position table
                error = exc if isinstance(exc, GsvError) else GsvError(f"GPT prefill: {exc}")
                for live in new:
                    live.tag.job.handle._fail(error)
                if not isinstance(exc, GsvError):
                    raise  # the session may be damaged: _run fails its rows and starts anew
        if not self.batch.rows:
            return
        for live in self.batch.advance(self._on_token):
            seg: _Segment = live.tag
            seg.job.live -= 1
            seg.job.handle.metadata["segments"][seg.index]["tokens"] = len(live.generated)
            if seg.job.next_segment >= len(seg.job.segments) and seg.job.live == 0:
                assert seg.job.t2s_start is not None
                seg.job.handle.timings["t2s"] = time.perf_counter() - seg.job.t2s_start
            self.engine._vocode(seg.job, seg.index, live.tokens, final=True)
            with self.cond:  # a request waiting on its batch_size may continue
                if seg.job.next_segment < len(seg.job.segments) and seg.job not in self.jobs:
                    self.jobs.append(seg.job)

    def _on_token(self, live: LiveRow) -> None:
        seg: _Segment = live.tag
        if seg.job.handle.request.stream == "token":
            self.engine._vocode(seg.job, seg.index, live.tokens, final=False)


class Engine:
    """Owns loaded models, their sessions and the scheduler; every client goes through it.

    Public methods are safe to call from any thread. Threads start on the first request.
    """

    def __init__(
        self,
        models: dict[str, VoiceModel] | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.config.validate()
        self._models: dict[str, VoiceModel] = dict(models or {})
        self._workers: dict[int, _GptWorker] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._in_flight: set[RequestHandle] = set()
        self._frontend = ThreadPoolExecutor(1, thread_name_prefix="gsv-frontend")
        self._acoustic_queue: deque[_AcousticTask] = deque()
        self._acoustic_cond = threading.Condition()
        self._acoustic_thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ models

    def add_model(self, name: str, model: VoiceModel) -> None:
        """Register (or replace) a model; requests in flight keep the one they started with
        (a replaced model's GPT thread ends once they are done)."""
        with self._lock:
            old = self._models.get(name)
            self._models[name] = model
            still_used = any(m is old for m in self._models.values())
            worker = self._workers.pop(id(old), None) if old and not still_used else None
        if worker is not None:
            worker.stop(drain=True)

    def remove_model(self, name: str) -> None:
        """Forget a model: new requests naming it get an InputError; its GPT thread finishes
        the requests already submitted, then ends (this call does not wait for them)."""
        with self._lock:
            model = self._models.pop(name, None)
            worker = self._workers.pop(id(model), None) if model is not None else None
        if worker is not None:
            worker.stop(drain=True)

    @property
    def models(self) -> dict[str, VoiceModel]:
        with self._lock:
            return dict(self._models)

    def model(self, name: str | None = None) -> VoiceModel:
        """A loaded model by name (None: the only one, or ``default``).

        Raises:
            InputError: no such model.
        """
        with self._lock:
            if name is None:
                if len(self._models) == 1:
                    return next(iter(self._models.values()))
                name = DEFAULT_MODEL
            model = self._models.get(name)
            if model is None:
                known = ", ".join(sorted(self._models)) or "none"
                raise InputError(f"unknown model {name!r}; loaded: {known}")
            return model

    # ------------------------------------------------------------------ requests

    def submit(self, request: SynthesisRequest) -> RequestHandle:
        """Queue a request; returns at once with its handle.

        Raises:
            EngineBusyError: ``max_queued`` requests are already in the engine.
            InputError: an unknown model.
            RequestCancelledError: the engine is closed.
        """
        model = self.model(request.model)
        if len(request.text) > self.config.max_text_chars:
            raise InputError(
                f"text is {len(request.text)} characters; at most {self.config.max_text_chars} "
                "per request (EngineConfig.max_text_chars)"
            )
        if request.stream == "token" and not getattr(model.acoustic, "token_streaming", True):
            raise InputError(
                "this voice cannot stream token windows (v3/v4 CFM voices decode whole "
                "segments, as upstream); use stream='segment'"
            )
        with self._lock:
            if self._closed:
                raise RequestCancelledError("the engine is closed")
            if len(self._in_flight) >= self.config.max_queued:
                raise EngineBusyError(
                    f"engine busy: {len(self._in_flight)} requests in flight "
                    f"(max_queued {self.config.max_queued}); retry later"
                )
            handle = RequestHandle(request, next(self._ids))
            worker = self._worker(model)
            worker.acquire()

            def done(h: RequestHandle, worker: _GptWorker = worker) -> None:
                self._finished(h)
                worker.release()

            handle._on_done = done
            self._in_flight.add(handle)
            self._start_acoustic()
        self._frontend.submit(self._prepare, handle, model, worker)
        return handle

    def submit_many(
        self, requests: Iterable[SynthesisRequest], ordered: bool = True
    ) -> Iterator[tuple[int, Any]]:
        """Run many requests, at most ``max_queued`` at a time; yields ``(index, result)`` in
        input order (``ordered``) or as they finish. A failed request yields its exception."""
        pending: dict[int, RequestHandle] = {}
        source = iter(enumerate(requests))
        done_order: deque[int] = deque()
        exhausted = False
        next_out = 0
        finished: dict[int, Any] = {}
        while pending or not exhausted:
            while not exhausted and len(pending) < self.config.max_queued:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                index, request = item
                try:
                    pending[index] = self.submit(request)
                except GsvError as exc:
                    finished[index] = exc
                    done_order.append(index)
            if pending:
                index = min(pending) if ordered else self._first_done(pending)
                handle = pending.pop(index)
                try:
                    finished[index] = handle.result()
                except GsvError as exc:
                    finished[index] = exc
                done_order.append(index)
            if ordered:
                while next_out in finished:
                    yield next_out, finished.pop(next_out)
                    next_out += 1
            else:
                while done_order:
                    index = done_order.popleft()
                    yield index, finished.pop(index)

    @staticmethod
    def _first_done(pending: dict[int, RequestHandle]) -> int:
        while True:
            for index, handle in pending.items():
                if handle.done:
                    return index
            time.sleep(0.005)

    def stats(self) -> dict[str, int]:
        """Requests in flight, live GPT rows and queued acoustic work (for metrics)."""
        with self._lock:
            workers = list(self._workers.values())
            in_flight = len(self._in_flight)
        return {
            "in_flight": in_flight,
            "live_rows": sum(w.live_rows for w in workers),
            "acoustic_queue": len(self._acoustic_queue),
        }

    def close(self) -> None:
        """Stop the threads; requests still in flight fail with RequestCancelledError."""
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
            self._workers.clear()
            handles = list(self._in_flight)
        for handle in handles:
            handle._fail(RequestCancelledError("the engine is shutting down"))
        for worker in workers:
            self._retire(worker)
        with self._acoustic_cond:
            self._acoustic_cond.notify_all()
        self._frontend.shutdown(wait=True)
        if self._acoustic_thread is not None:
            self._acoustic_thread.join(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _worker(self, model: VoiceModel) -> _GptWorker:
        """The model's GPT thread (caller holds ``_lock``)."""
        worker = self._workers.get(id(model))
        if worker is None:
            name = next((n for n, m in self._models.items() if m is model), "model")
            worker = self._workers[id(model)] = _GptWorker(self, model, name)
        return worker

    @staticmethod
    def _retire(worker: _GptWorker) -> None:
        worker.stop()
        worker.thread.join(timeout=30)

    def _finished(self, handle: RequestHandle) -> None:
        with self._lock:
            self._in_flight.discard(handle)

    def _prepare(self, handle: RequestHandle, model: VoiceModel, worker: _GptWorker) -> None:
        """Frontend thread: voice and segments, then on to the GPT."""
        request = handle.request
        try:
            if handle.cancelled:
                raise RequestCancelledError(f"request {handle.id} was cancelled")
            config = request.config
            t0 = time.perf_counter()
            handle.timings["queue"] = t0 - handle.submitted
            voice = model.resolve_voice(
                request.voice,
                request.ref_audio,
                request.prompt_text,
                request.prompt_lang,
                config,
                request.check_duration,
            )
            t1 = time.perf_counter()
            segments, text_metadata = model.frontend(request.text, request.lang, config)
            handle.timings.update(
                reference=t1 - t0, frontend=time.perf_counter() - t1, t2s=0.0, sovits=0.0
            )
            seed = config.seed if config.seed >= 0 else secrets.randbits(31)
            job = _Job(handle, model, config, seed, voice, segments)
            handle._start(
                len(segments),
                {
                    "seed": seed,
                    "segments": [{"text": s.text, "tokens": 0} for s in segments],
                    "text": text_metadata,
                    "sample_rate": model.acoustic.sample_rate,
                },
            )
        except Exception as exc:
            handle._fail(exc if isinstance(exc, GsvError) else GsvError(f"frontend: {exc}"))
            worker.prepared()
            return
        if segments:
            worker.enqueue(job)
        worker.prepared()

    def _vocode(self, job: _Job, index: int, tokens: np.ndarray, final: bool) -> None:
        """GPT thread: queue audio work for a finished segment or a due streaming window."""
        if job.handle.request.stream == "token":
            chunker = job.chunkers.setdefault(
                index,
                TokenChunker(job.config.min_chunk_length, job.config.overlap_length),
            )
            window = chunker.next_window(len(tokens), final)
            if window is None and not final:
                return
            start, end = window if window is not None else (0, 0)
        else:
            start, end = 0, len(tokens)
        task = _AcousticTask(job, index, tokens[start:end], start, end, final)
        with self._acoustic_cond:
            self._acoustic_queue.append(task)
            self._acoustic_cond.notify()

    def _start_acoustic(self) -> None:
        if self._acoustic_thread is None:
            self._acoustic_thread = threading.Thread(
                target=self._acoustic_loop, name="gsv-acoustic", daemon=True
            )
            self._acoustic_thread.start()

    def _take_acoustic(self) -> list[_AcousticTask] | None:
        with self._acoustic_cond:
            while not self._acoustic_queue and not self._closed:
                self._acoustic_cond.wait()
            if not self._acoustic_queue:
                return None
            first = self._acoustic_queue.popleft()
            tasks = [first]
            if first.job.handle.request.stream == "segment" and len(first.tokens):
                voice = first.job.voice
                for task in list(self._acoustic_queue):
                    if len(tasks) >= self.config.acoustic_batch:
                        break
                    if (
                        task.job.voice is voice
                        and task.job.model is first.job.model
                        and task.job.handle.request.stream == "segment"
                        and task.job.config.speed_factor == first.job.config.speed_factor
                        and len(task.tokens)
                    ):
                        self._acoustic_queue.remove(task)
                        tasks.append(task)
            return tasks

    def _acoustic_loop(self) -> None:
        while True:
            tasks = self._take_acoustic()
            if tasks is None:
                return
            tasks = [t for t in tasks if not t.job.cancelled]
            if not tasks:
                continue
            started = time.perf_counter()
            try:
                waves = self._run_acoustic(tasks)
            except Exception as exc:
                _LOGGER.exception("acoustic stage failed")
                error = exc if isinstance(exc, GsvError) else GsvError(f"acoustic stage: {exc}")
                for task in tasks:
                    task.job.handle._fail(error)
                continue
            share = (time.perf_counter() - started) / len(tasks)
            for task, wav in zip(tasks, waves, strict=True):
                handle = task.job.handle
                handle.timings["sovits"] = handle.timings.get("sovits", 0.0) + share
                handle._add_chunk(self._chunk(task, wav))

    def _run_acoustic(self, tasks: list[_AcousticTask]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(tasks)
        todo = [i for i, t in enumerate(tasks) if len(t.tokens)]
        for i in set(range(len(tasks))) - set(todo):
            out[i] = np.zeros(0, np.float32)
        if todo:
            first = tasks[todo[0]].job
            jobs = [
                VocodeJob(
                    tokens=tasks[i].tokens,
                    phones=tasks[i].job.segments[tasks[i].index].phones,
                    voice=tasks[i].job.voice,  # type: ignore[arg-type]
                    noise=tasks[i].job.noise(tasks[i].index),
                    speed=tasks[i].job.config.speed_factor,
                    noise_scale=tasks[i].job.config.resolved_noise_scale(
                        first.model.bundle.manifest.sampling
                    ),
                    token_offset=tasks[i].start,
                    sample_steps=tasks[i].job.config.sample_steps,
                    cfg_rate=tasks[i].job.config.cfg_rate,
                    parallel=tasks[i].job.config.parallel_infer,
                )
                for i in todo
            ]
            for i, wav in zip(todo, first.model.acoustic.vocode(jobs), strict=True):
                out[i] = wav
        return [w if w is not None else np.zeros(0, np.float32) for w in out]

    def _chunk(self, task: _AcousticTask, wav: np.ndarray) -> AudioChunk:
        job, model = task.job, task.job.model
        rate = model.acoustic.sample_rate
        text = job.segments[task.index].text
        if job.handle.request.stream == "token":
            stitcher = job.stitchers.setdefault(
                task.index,
                TokenStitcher(
                    model.acoustic.samples_per_token / job.config.speed_factor,
                    job.config.overlap_length,
                ),
            )
            before = stitcher.emitted
            wav = stitcher.add(wav, task.start, task.end, task.final) if len(wav) else wav
            covered = stitcher.emitted - before
        else:
            covered = task.end - task.start
            peak = float(np.abs(wav).max()) if wav.size else 0.0
            if peak > 1.0:
                wav = wav / peak
        if task.final:
            # upstream counts the gap at the SoVITS config's rate (32 kHz), also for v3/v4
            gap_rate = getattr(model, "ref_sample_rate", rate)
            gap = np.zeros(int(gap_rate * job.config.fragment_interval), dtype=np.float32)
            wav = np.concatenate([wav, gap])
        return AudioChunk(to_int16(wav), rate, task.index, text, covered, task.final)
