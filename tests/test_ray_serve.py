"""Ray Serve scale-out against a local Ray cluster on 127.0.0.1: two replicas, voice-aware
routing, one replica killed mid-run (every answer is the single-process audio or a clean 503),
the killed replica replaced.

Ray's own servers (GCS, raylet, workers) bind the node's reachable address, never just the
loopback; so the cluster tests run in a child pytest inside a private network namespace whose
only interface is ``lo`` (``unshare -rn``), where every Ray server is on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from fastapi.testclient import TestClient  # noqa: E402

from gsv_runtime.config import RuntimeConfig  # noqa: E402
from gsv_runtime.engine import Engine, EngineConfig  # noqa: E402
from gsv_runtime.errors import InputError  # noqa: E402
from gsv_runtime.server import ServerSettings, create_app, load_catalog  # noqa: E402
from gsv_runtime.server.ray_serve import (  # noqa: E402
    APP_NAME,
    GatewaySetup,
    RayServeOptions,
    app_builder,
    build_app,
)
from gsv_runtime.synthesizer import Synthesizer  # noqa: E402

RUNTIME = RuntimeConfig(backend="onnxruntime", threads=1)
IN_NETNS = os.environ.get("GSV_RAY_NETNS") == "1"
in_netns = pytest.mark.skipif(not IN_NETNS, reason="runs in the loopback-only child")
CLUSTER_TESTS = 3
TEXTS = ["今天天气很好。", "我们去公园散步吧，好不好？", "你好。"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bundles(tiny_bundle, ref_wav: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two voice bundles ("alpha" with voice a, "beta" with voice b) and an allowed folder."""
    root = tmp_path_factory.mktemp("ray")
    out = []
    for name, voice, prompt in (("alpha", "a", "这是一段参考音频。"), ("beta", "b", "你好吗？")):
        folder = root / name
        shutil.copytree(tiny_bundle("v2"), folder, ignore=shutil.ignore_patterns("voices"))
        synth = Synthesizer.load(folder, backend="onnxruntime")
        synth.voice(ref_wav, prompt, "zh").save(folder, voice)
        out.append(folder)
    allow = root / "allowed"
    allow.mkdir()
    shutil.copy(ref_wav, allow / "ref.wav")
    return tuple(out), allow


@pytest.fixture(scope="module")
def cluster(bundles):
    folders, allow = bundles
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        setup = GatewaySetup(None, folders, ServerSettings(allow_dirs=(allow,)), retries=3)
        options = RayServeOptions(
            replicas=2, replica_cpus=1, voices_per_replica=1, max_ongoing_requests=4
        )
        serve.run(
            build_app(setup, RUNTIME, EngineConfig(max_queued=16), options),
            name=APP_NAME,
            route_prefix="/",
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _bodies(n: int) -> list[dict]:
    return [
        {
            "text": TEXTS[i % 3],
            "text_lang": "zh",
            "voice": ["a", "b"][i % 2],
            "seed": i,
            "top_k": [15, 1, 5][i % 3],
            "media_type": "raw",
        }
        for i in range(n)
    ]


def _single_process(bundles, bodies: list[dict]) -> list[bytes]:
    folders, allow = bundles
    catalog = load_catalog(None, list(folders), RUNTIME)
    with Engine(dict(catalog.models)) as engine:
        client = TestClient(create_app(engine, catalog, ServerSettings(allow_dirs=(allow,))))
        out = []
        for body in bodies:
            r = client.post("/tts", json=body)
            assert r.status_code == 200, r.text
            out.append(r.content)
    return out


def _replicas() -> list[dict]:
    return [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "EngineReplica" in a["name"] and "SERVE_REPLICA" in a["name"]
    ]


def _running_replicas() -> int:
    app = serve.status().applications[APP_NAME]
    replica = next(d for name, d in app.deployments.items() if "EngineReplica" in name)
    return int(replica.replica_states.get("RUNNING", 0))


def test_cluster_in_loopback_only_namespace() -> None:
    if IN_NETNS:
        pytest.skip("this is the child")
    if not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a loopback-only namespace")
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow a private network namespace (unshare -rn)")
    script = 'ip link set lo up && exec "$0" -m pytest "$1" -q -p no:cacheprovider'
    run = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script, sys.executable, __file__],
        env={**os.environ, "GSV_RAY_NETNS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, tail
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) == CLUSTER_TESTS, tail


