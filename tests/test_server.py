"""gsv serve: the real server on 127.0.0.1, spoken to over HTTP (api_v2, OpenAI, safety)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from gsv_runtime.config import RuntimeConfig  # noqa: E402
from gsv_runtime.engine import Engine, EngineConfig  # noqa: E402
from gsv_runtime.server import ServerSettings, create_app, load_catalog, make_server  # noqa: E402
from gsv_runtime.synthesizer import Synthesizer  # noqa: E402

PROMPT = "这是一段参考音频。"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """A server in a background thread; ``url`` to reach it, ``stop()`` to end it."""

    def __init__(self, bundle: Path, allow: Path, **engine: object) -> None:
        catalog = load_catalog(None, [bundle], RuntimeConfig(backend="onnxruntime", threads=1))
        self.catalog = catalog
        self.engine = Engine(dict(catalog.models), EngineConfig(**engine))  # type: ignore[arg-type]
        app = create_app(self.engine, catalog, ServerSettings(allow_dirs=(allow,)))
        self.port = _free_port()
        self.server = make_server(app, "127.0.0.1", self.port, "warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.engine.close()


@pytest.fixture(scope="module")
def served(tiny_bundle, ref_wav: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve")
    bundle = root / "voice"
    shutil.copytree(tiny_bundle("v2"), bundle, ignore=shutil.ignore_patterns("voices"))
    allow = root / "allowed"
    allow.mkdir()
    shutil.copy(ref_wav, allow / "ref.wav")
    synth = Synthesizer.load(bundle, backend="onnxruntime")
    synth.voice(ref_wav, PROMPT, "zh").save(bundle, "calm")
    synth.voice(ref_wav, "你好吗？", "zh").save(bundle, "bright")
    running = Running(bundle, allow)
    yield running, root
    running.stop()


def _wav(body: bytes) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(body), dtype="int16")
    return data, rate


def test_server_starts_warm(served) -> None:
    """The model was loaded warm for its first voice's prompt language (zh: BERT ready)."""
    running, _ = served
    (model,) = running.catalog.models.values()
    assert "bert" in model.support._runners


