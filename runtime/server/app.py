"""The HTTP routes: upstream api_v2 (``/tts`` and its control routes) and OpenAI speech
(``/v1/audio/speech``), as a thin client of the engine.

:func:`create_app` holds every route once, so ``gsv serve`` and any other host (a scale-out
ingress) mount the same implementation. Every request goes through the engine's queue; a full
queue answers 503 with ``Retry-After``; a client that disconnects cancels its request.

Deliberate differences from upstream api_v2 (its behaviour in brackets):

- a failed synthesis is a 4xx/5xx JSON error, never audio [some failures return 200];
- a missing ``text_lang``/``prompt_lang`` is a 400 [500 on GET];
- streamed WAV starts with a header whose sizes are 0xFFFFFFFF [sizes 0, refused by players];
- every client-named path (``ref_audio_path``, ``aux_ref_audio_paths``, weights) must lie in an
  ``--allow-dir`` folder [any path is read];
- ``/set_gpt_weights`` and ``/set_sovits_weights`` take a voice bundle (folder inside an allowed
  directory, or a loaded model's name): a bundle carries both models;
- ``/control?command=restart`` answers 400 (restart the process instead); ``exit`` stops;
- accepted and ignored: ``batch_threshold``, ``split_bucket``, ``super_sampling``,
  ``use_cuda_graph`` (``sample_steps``, ``cfg_rate`` and ``parallel_infer`` set the v3/v4/v5
  Euler steps, guidance and chunking and have no effect on v1–v2ProPlus bundles; v5 takes
  steps 4/8/16/32 and cfg_rate in [0, 2], else 400); ``streaming_mode`` 2
  and 3 both stream token windows (see the engine);
- wav, raw, mp3, opus and aac stream; ogg (Vorbis) and flac are encoded whole;
- extensions: ``voice`` (a configured voice instead of a reference path) and
  ``ref_audio_base64`` (a reference clip in the POST body, bounded by the body limit).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from gsv_runtime.bundle import Bundle
from gsv_runtime.config import SynthesisConfig
from gsv_runtime.engine import AudioChunk, SynthesisRequest, VoiceModel
from gsv_runtime.errors import (
    BackendError,
    BundleError,
    EngineBusyError,
    GsvError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from gsv_runtime.server.media import (
    CONTENT_TYPES,
    STREAMABLE,
    StreamEncoder,
    check_format,
    encode,
)
from gsv_runtime.server.voices import VoiceCatalog

_ACCESS = logging.getLogger("gsv.access")

OPTION_NAMES: Final = frozenset(
    f for f in SynthesisConfig.__dataclass_fields__ if f not in ("fixed_length", "max_steps")
)
"""Synthesis options a client may set (upstream names)."""
IGNORED: Final = frozenset(
    {
        "batch_threshold",
        "split_bucket",
        "super_sampling",
        "use_cuda_graph",
        "return_fragment",
    }
)
"""api_v2 options without meaning for these models: accepted and ignored."""
OPENAI_FORMATS: Final = ("mp3", "opus", "aac", "flac", "wav", "pcm")
API_V2_DEFAULTS: Final = {"text_split_method": "cut5"}
"""Where api_v2's request model defaults differ from the runtime's (upstream TTS.run's)."""


class StreamHandle(Protocol):
    """What the routes need of a submitted request (``RequestHandle`` in one process)."""

    timings: dict[str, float]
    metadata: dict[str, Any]

    @property
    def done(self) -> bool: ...

    def cancel(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[AudioChunk]: ...


class EngineClient(Protocol):
    """What the routes need of an engine: the local ``Engine``, or an adapter that forwards to
    remote replicas (``gsv_runtime.server.ray_serve``)."""

    @property
    def models(self) -> dict[str, Any]: ...

    def model(self, name: str | None = None) -> Any: ...

    def add_model(self, name: str, model: Any) -> None: ...

    def submit(self, request: SynthesisRequest) -> StreamHandle: ...

    def stats(self) -> dict[str, int]: ...


@dataclass
class ServerSettings:
    """What a deployment decides: allowed folders, key, bounds."""

    allow_dirs: tuple[Path, ...] = ()
    """Folders client-named paths must lie in; none: clients may name no path."""
    api_key: str | None = None
    """Bearer key every route but /health needs (None: open)."""
    max_body_bytes: int = 4 << 20
    """Largest request body (a base64 reference clip included)."""
    retry_after: int = 1
    """Seconds a client is told to wait when the queue is full."""
    shutdown: Callable[[], None] | None = None
    """Called by /control?command=exit."""


class HttpError(Exception):
    """A JSON error response ``{"message": ...}`` with a status code."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def status_of(exc: GsvError) -> int:
    """HTTP status of a project error."""
    if isinstance(exc, (EngineBusyError, ServiceUnavailableError)):
        return 503
    if isinstance(exc, RequestTimeoutError):
        return 504
    if isinstance(exc, BackendError):
        return 500
    return 400


@dataclass
class _State:
    engine: EngineClient
    catalog: VoiceCatalog
    settings: ServerSettings
    default_model: str | None = None
    refer_audio: Path | None = None
    metrics: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def confine(self, raw: Any, what: str = "file") -> Path:
        """A client-named path inside an allowed folder (symlinks resolved).

        Raises:
            HttpError: 403 outside, or paths disabled; 400 missing or malformed.
        """
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise HttpError(400, f"{what} path must be a non-empty string")
        if not self.settings.allow_dirs:
            raise HttpError(403, "this server accepts no file paths (start it with --allow-dir)")
        path = Path(raw)
        roots = [d.resolve() for d in self.settings.allow_dirs]
        candidates = [path] if path.is_absolute() else [root / path for root in roots]
        for candidate in candidates:
            try:
                resolved = candidate.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if any(resolved.is_relative_to(root) for root in roots):
                ok = resolved.is_dir() if what == "bundle" else resolved.is_file()
                if ok:
                    return resolved
                raise HttpError(400, f"{raw}: not a {'folder' if what == 'bundle' else 'file'}")
            raise HttpError(403, f"{raw}: outside the allowed directories")
        raise HttpError(400, f"{raw}: no such {what} in the allowed directories")


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise HttpError(400, f"{name} must be true or false, got {value!r}")


def streaming_of(value: Any) -> str | None:
    """api_v2 ``streaming_mode`` → None (whole file), ``segment`` or ``token``."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if value is False or value == 0 or value is None:
        return None
    if value is True or value == 1:
        return "segment"
    if value in (2, 3):
        return "token"
    raise HttpError(400, "the value of streaming_mode must be 0, 1, 2, 3 or true/false")


def _options(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - OPTION_NAMES - IGNORED - _REQUEST_KEYS)
    if unknown:
        raise HttpError(400, f"unknown parameter(s) {unknown}")
    return {k: v for k, v in params.items() if k in OPTION_NAMES and v is not None}


_REQUEST_KEYS: Final = frozenset(
    {
        "text",
        "text_lang",
        "ref_audio_path",
        "prompt_text",
        "prompt_lang",
        "media_type",
        "streaming_mode",
        "voice",
        "model",
        "ref_audio_base64",
    }
)


async def _chunks(handle: StreamHandle, cleanup: Callable[[], None]) -> AsyncIterator[AudioChunk]:
    """The handle's chunks; the request is cancelled if the consumer stops early, and its
    uploaded reference (if any) removed once it is over."""
    try:
        async for chunk in handle:
            yield chunk
    finally:
        if not handle.done:
            handle.cancel()
        cleanup()


def create_app(engine: EngineClient, catalog: VoiceCatalog, settings: ServerSettings) -> Any:
    """The FastAPI application serving ``engine``'s models and ``catalog``'s voices."""
    state = _State(engine, catalog, settings, next(iter(catalog.models), None))
    state.metrics = _Metrics(engine)
    app = FastAPI(title="gsv-rt", docs_url=None, redoc_url=None)
    app.state.gsv = state

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"message": message}, status_code=status, headers=headers)

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> Any:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(GsvError)
    async def _gsv_error(request: Request, exc: GsvError) -> Any:
        headers = {"Retry-After": str(settings.retry_after)} if status_of(exc) == 503 else None
        return error(status_of(exc), str(exc), headers)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        route = request.url.path
        if settings.api_key and route != "/health":
            given = request.headers.get("authorization", "")
            expected = f"Bearer {settings.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                response = error(401, "missing or wrong API key (Authorization: Bearer ...)")
                return _logged(route, response, start)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            response = error(413, f"request body larger than {settings.max_body_bytes} bytes")
            return _logged(route, response, start)
        try:
            response = await call_next(request)
        except Exception:  # never a traceback to the client; the log has it
            logging.getLogger(__name__).exception("unhandled error on %s", route)
            response = error(500, "internal error")
        return _logged(route, response, start)

    def _logged(route: str, response: Any, start: float) -> Any:
        seconds = time.perf_counter() - start
        state.metrics.observe(route, response.status_code, seconds)
        _ACCESS.info(
            json.dumps({"route": route, "status": response.status_code, "ms": round(seconds * 1e3)})
        )
        return response

    async def synthesize(
        request: SynthesisRequest,
        media: str,
        streaming: str | None,
        cleanup: Callable[[], None] = lambda: None,
    ) -> Any:
        try:
            handle = engine.submit(request)  # EngineBusyError → 503
        except BaseException:
            cleanup()
            raise
        chunks = _chunks(handle, cleanup)
        if streaming is None or media not in STREAMABLE:
            parts = [c async for c in chunks]
            samples = np.concatenate([c.samples for c in parts]) if parts else np.zeros(0, "i2")
            rate = parts[0].sample_rate if parts else request_rate(request)
            state.metrics.finished(handle)
            return Response(encode(samples, rate, media), media_type=CONTENT_TYPES[media])
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = None

        encoder = StreamEncoder(media, first.sample_rate if first else request_rate(request))

        async def body() -> AsyncIterator[bytes]:
            if first is not None:
                yield encoder.feed(first.samples)
            async for chunk in chunks:
                yield encoder.feed(chunk.samples)
            yield encoder.close()
            state.metrics.finished(handle)

        return StreamingResponse(body(), media_type=CONTENT_TYPES[media])

    def request_rate(request: SynthesisRequest) -> int:
        return engine.model(request.model).sample_rate

    def build(
        params: dict[str, Any],
        stream: str = "segment",
        openai: bool = False,
        uploaded: Path | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> SynthesisRequest:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise HttpError(400, "text is required")
        lang = params.get("text_lang")
        if not isinstance(lang, str) or not lang:
            raise HttpError(400, "text_lang is required")
        explicit = _options(params)
        options = {**(defaults or {}), **explicit}
        named = params.get("voice")
        model = params.get("model") if params.get("model") in catalog.models else None
        voice: Any = None
        ref = prompt_text = None
        prompt_lang = "zh"
        if named is not None:
            entry = catalog.voices.get(str(named))
            if entry is None:
                raise HttpError(400, f"unknown voice {named!r}; see /v1/audio/voices")
            model = entry.model
            options = {**(defaults or {}), **entry.options, **explicit}
            voice, ref = entry.voice, entry.ref_audio
            prompt_text, prompt_lang = entry.prompt_text, entry.prompt_lang
        elif params.get("ref_audio_path") or uploaded or state.refer_audio is not None:
            raw = params.get("ref_audio_path")
            ref = uploaded or (state.confine(raw, "reference audio") if raw else state.refer_audio)
            prompt_lang = params.get("prompt_lang")
            if not isinstance(prompt_lang, str) or not prompt_lang:
                raise HttpError(400, "prompt_lang is required")
            prompt_text = str(params.get("prompt_text") or "")
            model = model or state.default_model
        elif openai:
            raise HttpError(400, "voice is required (see /v1/audio/voices)")
        else:
            raise HttpError(400, "ref_audio_path is required (or voice, a configured voice)")
        aux = options.get("aux_ref_audio_paths")
        if aux:
            if not isinstance(aux, list):
                raise HttpError(400, "aux_ref_audio_paths must be a list of paths")
            options["aux_ref_audio_paths"] = [str(state.confine(p, "reference audio")) for p in aux]
        return SynthesisRequest.from_options(
            text,
            lang.lower(),
            voice,
            ref_audio=ref,
            prompt_text=prompt_text or "",
            prompt_lang=prompt_lang.lower(),
            model=model,
            stream=stream,  # type: ignore[arg-type]
            **options,
        )

    async def tts(params: dict[str, Any]) -> Any:
        media = check_format(str(params.get("media_type") or "wav"))
        streaming = streaming_of(params.get("streaming_mode", False))
        upload = params.pop("ref_audio_base64", None)
        if upload is None:
            request = build(params, streaming or "segment", defaults=API_V2_DEFAULTS)
            return await synthesize(request, media, streaming)
        path = _save_upload(upload)
        try:
            request = build(params, streaming or "segment", uploaded=path, defaults=API_V2_DEFAULTS)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return await synthesize(request, media, streaming, lambda: path.unlink(missing_ok=True))

    @app.get("/tts")
    async def tts_get(request: Request) -> Any:
        params: dict[str, Any] = dict(request.query_params)
        if "aux_ref_audio_paths" in request.query_params:
            params["aux_ref_audio_paths"] = request.query_params.getlist("aux_ref_audio_paths")
        return await tts(_typed_query(params))

    @app.post("/tts")
    async def tts_post(request: Request) -> Any:
        return await tts(await _json_object(request))

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Any:
        body = await _json_object(request)
        text = body.pop("input", None)
        media = body.pop("response_format", "mp3")
        if media not in OPENAI_FORMATS:
            raise HttpError(400, f"response_format must be one of {', '.join(OPENAI_FORMATS)}")
        check_format(media)
        speed = body.pop("speed", None)
        body.pop("instructions", None)
        stream_format = body.pop("stream_format", None)
        lang = body.pop("lang", "auto")
        params = {**body, "text": text, "text_lang": lang}
        if speed is not None:
            params["speed_factor"] = speed
        streaming = "segment" if stream_format == "audio" else None
        return await synthesize(build(params, openai=True), media, streaming)

    @app.get("/v1/audio/voices")
    async def voices() -> Any:
        return {
            "voices": [{"id": n, "name": n, "model": v.model} for n, v in catalog.voices.items()]
        }

    @app.get("/v1/models")
    async def models() -> Any:
        data = [{"id": name, "object": "model", "owned_by": "gsv-rt"} for name in engine.models]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "ready": bool(engine.models), **engine.stats()}

    @app.get("/metrics")
    async def metrics() -> Any:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    async def switch(weights_path: str | None, which: str) -> Any:
        if not weights_path:
            raise HttpError(400, f"{which} weight path is required")
        if weights_path in engine.models:
            state.default_model = weights_path
            return {"message": "success"}
        folder = state.confine(weights_path, "bundle")
        from fastapi.concurrency import run_in_threadpool

        opener = catalog.open_model or (lambda b: VoiceModel(Bundle.load(b)))
        try:
            model = await run_in_threadpool(opener, folder)
        except (BundleError, BackendError) as exc:
            raise HttpError(400, f"change {which} weight failed: {exc}") from None
        engine.add_model(folder.name, model)
        catalog.models[folder.name] = model
        state.default_model = folder.name
        return {"message": "success"}

    @app.get("/set_gpt_weights")
    async def set_gpt_weights(weights_path: str | None = None) -> Any:
        return await switch(weights_path, "gpt")

    @app.get("/set_sovits_weights")
    async def set_sovits_weights(weights_path: str | None = None) -> Any:
        return await switch(weights_path, "sovits")

    @app.get("/set_refer_audio")
    async def set_refer_audio(refer_audio_path: str | None = None) -> Any:
        state.refer_audio = state.confine(refer_audio_path, "reference audio")
        return {"message": "success"}

    @app.api_route("/control", methods=["GET", "POST"])
    async def control(request: Request) -> Any:
        command = request.query_params.get("command")
        if command is None and request.method == "POST":
            command = (await _json_object(request)).get("command")
        if command == "exit":
            if settings.shutdown is None:
                raise HttpError(400, "exit is not supported by this deployment")
            settings.shutdown()
            return {"message": "success"}
        if command == "restart":
            raise HttpError(400, "restart is not supported here; restart the process instead")
        raise HttpError(400, "command is required: exit (restart is not supported)")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Any:
        return resources.files("gsv_runtime.server").joinpath("page.html").read_text("utf-8")

    return app


