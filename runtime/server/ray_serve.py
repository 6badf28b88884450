"""Scale-out on Ray Serve: replicas of the serving engine behind the routes of ``gsv serve``.

Two deployments make the application:

- ``EngineReplica``: one :class:`~gsv_runtime.engine.Engine` per replica. Voices (bundle folders)
  are loaded on demand through Ray Serve model multiplexing, keyed by the bundle's folder, so a
  request goes to a replica that already holds its bundle; at most ``voices_per_replica`` per
  replica, the least recently used unloaded first (requests in flight on it finish).
- ``Gateway``: the HTTP ingress. It mounts :func:`~gsv_runtime.server.app.create_app` — the same
  routes as ``gsv serve`` — on a :class:`RemoteEngine` that forwards each request to the
  replicas and streams the chunks back. It reads manifests, never compiles a graph.

Faults: a request whose replica dies before it has produced audio is sent again to another
replica (``retries`` times); one that had already produced audio fails with
ServiceUnavailableError (HTTP 503). Every node must see the bundles and client-named files at the
same paths (a shared filesystem); saved voices travel inside the request.

Threads: the gateway and the replicas are asyncio actors; each replica's engine follows the
engine's own thread rule.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gsv_runtime.bundle import Bundle
from gsv_runtime.config import RuntimeConfig
from gsv_runtime.engine import AudioChunk, Engine, EngineConfig, SynthesisRequest
from gsv_runtime.errors import (
    BackendError,
    BundleError,
    EngineBusyError,
    GsvError,
    InputError,
    ServiceUnavailableError,
    first_line,
)
from gsv_runtime.server.app import ServerSettings, create_app
from gsv_runtime.server.voices import load_catalog

APP_NAME = "gsv"


@dataclass(frozen=True)
class RayServeOptions:
    """How many replicas, what each holds, and how requests reach them."""

    replicas: int = 1
    """Replicas at start (and the minimum when autoscaling)."""
    max_replicas: int | None = None
    """Above ``replicas``: autoscale up to this many on ongoing requests per replica."""
    target_ongoing_requests: float = 4.0
    """Autoscaling target: requests in flight per replica."""
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    """GPU fraction per replica (with ``RuntimeConfig.device='cuda'``)."""
    voices_per_replica: int = 4
    """Bundles one replica keeps loaded (least recently used unloaded first)."""
    max_ongoing_requests: int = 16
    """Requests one replica runs at once (its engine batches them)."""
    max_queued_requests: int = 64
    """Requests the gateway holds waiting for a replica; beyond it: 503."""
    retries: int = 2
    """Times a request is sent again when its replica dies before producing audio."""

    def validate(self) -> None:
        """Raise InputError naming the first bad value."""
        checks = [
            ("replicas", self.replicas >= 1, ">= 1"),
            (
                "max_replicas",
                self.max_replicas is None or self.max_replicas >= self.replicas,
                ">= replicas",
            ),
            ("target_ongoing_requests", self.target_ongoing_requests > 0, "> 0"),
            ("replica_cpus", self.replica_cpus >= 0, ">= 0"),
            ("replica_gpus", self.replica_gpus >= 0, ">= 0"),
            ("voices_per_replica", self.voices_per_replica >= 1, ">= 1"),
            ("max_ongoing_requests", self.max_ongoing_requests >= 1, ">= 1"),
            ("max_queued_requests", self.max_queued_requests >= 1, ">= 1"),
            ("retries", self.retries >= 0, ">= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise InputError(f"{name} must be {rule}, got {getattr(self, name)!r}")

    def deployment_options(self) -> dict[str, Any]:
        """``serve.deployment(...).options`` of the replica deployment."""
        scaling: dict[str, Any]
        if self.max_replicas is not None and self.max_replicas > self.replicas:
            scaling = {
                "autoscaling_config": {
                    "min_replicas": self.replicas,
                    "max_replicas": self.max_replicas,
                    "target_ongoing_requests": self.target_ongoing_requests,
                }
            }
        else:
            scaling = {"num_replicas": self.replicas}
        return {
            **scaling,
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            # held at the caller (the gateway) beyond what the replicas run; more: 503
            "max_queued_requests": self.max_queued_requests,
        }


@dataclass(frozen=True)
class RemoteModel:
    """A bundle as the gateway knows it: where it lies and its sample rate (no graphs)."""

    folder: Path
    sample_rate: int

    @classmethod
    def describe(cls, folder: Path) -> RemoteModel:
        """Read ``folder``'s manifest (sizes checked, nothing compiled).

        Raises:
            BundleError: not a voice bundle.
        """
        bundle = Bundle.load(folder)
        if bundle.manifest.kind != "voice":
            raise BundleError(f"{folder}: a {bundle.manifest.kind} bundle is not a voice")
        return cls(Path(folder).resolve(), int(bundle.manifest.audio["sample_rate"]))


@dataclass
class GatewaySetup:
    """What the gateway serves: the voices file or bundles, and the server settings."""

    voices_file: Path | None = None
    bundles: tuple[Path, ...] = ()
    settings: ServerSettings = field(default_factory=ServerSettings)
    retries: int = 2


class _LoadedModel:
    """A bundle loaded in a replica's engine; Ray Serve calls ``__del__`` when it unloads it."""

    def __init__(self, engine: Engine, name: str, model: Any) -> None:
        self.engine, self.name, self.model = engine, name, model

    def __del__(self) -> None:
        # only if the engine still runs this very model (it may have been loaded again)
        if self.engine.models.get(self.name) is self.model:
            self.engine.remove_model(self.name)


