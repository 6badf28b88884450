"""The serving engine: continuous batching is invisible in the output, admission is bounded,
cancellation and timeouts free their work, streaming adds up."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gsv_export.parity import snr_db
from gsv_runtime.backends import RunnerOptions
from gsv_runtime.bundle import Bundle
from gsv_runtime.cli import main
from gsv_runtime.engine import EngineConfig, SynthesisRequest
from gsv_runtime.errors import (
    EngineBusyError,
    GsvError,
    InputError,
    RequestCancelledError,
    RequestTimeoutError,
)
from gsv_runtime.gpt.decode import DecodeBatch, DecodeRow, LiveRow
from gsv_runtime.gpt.sampling import SamplingParams
from gsv_runtime.gpt.t2s import load_t2s
from gsv_runtime.support import SupportModels
from gsv_runtime.synthesizer import Synthesizer

TEXTS = [
    "今天天气很好。",
    "我们去公园散步吧，好不好？",
    "你好。",
    "这是一个比较长的句子，用来测试不同长度的请求在同一个批次里面。",
]
DESIGNS = [("onnxruntime", "gqa"), ("onnxruntime", "canonical"), ("openvino", "stateful")]


@pytest.fixture(scope="module")
def synth(tiny_bundle) -> Synthesizer:
    s = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime", threads=1)
    yield s
    s.close()


@pytest.fixture(scope="module")
def voices(synth: Synthesizer, ref_wav: Path):
    return [
        synth.voice(ref_wav, "这是一段参考音频。", "zh"),
        synth.voice(ref_wav, "你好吗？", "zh"),
    ]


def _rows(bundle: Bundle, n: int, seed: int = 0) -> list[DecodeRow]:
    rng = np.random.default_rng(seed)
    dim = int(bundle.manifest.text.get("bert_dim", 1024))
    rows = []
    for _ in range(n):
        length, prompt = int(rng.integers(4, 24)), int(rng.integers(0, 12))
        rows.append(
            DecodeRow(
                rng.integers(0, 300, length),
                rng.standard_normal((length, dim)).astype(np.float32),
                rng.integers(0, 1000, prompt),
            )
        )
    return rows


def _live(row: DecodeRow, i: int, fixed: int | None = 30) -> LiveRow:
    params = SamplingParams(top_k=[1, 15, 5, 30][i % 4], temperature=[1.0, 0.8, 1.2, 1.0][i % 4])
    return LiveRow(row, params, np.random.default_rng([7, i]), fixed_length=fixed, tag=i)


@pytest.mark.parametrize(("backend", "design"), DESIGNS)
def test_rows_joining_mid_decode_sample_as_alone(tiny_bundle, backend: str, design: str) -> None:
    """Seeded, sampled rows with different options give the same tokens alone and in a batch
    they join at different steps and leave at different lengths."""
    bundle = Bundle.load(tiny_bundle("v2"))
    decoder = load_t2s(bundle, backend, RunnerOptions(threads=1), design=design)
    rows = _rows(bundle, 5)
    lengths = [30, 12, 25, 18, 40]
    alone = []
    for i, row in enumerate(rows):
        batch = DecodeBatch(decoder.session())
        live = _live(row, i, lengths[i])
        batch.add([live])
        while batch.rows:
            batch.advance()
        alone.append(live.tokens)
    batch = DecodeBatch(decoder.session())
    lives = [_live(row, i, lengths[i]) for i, row in enumerate(rows)]
    joins = {0: [0, 1], 3: [2], 7: [3], 20: [4]}  # step → rows joining then
    step = 0
    while batch.rows or any(s >= step for s in joins):
        batch.add([lives[i] for i in joins.get(step, [])])
        if batch.rows:
            batch.advance()
        step += 1
    for i, live in enumerate(lives):
        np.testing.assert_array_equal(live.tokens, alone[i], err_msg=f"row {i}")
        assert len(live.tokens) == lengths[i]


def test_row_noise_is_drawn_per_row_not_per_batch_position(tiny_bundle) -> None:
    """Swapping the order rows join in changes nothing for any row."""
    bundle = Bundle.load(tiny_bundle("v2"))
    decoder = load_t2s(bundle, "onnxruntime", RunnerOptions(threads=1))
    rows = _rows(bundle, 3, seed=1)
    results = []
    for order in ([0, 1, 2], [2, 0, 1]):
        lives = {i: _live(rows[i], i, 20) for i in order}
        batch = DecodeBatch(decoder.session())
        batch.add([lives[i] for i in order])
        while batch.rows:
            batch.advance()
        results.append({i: lives[i].tokens.tolist() for i in order})
    assert results[0] == results[1]


def test_concurrent_requests_match_requests_run_alone(synth: Synthesizer, voices) -> None:
    """Mixed voices, lengths, options and seeds through one engine at once: every request's
    audio equals its run alone (rows joined a running batch at different steps)."""
    requests = [
        SynthesisRequest.from_options(
            TEXTS[i % len(TEXTS)],
            "zh",
            voices[i % 2],
            seed=i,
            top_k=[15, 1, 5][i % 3],
            temperature=[1.0, 0.9][i % 2],
            speed_factor=[1.0, 1.25][i % 2],
            batch_size=1 + i % 2,
            text_split_method="cut5",
        )
        for i in range(8)
    ]
    alone = [synth.engine.submit(r).result(60) for r in requests]
    handles = []
    for r in requests:  # staggered: later requests join a batch already decoding
        handles.append(synth.engine.submit(r))
        time.sleep(0.01)
    together = [h.result(120) for h in handles]
    for a, b in zip(alone, together, strict=True):
        assert a.metadata["segments"] == b.metadata["segments"]
        assert snr_db(a.samples.astype(np.float64), b.samples.astype(np.float64)) >= 50.0


def test_threads_share_one_engine(synth: Synthesizer, voices) -> None:
    """Synthesizer.synthesize from several threads at once returns each caller its own audio."""
    out: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        out[i] = synth.synthesize(TEXTS[i], "zh", voices[0], seed=i, top_k=1).samples

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(4):
        alone = synth.synthesize(TEXTS[i], "zh", voices[0], seed=i, top_k=1).samples
        np.testing.assert_array_equal(out[i], alone)


def test_queue_bound_raises_busy_and_recovers(tiny_bundle, voices) -> None:
    s = Synthesizer.load(
        tiny_bundle("v2"), backend="onnxruntime", engine=EngineConfig(max_queued=2)
    )
    try:
        slow = {"fixed_length": 1500, "seed": 0}
        first = [s.submit(TEXTS[3] * 30, "zh", voices[0], **slow) for _ in range(2)]
        with pytest.raises(EngineBusyError, match="max_queued 2"):
            s.submit(TEXTS[0], "zh", voices[0], seed=0)
        for h in first:
            h.cancel()
        assert _eventually(lambda: s.engine.stats()["in_flight"] == 0)
        assert s.synthesize(TEXTS[2], "zh", voices[0], seed=0).seconds > 0
    finally:
        s.close()


def _eventually(check, seconds: float = 30.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_cancel_frees_rows_and_others_finish(synth: Synthesizer, voices) -> None:
    long = synth.submit(TEXTS[3] * 30, "zh", voices[0], seed=0, fixed_length=1500)
    short = synth.submit(TEXTS[0], "zh", voices[1], seed=1)
    assert _eventually(lambda: synth.engine.stats()["live_rows"] >= 1)
    long.cancel()
    with pytest.raises(RequestCancelledError):
        long.result(30)
    assert short.result(60).seconds > 0
    assert _eventually(lambda: synth.engine.stats()["live_rows"] == 0)
    assert _eventually(lambda: synth.engine.stats()["in_flight"] == 0)


def test_timeout_fails_the_request(synth: Synthesizer, voices) -> None:
    long_text = TEXTS[3] * 30  # 30 segments of 1500 tokens, one after another: seconds
    handle = synth.submit(long_text, "zh", voices[0], seed=0, fixed_length=1500, timeout=0.3)
    with pytest.raises(RequestTimeoutError, match="timed out"):
        handle.result(60)
    assert _eventually(lambda: synth.engine.stats()["live_rows"] == 0)


def test_token_streaming_adds_up_to_the_segment(synth: Synthesizer, voices) -> None:
    options = {"seed": 3, "text_split_method": "cut5", "fixed_length": 60}
    whole = synth.synthesize(TEXTS[1], "zh", voices[0], **options)
    chunks = list(synth.stream(TEXTS[1], "zh", voices[0], stream="token", **options))
    per_segment: dict[int, list] = {}
    for c in chunks:
        per_segment.setdefault(c.index, []).append(c)
    assert sorted(per_segment) == list(range(len(whole.metadata["segments"])))
    for index, parts in per_segment.items():
        assert len(parts) >= 3 and [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
        assert sum(p.tokens for p in parts) == whole.metadata["segments"][index]["tokens"]
    streamed = np.concatenate([c.samples for c in chunks]).astype(np.float64)
    assert len(streamed) == len(whole.samples)
    assert snr_db(whole.samples.astype(np.float64), streamed) >= 10.0


def test_async_iteration(synth: Synthesizer, voices) -> None:
    async def collect() -> list:
        handle = synth.submit(TEXTS[1], "zh", voices[0], seed=0, text_split_method="cut5")
        return [c async for c in handle]

    chunks = asyncio.run(collect())
    alone = synth.synthesize(TEXTS[1], "zh", voices[0], seed=0, text_split_method="cut5")
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), alone.samples)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_bad_requests_fail_cleanly(synth: Synthesizer, voices) -> None:
    with pytest.raises(InputError, match="unknown model"):
        synth.engine.submit(SynthesisRequest("你好。", "zh", voices[0], model="nope"))
    with pytest.raises(InputError, match="stream"):
        SynthesisRequest("你好。", "zh", voices[0], stream="bytes")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"language|lang"):
        synth.synthesize("你好。", "xx", voices[0])
    with pytest.raises(GsvError, match="no voice 'no-such-voice'"):
        synth.synthesize("你好。", "zh", "no-such-voice")
    assert synth.synthesize("你好。", "zh", voices[0], seed=0).seconds > 0


def test_many_requests_in_order_and_as_finished(synth: Synthesizer, voices) -> None:
    requests = [SynthesisRequest.from_options(t, "zh", voices[0], seed=0) for t in TEXTS]
    requests.append(SynthesisRequest.from_options("你好。", "xx", voices[0]))
    ordered = list(synth.synthesize_many(requests))
    assert [i for i, _ in ordered] == list(range(len(requests)))
    assert isinstance(ordered[-1][1], InputError)
    finished = dict(synth.synthesize_many(requests, ordered=False))
    for i in range(len(TEXTS)):
        np.testing.assert_array_equal(finished[i].samples, ordered[i][1].samples)


def test_closed_engine_refuses(tiny_bundle, voices) -> None:
    s = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime")
    s.close()
    with pytest.raises(RequestCancelledError, match="closed"):
        s.submit(TEXTS[0], "zh", voices[0])


def test_cli_per_line_writes_one_file_per_line(tiny_bundle, ref_wav: Path, tmp_path) -> None:
    lines = tmp_path / "lines.jsonl"
    lines.write_text(
        "\n".join(
            json.dumps(x, ensure_ascii=False)
            for x in [
                {"text": TEXTS[0], "out": "a.wav", "seed": 1},
                {"text": "Hello there.", "lang": "en", "top_k": 1},
                {"text": TEXTS[2], "speed_factor": 1.2},
            ]
        ),
        encoding="utf-8",
    )
    args = ["tts", "-m", str(tiny_bundle("v2")), "-r", str(ref_wav), "-p", "这是一段参考音频。"]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [*args, "-f", str(lines), "--per-line", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["0002.wav", "0003.wav", "a.wav"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "你好。"}\n{"text": "你好。", "top_k": -1}\n', encoding="utf-8")
    result = CliRunner().invoke(
        main, [*args, "-f", str(bad), "--per-line", "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 1
    assert "line 2" in result.output and not (tmp_path / "b").exists()


def test_models_switch_while_requests_run(tiny_bundle, voices) -> None:
    """Replacing or removing a model leaves requests in flight on the model they started
    with; later requests see the change."""
    s = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime")
    try:
        engine = s.engine
        reference = s.synthesize(TEXTS[3], "zh", voices[0], seed=0, fixed_length=200)
        running = s.submit(TEXTS[3], "zh", voices[0], seed=0, fixed_length=200)
        assert _eventually(lambda: engine.stats()["live_rows"] >= 1)
        other = Synthesizer.load(tiny_bundle("v2Pro"), backend="onnxruntime").model
        engine.add_model("default", other)
        np.testing.assert_array_equal(running.result(60).samples, reference.samples)
        engine.add_model("spare", s.model)
        pending = engine.submit(SynthesisRequest("你好。", "zh", voices[0], model="spare"))
        engine.remove_model("spare")
        assert pending.result(60).seconds > 0
        with pytest.raises(InputError, match="unknown model 'spare'"):
            engine.submit(SynthesisRequest("你好。", "zh", voices[0], model="spare"))
        assert _eventually(lambda: engine.stats()["in_flight"] == 0)
    finally:
        s.close()


def test_backend_fault_fails_its_requests_and_engine_goes_on(tiny_bundle, voices) -> None:
    from dataclasses import replace

    s = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime")
    try:
        real = s.model.t2s
        faults = {"left": 1}

        def session():  # type: ignore[no-untyped-def]
            inner = real.session()
            step = inner.step

            def flaky(tokens):  # type: ignore[no-untyped-def]
                if faults["left"] and inner.batch:
                    faults["left"] -= 1
                    raise RuntimeError("device lost")
                return step(tokens)

            inner.step = flaky
            return inner

        s.model.t2s = replace(real, factory=session)
        with pytest.raises(GsvError, match="device lost"):
            s.synthesize(TEXTS[0], "zh", voices[0], seed=0)
        assert s.synthesize(TEXTS[0], "zh", voices[0], seed=0).seconds > 0
        assert _eventually(lambda: s.engine.stats()["in_flight"] == 0)
    finally:
        s.close()


def test_seeds_change_sampled_tokens(synth: Synthesizer, voices) -> None:
    """Sampling noise comes from the request's seed: other seeds, other tokens (a constant or
    shared noise source would make them equal)."""
    runs = [
        synth.synthesize(
            TEXTS[3], "zh", voices[0], seed=s, top_k=15, fixed_length=40, noise_scale=0
        )
        for s in (1, 2, 1)
    ]
    assert not np.array_equal(runs[0].samples, runs[1].samples)
    np.testing.assert_array_equal(runs[0].samples, runs[2].samples)


def test_warm_up_prepares_the_first_request_while_loading(tiny_bundle, voices) -> None:
    """A warm-up text's frontend and BERT are ready when the load returns, and the request
    gives the same audio as without the warm-up."""
    cold = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime", threads=1)
    warm = Synthesizer.load(
        tiny_bundle("v2"), backend="onnxruntime", threads=1, warm_up=(TEXTS[0], "zh")
    )
    try:
        assert "bert" in warm.model.support._runners  # built during the load
        assert not isinstance(cold.model._support, SupportModels)  # opened on first use
        a = cold.synthesize(TEXTS[0], "zh", voices[0], seed=3).samples
        b = warm.synthesize(TEXTS[0], "zh", voices[0], seed=3).samples
        np.testing.assert_array_equal(a, b)
    finally:
        cold.close()
        warm.close()


def test_failed_warm_up_leaves_the_error_to_the_request(tiny_bundle, voices) -> None:
    s = Synthesizer.load(tiny_bundle("v2"), backend="onnxruntime", warm_up=("hello", "xx"))
    try:
        with pytest.raises(InputError, match="language"):
            s.synthesize("hello", "xx", voices[0])
        assert len(s.synthesize(TEXTS[2], "zh", voices[0], seed=1).samples) > 0
    finally:
        s.close()