def test_api_v2_docstring_examples(served) -> None:
    running, _ = served
    query = {
        "text": "先帝创业未半而中道崩殂。",
        "text_lang": "zh",
        "ref_audio_path": "ref.wav",
        "prompt_lang": "zh",
        "prompt_text": PROMPT,
        "text_split_method": "cut5",
        "batch_size": 1,
        "media_type": "wav",
        "streaming_mode": "true",
    }
    r = httpx.get(f"{running.url}/tts", params=query, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    body = r.content
    assert body[:4] == b"RIFF" and body[4:8] == b"\xff\xff\xff\xff"
    assert body[40:44] == b"\xff\xff\xff\xff"
    assert int.from_bytes(body[24:28], "little") == 32000 and len(body) > 44 + 32000
    post = {k: v for k, v in query.items() if k != "streaming_mode"} | {"seed": 1}
    r = httpx.post(f"{running.url}/tts", json=post, timeout=60)
    assert r.status_code == 200
    samples, rate = _wav(r.content)
    assert rate == 32000 and len(samples) > 32000


def test_tts_splits_like_api_v2_by_default(served) -> None:
    """api_v2 defaults ``text_split_method`` to cut5 (TTS.run: cut1); the OpenAI route keeps
    the runtime default and takes the language extension ``lang``."""
    running, _ = served
    text = "你好，世界。今天，天气很好。"
    base = {"text": text, "text_lang": "zh", "voice": "calm", "seed": 3, "media_type": "raw"}

    def tts(**extra: str) -> bytes:
        r = httpx.post(f"{running.url}/tts", json=base | extra, timeout=60)
        assert r.status_code == 200, r.text
        return r.content

    default = tts()
    assert default == tts(text_split_method="cut5")
    assert default != tts(text_split_method="cut1")
    r = httpx.post(
        f"{running.url}/v1/audio/speech",
        json={"input": text, "voice": "calm", "response_format": "pcm", "seed": 3, "lang": "zh"},
        timeout=60,
    )
    cut1 = tts(text_split_method="cut1")
    assert r.status_code == 200 and r.content == cut1


@pytest.mark.parametrize("media", ["raw", "ogg", "aac", "flac"])
def test_media_types(served, media: str) -> None:
    running, _ = served
    body = {"text": "你好。", "text_lang": "zh", "voice": "calm", "media_type": media, "seed": 0}
    r = httpx.post(f"{running.url}/tts", json=body, timeout=60)
    assert r.status_code == 200, r.text
    if media == "raw":
        assert len(r.content) % 2 == 0 and len(r.content) > 32000
    elif media == "aac":
        assert r.content[:2] == b"\xff\xf1"  # ADTS sync word
    else:
        _, rate = _wav(r.content)
        assert rate == 32000


def test_openai_client(served) -> None:
    openai = pytest.importorskip("openai")
    running, _ = served
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused")
    audio = client.audio.speech.create(
        model="tts-1", voice="calm", input="今天天气很好。", response_format="wav"
    )
    samples, rate = _wav(audio.content)
    assert rate == 32000 and len(samples) > 16000
    voices = httpx.get(f"{running.url}/v1/audio/voices").json()["voices"]
    assert {v["id"] for v in voices} == {"calm", "bright"}
    assert httpx.get(f"{running.url}/v1/models").json()["data"][0]["id"] == "voice"


def test_concurrent_requests_equal_one_at_a_time(served) -> None:
    running, _ = served
    bodies = [
        {
            "text": ["今天天气很好。", "我们去公园散步吧，好不好？", "你好。"][i % 3],
            "text_lang": "zh",
            "voice": ["calm", "bright"][i % 2],
            "seed": i,
            "top_k": [15, 1, 5][i % 3],
            "speed_factor": [1.0, 1.2][i % 2],
            "media_type": "raw",
        }
        for i in range(16)
    ]

    def post(body: dict) -> bytes:
        r = httpx.post(f"{running.url}/tts", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.content

    alone = [post(b) for b in bodies]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(post, bodies))
    assert together == alone


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("../voice/bundle.json", 403),
        ("/etc/passwd", 403),
        ("%2e%2e/voice/bundle.json", 400),
        ("link.wav", 403),
        ("missing.wav", 400),
    ],
)
def test_path_traversal_is_refused(served, path: str, status: int) -> None:
    running, root = served
    link = root / "allowed" / "link.wav"
    if not link.exists():
        link.symlink_to(root / "voice" / "bundle.json")
    query = {"text": "你好。", "text_lang": "zh", "prompt_lang": "zh", "ref_audio_path": path}
    r = httpx.get(f"{running.url}/tts", params=query, timeout=30)
    assert r.status_code == status and "message" in r.json()


def test_bad_requests_get_json_errors(served) -> None:
    running, _ = served
    url = f"{running.url}/tts"
    cases = [
        ({"text": "你好。", "voice": "calm"}, "text_lang is required"),
        ({"text": "你好。", "text_lang": "zh", "voice": "nobody"}, "unknown voice"),
        ({"text": "你好。", "text_lang": "zh", "voice": "calm", "top_k": "x"}, "top_k"),
        ({"text": "你好。", "text_lang": "zh", "voice": "calm", "streaming_mode": "7"}, "0, 1"),
        ({"text": "你好。", "text_lang": "zh", "voice": "calm", "media_type": "midi"}, "midi"),
        ({"text": "你好。", "text_lang": "zh", "voice": "calm", "temperature": "nan"}, "finite"),
        ({"text": "你好。", "text_lang": "xx", "voice": "calm"}, ""),
    ]
    for params, message in cases:
        r = httpx.get(url, params=params, timeout=30)
        assert r.status_code == 400, (params, r.text)
        assert message in r.json()["message"]
    r = httpx.post(url, content=b"x" * (5 << 20), timeout=30)
    assert r.status_code == 413
    r = httpx.post(url, content=b"[1, 2]", timeout=30)
    assert r.status_code == 400
    ok = httpx.get(url, params={"text": "你好。", "text_lang": "zh", "voice": "calm"}, timeout=60)
    assert ok.status_code == 200