class EngineReplicaBase:
    """Body of the replica deployment (see :func:`build_app`, which adds the multiplexing)."""

    async def __init__(
        self, runtime: RuntimeConfig, engine: EngineConfig, preload: tuple[str, ...] = ()
    ) -> None:
        self.runtime = runtime
        self.engine = Engine(config=engine)
        for model_id in preload:  # a replica starts ready for the first voices
            await self.voice_model(model_id)

    async def open(self, model_id: str) -> _LoadedModel:
        from gsv_runtime.engine import VoiceModel
        from gsv_runtime.server.voices import first_prompt

        def compile_bundle() -> VoiceModel:
            folder = Path(model_id)
            return VoiceModel(Bundle.load(folder), self.runtime, warm_up=first_prompt(folder))

        model = await asyncio.to_thread(compile_bundle)
        self.engine.add_model(model_id, model)
        return _LoadedModel(self.engine, model_id, model)

    async def voice_model(self, model_id: str) -> _LoadedModel:  # replaced by build_app
        return await self.open(model_id)

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[Any]:
        """The request's chunks, then ``{"timings", "metadata"}``; cancelled with the caller."""
        from ray import serve

        model_id = serve.get_multiplexed_model_id()
        await self.voice_model(model_id)
        handle = self.engine.submit(replace(request, model=model_id))
        try:
            async for chunk in handle:
                yield chunk
            yield {"timings": handle.timings, "metadata": handle.metadata}
        finally:
            if not handle.done:
                handle.cancel()

    def stats(self) -> dict[str, int]:
        return {**self.engine.stats(), "models": len(self.engine.models)}

    def __del__(self) -> None:
        self.engine.close()


class RemoteHandle:
    """A request running on some replica, as the routes see it (cf. ``RequestHandle``)."""

    def __init__(self, start: Callable[[], Any], retries: int, owner: RemoteEngine) -> None:
        self._start, self._retries, self._owner = start, retries, owner
        self._call: Any = None
        self._done = False
        self.timings: dict[str, float] = {}
        self.metadata: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        self._done = True
        if self._call is not None:
            self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
        )

        lost = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
        produced = False
        self._owner.in_flight += 1
        try:
            for attempt in range(self._retries + 1):
                self._call = self._start()
                try:
                    async for item in self._call:
                        if isinstance(item, AudioChunk):
                            produced = True
                            yield item
                        else:
                            self.timings, self.metadata = item["timings"], item["metadata"]
                    return
                except BackPressureError:
                    raise EngineBusyError("all replicas are busy; retry later") from None
                except RayTaskError as exc:
                    raise _cause(exc) from None
                except lost as exc:
                    if produced or attempt == self._retries:
                        raise ServiceUnavailableError(
                            f"the replica serving this request was lost ({first_line(exc)})"
                        ) from None
                    self._owner.retried += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
        finally:
            self._done = True
            self._owner.in_flight -= 1


