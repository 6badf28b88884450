"""Serving throughput: the engine's continuous batching against N independent sessions.

Each point sends N requests at once (one sentence each, a fixed number of tokens so random
weights decode a known length) and waits for all of them:

``engine``
    one :class:`~gsv_runtime.engine.Engine`: the requests' rows share one GPT batch, joining as
    their prefills finish, while the acoustic thread decodes finished rows.
``sessions``
    N threads, each running its request alone through the same compiled graphs (its own GPT
    session, then the decoder): what concurrency meant before the engine. onnxruntime only
    (OpenVINO's embedding graphs keep one infer request each and cannot be shared).

Reported per point: GPT tokens/s and audio seconds per wall second in aggregate, time to first
audio p50/p95, and where the wall time went (busy seconds of the GPT and acoustic threads).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gsv_runtime.acoustic import NoiseSource, VocodeJob
from gsv_runtime.bundle import Bundle
from gsv_runtime.config import RuntimeConfig, SynthesisConfig
from gsv_runtime.engine import Engine, EngineConfig, StageThreads, SynthesisRequest, VoiceModel
from gsv_runtime.gpt.decode import DecodeRow, decode
from gsv_runtime.voice import Voice

SENTENCE = "The morning train was late again, and everyone on the platform checked the time."
MODES = ("engine", "sessions")


class _Busy:
    """Seconds spent inside wrapped calls, per stage (thread-safe)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

        return timed

    def take(self) -> dict[str, float]:
        with self._lock:
            out, self.seconds = self.seconds, {}
        return out


def _instrument(model: VoiceModel, busy: _Busy) -> None:
    """Time every GPT session call and every acoustic decode of ``model``."""
    decoder = model.t2s
    make = decoder.session

    def session() -> Any:
        s = make()
        for name in ("join", "step"):  # prefill is reset + join
            setattr(s, name, busy.wrap(getattr(s, name), "gpt"))
        return s

    model.t2s = replace(decoder, factory=session)
    model.acoustic.vocode = busy.wrap(model.acoustic.vocode, "acoustic")  # type: ignore[method-assign]


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _config(tokens: int, seed: int) -> SynthesisConfig:
    return SynthesisConfig.from_options(
        seed=seed, fixed_length=tokens, text_split_method="cut0", fragment_interval=0.0
    )


def _engine_point(
    engine: Engine, voice: Voice, n: int, tokens: int, stream: str = "segment"
) -> dict[str, Any]:
    start = time.perf_counter()
    handles = [
        engine.submit(
            SynthesisRequest(
                SENTENCE,
                "en",
                voice,
                config=_config(tokens, i),
                stream=stream,  # type: ignore[arg-type]
            )
        )
        for i in range(n)
    ]
    results = [h.result() for h in handles]
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "audio_s": sum(r.seconds for r in results),
        "tokens": sum(s["tokens"] for r in results for s in r.metadata["segments"]),
        "ttfa": [h.timings["first_audio"] for h in handles],
    }


def _sessions_point(model: VoiceModel, voice: Voice, n: int, tokens: int) -> dict[str, Any]:
    ttfa: list[float] = []
    audio: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def one(i: int) -> None:
        config = _config(tokens, i)
        segments, _ = model.frontend(SENTENCE, "en", config)
        rows = [
            DecodeRow(
                np.concatenate([voice.prompt_phones, s.phones]),
                np.concatenate([voice.prompt_bert, s.bert]),
                voice.prompt_tokens,
            )
            for s in segments
        ]
        rngs = [np.random.default_rng([i, 0, k]) for k in range(len(rows))]
        params = config.sampling(model.bundle.manifest.sampling)
        toks = decode(model.t2s.session(), rows, params, rngs, fixed_length=tokens)
        jobs = [
            VocodeJob(t, s.phones, voice, NoiseSource([i, 1, k]))
            for k, (t, s) in enumerate(zip(toks, segments, strict=True))
        ]
        wavs = model.acoustic.vocode(jobs)
        with lock:
            ttfa.append(time.perf_counter() - start)
            audio.append(sum(len(w) for w in wavs) / model.acoustic.sample_rate)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "audio_s": sum(audio), "tokens": n * tokens, "ttfa": ttfa}