def test_flood_beyond_the_queue_gets_503(served) -> None:
    _, root = served
    running = Running(root / "voice", root / "allowed", max_queued=2)
    try:
        long = {"text": "今天天气很好，我们去公园散步吧。" * 40, "text_lang": "zh"}
        body = {**long, "voice": "calm", "media_type": "raw"}
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda _: httpx.post(f"{running.url}/tts", json=body, timeout=300), range(8)
                )
            )
        codes = sorted(r.status_code for r in results)
        assert 503 in codes and 200 in codes, codes
        busy = next(r for r in results if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["message"]
    finally:
        running.stop()


def test_disconnect_frees_the_request(served) -> None:
    running, _ = served
    query = {
        "text": "今天天气很好，我们去公园散步吧。" * 40,
        "text_lang": "zh",
        "voice": "calm",
        "streaming_mode": "1",
        "media_type": "raw",
    }
    with httpx.stream("GET", f"{running.url}/tts", params=query, timeout=60) as r:
        first = next(r.iter_bytes())
        assert first
    deadline = time.monotonic() + 30
    while running.engine.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.engine.stats()["in_flight"] == 0


def test_weights_switch_while_requests_run(served) -> None:
    """/set_sovits_weights loads another bundle while requests are in flight: they finish on
    the model they started with, later api_v2 requests use the new one, nothing fails."""
    running, root = served
    other = root / "allowed" / "other"
    if not other.exists():
        shutil.copytree(root / "voice", other, ignore=shutil.ignore_patterns("voices"))
        manifest = json.loads((other / "bundle.json").read_text())
        support = (root / "voice" / manifest["support"]["path"]).resolve()
        manifest["support"]["path"] = os.path.relpath(support, other)
        (other / "bundle.json").write_text(json.dumps(manifest))
    body = {
        "text": "我们去公园散步吧，好不好？",
        "text_lang": "zh",
        "ref_audio_path": "ref.wav",
        "prompt_lang": "zh",
        "prompt_text": PROMPT,
        "media_type": "raw",
    }

    def post(seed: int) -> bytes:
        r = httpx.post(f"{running.url}/tts", json={**body, "seed": seed}, timeout=120)
        assert r.status_code == 200, r.text
        return r.content

    alone = [post(seed) for seed in range(6)]
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, seed) for seed in range(6)]
            r = httpx.get(
                f"{running.url}/set_sovits_weights", params={"weights_path": "other"}, timeout=60
            )
            assert r.status_code == 200, r.text
            assert [f.result() for f in futures] == alone
        assert "other" in running.engine.models
        assert post(0) == alone[0]  # same weights, now through the new model
    finally:
        r = httpx.get(f"{running.url}/set_gpt_weights", params={"weights_path": "voice"})
        assert r.status_code == 200


def test_health_metrics_and_control_routes(served) -> None:
    running, _ = served
    assert httpx.get(f"{running.url}/health").json()["status"] == "ok"
    text = httpx.get(f"{running.url}/metrics").text
    assert "gsv_http_requests_total" in text and "gsv_engine_in_flight" in text
    r = httpx.get(f"{running.url}/set_gpt_weights", params={"weights_path": "voice"})
    assert r.status_code == 200 and r.json() == {"message": "success"}
    r = httpx.get(f"{running.url}/set_sovits_weights", params={"weights_path": "/etc"})
    assert r.status_code == 403
    r = httpx.get(f"{running.url}/set_refer_audio", params={"refer_audio_path": "ref.wav"})
    assert r.status_code == 200
    r = httpx.get(
        f"{running.url}/tts",
        params={"text": "你好。", "text_lang": "zh", "prompt_lang": "zh", "prompt_text": PROMPT},
        timeout=60,
    )
    assert r.status_code == 200
    assert httpx.get(f"{running.url}/control", params={"command": "restart"}).status_code == 400
    assert "<audio" in httpx.get(f"{running.url}/").text