@in_netns
def test_same_routes_and_audio_as_gsv_serve(cluster, bundles) -> None:
    bodies = _bodies(4)
    expected = _single_process(bundles, bodies)
    for body, audio in zip(bodies, expected, strict=True):
        r = httpx.post(f"{cluster}/tts", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.content == audio
    voices = httpx.get(f"{cluster}/v1/audio/voices", timeout=30).json()["voices"]
    assert {v["id"] for v in voices} == {"a", "b"}
    r = httpx.post(f"{cluster}/tts", json={"text": "你好。", "text_lang": "zh", "voice": "x"})
    assert r.status_code == 400 and "unknown voice" in r.json()["message"]
    r = httpx.post(f"{cluster}/tts", json={**bodies[0], "top_k": -3}, timeout=60)
    assert r.status_code == 400 and "top_k" in r.json()["message"]  # raised in a replica


@in_netns
def test_streaming_and_reference_path(cluster) -> None:
    query = {
        "text": "先帝创业未半而中道崩殂。",
        "text_lang": "zh",
        "ref_audio_path": "ref.wav",
        "prompt_lang": "zh",
        "prompt_text": "这是一段参考音频。",
        "streaming_mode": 2,
        "seed": 1,
        "media_type": "wav",
    }
    with httpx.stream("GET", f"{cluster}/tts", params=query, timeout=120) as r:
        assert r.status_code == 200
        body = b"".join(r.iter_bytes())
    assert body[:4] == b"RIFF" and len(body) > 44 + 16000


@in_netns
def test_replica_killed_mid_run(cluster, bundles) -> None:
    # several sentences each, so the requests still run when the first answers arrive
    bodies = [{**b, "text": "".join(TEXTS) * 2} for b in _bodies(16)]
    expected = _single_process(bundles, bodies)
    assert len(_replicas()) == 2

    def post(body: dict) -> tuple[int, bytes]:
        r = httpx.post(f"{cluster}/tts", json=body, timeout=180)
        return r.status_code, r.content

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, b) for b in bodies]
        deadline = time.monotonic() + 60
        while not any(f.done() for f in futures) and time.monotonic() < deadline:
            time.sleep(0.02)  # kill once audio is flowing
        assert not all(f.done() for f in futures)  # the kill lands mid-run
        victim = _replicas()[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        answers = [f.result(timeout=240) for f in futures]
    ok = 0
    for (status, content), audio in zip(answers, expected, strict=True):
        if status == 200:
            assert content == audio  # never another request's audio
            ok += 1
        else:
            assert status == 503 and b"message" in content
    assert ok >= len(bodies) // 2
    retried = httpx.get(f"{cluster}/health", timeout=30).json()["retried"]
    print(f"killed {victim['name']}: {ok}/{len(bodies)} answered 200, {retried} retried")
    deadline = time.monotonic() + 120
    while _running_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert _running_replicas() == 2
    status, content = post(bodies[0])
    assert status == 200 and content == expected[0]


@pytest.mark.skipif(IN_NETNS, reason="needs no cluster; runs in the parent")
def test_app_builder_rejects_bad_arguments(tmp_path: Path) -> None:
    folder = str(tmp_path)  # every check below fails before a bundle is read
    with pytest.raises(InputError, match="unknown argument"):
        app_builder({"models": folder, "replcas": "2"})
    with pytest.raises(InputError, match="replicas"):
        app_builder({"models": folder, "replicas": "0"})
    with pytest.raises(InputError, match="not a valid int"):
        app_builder({"models": folder, "replicas": "two"})
    with pytest.raises(InputError, match="voices="):
        app_builder({})


@pytest.mark.skipif(IN_NETNS, reason="needs no cluster; runs in the parent")
def test_cli_ray_refuses_bad_replica_count(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gsv_runtime.cli import main

    result = CliRunner().invoke(main, ["serve", "--ray", "-m", str(tmp_path), "--replicas", "0"])
    assert result.exit_code != 0
    assert "replicas must be >= 1" in result.output


@pytest.mark.skipif(IN_NETNS, reason="needs no cluster; runs in the parent")
def test_unloaded_bundle_leaves_the_engine(tiny_bundle) -> None:
    """Ray Serve calls ``__del__`` on the least recently used bundle it drops: the replica's
    engine forgets it, unless that name was loaded again in the meantime."""
    from gsv_runtime.bundle import Bundle
    from gsv_runtime.engine import VoiceModel
    from gsv_runtime.server.ray_serve import _LoadedModel

    first = VoiceModel(Bundle.load(tiny_bundle("v2")), RUNTIME)
    again = VoiceModel(Bundle.load(tiny_bundle("v2")), RUNTIME)
    with Engine() as engine:
        engine.add_model("a", first)
        loaded = _LoadedModel(engine, "a", first)
        engine.add_model("a", again)  # reloaded under the same name
        loaded.__del__()
        assert engine.models["a"] is again
        _LoadedModel(engine, "a", again).__del__()
        assert "a" not in engine.models