def _cause(exc: BaseException) -> GsvError:
    """The project error a replica raised (Ray wraps it), or a BackendError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, GsvError):
        return cause
    return BackendError(f"replica failed: {first_line(cause or exc)}")


class RemoteEngine:
    """The engine interface of the routes (``EngineClient``), answered by the replicas."""

    def __init__(self, replicas: Any, models: dict[str, RemoteModel], retries: int) -> None:
        self._replicas = replicas
        self._models = dict(models)
        self._retries = retries
        self.in_flight = 0
        self.retried = 0

    @property
    def models(self) -> dict[str, RemoteModel]:
        return dict(self._models)

    def model(self, name: str | None = None) -> RemoteModel:
        if name is None and len(self._models) == 1:
            return next(iter(self._models.values()))
        model = self._models.get(name or "default")
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise InputError(f"unknown model {name!r}; loaded: {known}")
        return model

    def add_model(self, name: str, model: RemoteModel) -> None:
        self._models[name] = model

    def submit(self, request: SynthesisRequest) -> RemoteHandle:
        key = str(self.model(request.model).folder)

        def start() -> Any:
            options = self._replicas.options(multiplexed_model_id=key, stream=True)
            return options.synthesize.remote(request)

        return RemoteHandle(start, self._retries, self)

    def stats(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "retried": self.retried}


class GatewayBase:
    """Body of the ingress deployment: the routes of ``gsv serve`` on a RemoteEngine."""

    def __init__(self, replicas: Any, setup: GatewaySetup) -> None:
        catalog = load_catalog(
            setup.voices_file, list(setup.bundles), RuntimeConfig(), RemoteModel.describe
        )
        self.engine = RemoteEngine(replicas, catalog.models, setup.retries)
        self.routes = create_app(self.engine, catalog, setup.settings)

    def __serve_build_asgi_app__(self) -> Any:
        return self.routes


def _serve() -> Any:
    """The ``ray.serve`` module, or a BackendError saying how to install it."""
    try:
        from ray import serve
    except ImportError:
        raise BackendError("Ray Serve is not installed: pip install 'gsv-rt[ray]'") from None
    return serve


def build_app(
    setup: GatewaySetup,
    runtime: RuntimeConfig,
    engine: EngineConfig,
    options: RayServeOptions,
) -> Any:
    """The Ray Serve application: ``serve.run(build_app(...))``.

    Raises:
        InputError: bad options; BundleError: a bundle the gateway cannot read;
        BackendError: Ray Serve is not installed.
    """
    options.validate()
    serve = _serve()
    engine.validate()
    # read here too: a bad voices file or bundle fails now, not in the gateway's constructor
    catalog = load_catalog(
        setup.voices_file, list(setup.bundles), RuntimeConfig(), RemoteModel.describe
    )
    preload = tuple(str(m.folder) for m in catalog.models.values())[: options.voices_per_replica]

    class EngineReplica(EngineReplicaBase):
        @serve.multiplexed(max_num_models_per_replica=options.voices_per_replica)
        async def voice_model(self, model_id: str) -> _LoadedModel:
            return await self.open(model_id)

    class Gateway(GatewayBase):
        pass

    replica = serve.deployment(EngineReplica).options(**options.deployment_options())
    gateway = serve.deployment(serve.ingress()(Gateway)).options(
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(options.max_queued_requests, 1),
    )
    return gateway.bind(replica.bind(runtime, engine, preload), setup)


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run gsv_runtime.server.ray_serve:app_builder voices=voices.toml replicas=2``.

    Keys: voices, models (comma-separated bundles), allow_dirs (comma-separated), api_key,
    backend, device, threads, precision, max_rows, and any :class:`RayServeOptions` field.
    """
    args = dict(args)

    def take(name: str, kind: Callable[[str], Any] = str, default: Any = None) -> Any:
        raw = args.pop(name, None)
        if raw is None:
            return default
        try:
            return kind(str(raw))
        except ValueError:
            raise InputError(f"{name}={raw!r} is not a valid {kind.__name__}") from None

    def paths(raw: str | None) -> tuple[Path, ...]:
        return tuple(Path(p) for p in (raw or "").split(",") if p)

    voices = take("voices")
    setup = GatewaySetup(
        Path(voices) if voices else None,
        paths(take("models")),
        ServerSettings(allow_dirs=paths(take("allow_dirs")), api_key=take("api_key")),
    )
    runtime = RuntimeConfig(
        backend=take("backend", default="auto"),
        device=take("device", default="cpu"),
        threads=take("threads", int),
        precision=take("precision", default="auto"),
    )
    engine = EngineConfig(max_rows=take("max_rows", int))
    fields = RayServeOptions.__dataclass_fields__
    chosen: dict[str, Any] = {}
    for name in list(args):
        if name not in fields:
            raise InputError(f"unknown argument {name!r}")
        kind = float if fields[name].type in ("float", "float | None") else int
        chosen[name] = take(name, kind)
    options = RayServeOptions(**chosen)
    setup.retries = options.retries
    if setup.voices_file is None and not setup.bundles:
        raise InputError("give voices=voices.toml or models=BUNDLE[,BUNDLE]")
    return build_app(setup, runtime, engine, options)


def run_local(
    app: Any,
    host: str,
    port: int,
    address: str | None = None,
    num_cpus: int | None = None,
) -> None:
    """Start (or join, with ``address``) a Ray cluster, serve ``app`` over HTTP on
    ``host:port`` and block until interrupted."""
    import ray

    serve = _serve()
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM (and SIGINT, which a shell ignores for background jobs) end the blocking run,
    # so the deployment and the local cluster are shut down instead of left behind
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(app, blocking=True, name=APP_NAME, route_prefix="/")
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