def run_serving(
    voice_dir: str | Path,
    voice_root: str | Path,
    voice_name: str,
    *,
    backend: str,
    precision: str,
    concurrency: Sequence[int],
    modes: Sequence[str] = MODES,
    tokens: int = 50,
    threads: StageThreads | None = None,
    support: str | None = None,
    stream: str = "segment",
    acoustic_batch: int = 1,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Measure every (mode, N) point on one backend and precision; one record per point.

    ``stream`` and ``acoustic_batch`` apply to the engine: token streaming (TTFA) and finished
    segments decoded per acoustic batch.
    """
    bundle = Bundle.load(voice_dir)
    runtime = RuntimeConfig(backend=backend, precision=precision)
    model = VoiceModel(bundle, runtime, support, threads=threads)
    busy = _Busy()
    _instrument(model, busy)
    voice = Voice.load(voice_root, voice_name)
    config = EngineConfig(max_queued=4096, max_rows=max(concurrency), acoustic_batch=acoustic_batch)
    engine = Engine({"bench": model}, config)
    records = []
    try:
        _engine_point(engine, voice, 1, tokens)  # warm-up: allocations, caches
        for mode in modes:
            if mode == "sessions" and backend != "onnxruntime":
                continue
            for n in concurrency:
                busy.take()
                point = (
                    _engine_point(engine, voice, n, tokens, stream)
                    if mode == "engine"
                    else _sessions_point(model, voice, n, tokens)
                )
                stages = busy.take()
                record = {
                    "kind": "serving",
                    "mode": mode,
                    "backend": backend,
                    "precision": precision,
                    "threads": {"gpt": model.threads.gpt, "acoustic": model.threads.acoustic},
                    "concurrency": n,
                    "stream": stream if mode == "engine" else "segment",
                    "acoustic_batch": acoustic_batch if mode == "engine" else 1,
                    "tokens_per_request": tokens,
                    "wall_s": point["wall_s"],
                    "gpt_tokens_per_s": point["tokens"] / point["wall_s"],
                    "audio_s_per_s": point["audio_s"] / point["wall_s"],
                    "ttfa_p50_s": _pct(point["ttfa"], 50),
                    "ttfa_p95_s": _pct(point["ttfa"], 95),
                    "busy_s": stages,
                }
                records.append(record)
                progress(
                    f"{mode:8s} {backend} {precision} N={n:3d}: "
                    f"{record['gpt_tokens_per_s']:7.1f} tok/s, "
                    f"{record['audio_s_per_s']:5.2f} audio-s/s, "
                    f"TTFA p50 {record['ttfa_p50_s']:.2f} s p95 {record['ttfa_p95_s']:.2f} s, "
                    f"busy {', '.join(f'{k} {v:.1f} s' for k, v in stages.items())}"
                )
    finally:
        engine.close()
    return records


def serving_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per point, with the speedup over the same series at N = 1."""
    lines = [
        "| mode | backend | precision | N | GPT tok/s | × N=1 | audio-s/s | × N=1 "
        "| TTFA p50 | TTFA p95 | GPT busy | acoustic busy | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = (r["mode"], r["backend"], r["precision"], r.get("stream"), r.get("acoustic_batch"))
        if r["concurrency"] == 1:
            base[key] = r
        b = base.get(key)
        tok_x = r["gpt_tokens_per_s"] / b["gpt_tokens_per_s"] if b else float("nan")
        aud_x = r["audio_s_per_s"] / b["audio_s_per_s"] if b else float("nan")
        busy = r["busy_s"]
        mode = r["mode"]
        if r.get("stream") == "token":
            mode += ", token stream"
        if r.get("acoustic_batch", 1) > 1:
            mode += f", acoustic batch {r['acoustic_batch']}"
        lines.append(
            f"| {mode} | {r['backend']} | {r['precision']} | {r['concurrency']} "
            f"| {r['gpt_tokens_per_s']:.0f} | {tok_x:.2f} | {r['audio_s_per_s']:.2f} | {aud_x:.2f} "
            f"| {r['ttfa_p50_s']:.2f} s | {r['ttfa_p95_s']:.2f} s | {busy.get('gpt', 0):.1f} s "
            f"| {busy.get('acoustic', 0):.1f} s | {r['wall_s']:.1f} s |"
        )
    return "\n".join(lines)


def serving_chart(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Audio seconds per wall second and GPT tokens/s against concurrency, one line a series."""
    from gsv_bench.charts import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        extra = " token" if r.get("stream") == "token" else ""
        label = f"{r['mode']}{extra} {r['backend']} {r['precision']}"
        series.setdefault(label, []).append(r)
    for label, rows in series.items():
        rows = sorted(rows, key=lambda r: r["concurrency"])
        n = [r["concurrency"] for r in rows]
        style = "-o" if label.startswith("engine") else "--s"
        axes[0].plot(n, [r["audio_s_per_s"] for r in rows], style, label=label)
        axes[1].plot(n, [r["gpt_tokens_per_s"] for r in rows], style, label=label)
    titles = ("audio seconds per wall second", "GPT tokens per second")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def write_serving(records: Sequence[dict[str, Any]], out: Path, charts: bool = True) -> None:
    """``serving.jsonl`` (appended), ``serving.md`` and ``serving.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "serving.jsonl", "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out / "serving.md").write_text(serving_table(records) + "\n", encoding="utf-8")
    if charts:
        serving_chart(records, out / "serving.png")