_INTS: Final = (
    "top_k",
    "batch_size",
    "seed",
    "overlap_length",
    "min_chunk_length",
    "sample_steps",
)
_FLOATS: Final = (
    "top_p",
    "temperature",
    "repetition_penalty",
    "speed_factor",
    "fragment_interval",
    "noise_scale",
    "cfg_rate",
)


def _typed_query(params: dict[str, Any]) -> dict[str, Any]:
    """Query strings → the types the options take (400 on a malformed number)."""
    out = dict(params)
    for name, kind in [*((n, int) for n in _INTS), *((n, float) for n in _FLOATS)]:
        if name in out:
            try:
                out[name] = kind(out[name])
            except ValueError:
                raise HttpError(400, f"{name} must be a number, got {out[name]!r}") from None
    for name in ("ref_free", "parallel_infer"):
        if name in out:
            out[name] = _bool(out[name], name)
    return out


def _save_upload(data: Any) -> Path:
    """A base64 reference clip (bounded by the request body limit) in a private temporary
    file; the caller removes it when the request is over."""
    import base64
    import binascii
    import os
    import tempfile

    if not isinstance(data, str):
        raise HttpError(400, "ref_audio_base64 must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, "ref_audio_base64 is not valid base64") from None
    fd, name = tempfile.mkstemp(prefix="gsv-ref-", suffix=".audio")
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return Path(name)


async def _json_object(request: Any) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


class _Metrics:
    """Prometheus metrics of one app (its own registry)."""

    def __init__(self, engine: EngineClient) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gsv_http_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "gsv_http_seconds", "HTTP request time", ["route"], registry=self.registry
        )
        self.rtf = Histogram(
            "gsv_rtf",
            "Real-time factor of finished syntheses",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5),
            registry=self.registry,
        )
        self.audio = Counter("gsv_audio_seconds", "Audio produced", registry=self.registry)
        for key in engine.stats():
            gauge = Gauge(f"gsv_engine_{key}", f"Engine {key}", registry=self.registry)
            gauge.set_function(lambda key=key: engine.stats()[key])

    def observe(self, route: str, status: int, seconds: float) -> None:
        known = route if route in _ROUTES else "other"
        self.requests.labels(known, str(status)).inc()
        self.latency.labels(known).observe(seconds)

    def finished(self, handle: StreamHandle) -> None:
        total = handle.timings.get("total")
        segments = handle.metadata.get("segments", [])
        rate = handle.metadata.get("sample_rate")
        if total and rate:
            seconds = sum(s.get("tokens", 0) for s in segments) * 0.04
            if seconds > 0:
                self.audio.inc(seconds)
                self.rtf.observe(total / seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_ROUTES: Final = frozenset(
    {
        "/tts",
        "/v1/audio/speech",
        "/v1/audio/voices",
        "/v1/models",
        "/health",
        "/metrics",
        "/set_gpt_weights",
        "/set_sovits_weights",
        "/set_refer_audio",
        "/control",
        "/",
    }
)