def test_api_key(served) -> None:
    from fastapi.testclient import TestClient

    running, _ = served
    catalog_app = create_app(
        running.engine,
        running.server.config.app.state.gsv.catalog,
        ServerSettings(api_key="s3cret"),
    )
    client = TestClient(catalog_app)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (CI installs Debian's)")
def test_page_speaks_a_voice(served) -> None:
    """The page at / in a real headless Chromium: pick a voice, speak, get audio, see errors."""
    running, _ = served
    with sync_api().sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{running.url}/")
            page.wait_for_function("document.querySelectorAll('#voice option').length >= 2")
            values = page.eval_on_selector_all("#voice option", "os => os.map(o => o.value)")
            assert sorted(values) == ["bright", "calm"]
            page.fill("#text", "今天天气很好。")
            page.select_option("#lang", "zh")
            page.check("#stream")
            page.click("#speak")
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('done')", timeout=60000
            )
            src = page.get_attribute("#player", "src")
            assert src and src.startswith("blob:")
            assert not page.is_hidden("#download")
            page.fill("#text", "")
            page.click("#speak")
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('error')", timeout=30000
            )
            assert "text is required" in page.text_content("#status")
        finally:
            browser.close()


def sync_api():  # type: ignore[no-untyped-def]
    """Playwright's sync API (the test is skipped without it)."""
    return pytest.importorskip("playwright.sync_api")


def test_bounded_load_run(served) -> None:
    from gsv_bench.load import load_table, run_load
    from gsv_runtime.errors import InputError

    running, _ = served
    rows = run_load(running.url, "calm", (1, 3), 1, "你好。", "zh")
    assert [(r["concurrency"], r["requests"], r["errors"]) for r in rows] == [(1, 1, 0), (3, 3, 0)]
    assert all(0 < r["ttfb_p50_s"] <= r["p50_s"] for r in rows)
    assert load_table(rows).count("\n") == 3
    with pytest.raises(InputError, match="this machine only"):
        run_load("http://10.0.0.1:9880", "calm")


def test_reference_upload_is_bounded_and_removed(served) -> None:
    import base64
    import glob
    import tempfile

    running, root = served
    pattern = str(Path(tempfile.gettempdir()) / "gsv-ref-*")
    before = set(glob.glob(pattern))
    clip = base64.b64encode((root / "allowed" / "ref.wav").read_bytes()).decode()
    body = {
        "text": "你好。",
        "text_lang": "zh",
        "prompt_lang": "zh",
        "prompt_text": PROMPT,
        "ref_audio_base64": clip,
        "seed": 0,
    }
    r = httpx.post(f"{running.url}/tts", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert _wav(r.content)[1] == 32000
    bad = httpx.post(f"{running.url}/tts", json={**body, "ref_audio_base64": "*not*"}, timeout=30)
    assert bad.status_code == 400 and "base64" in bad.json()["message"]
    junk = base64.b64encode(b"not audio").decode()
    r = httpx.post(f"{running.url}/tts", json={**body, "ref_audio_base64": junk}, timeout=30)
    assert r.status_code == 400 and "cannot read audio" in r.json()["message"]
    assert set(glob.glob(pattern)) == before


@pytest.mark.parametrize("media", ["mp3", "opus", "aac"])
def test_compressed_formats_stream(served, media: str) -> None:
    from gsv_runtime.server.media import StreamEncoder

    tone = (8000 * np.sin(np.arange(3 * 32000) / 10)).astype(np.int16)
    encoder = StreamEncoder(media, 32000)
    parts = [encoder.feed(tone[i : i + 32000]) for i in range(0, len(tone), 32000)]
    parts.append(encoder.close())
    assert sum(1 for p in parts[:-1] if p) >= 2  # bytes leave while audio still comes in
    running, _ = served
    query = {"text": "你好。我们走吧。", "text_lang": "zh", "voice": "calm", "media_type": media}
    r = httpx.get(f"{running.url}/tts", params={**query, "streaming_mode": "1"}, timeout=60)
    assert r.status_code == 200, r.text
    if media == "aac":
        assert r.content[:2] == b"\xff\xf1"
    else:
        samples, _ = sf.read(io.BytesIO(r.content))
        assert len(samples) > 32000
