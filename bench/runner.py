"""Measuring one configuration point, in this process or in a fresh worker process.

Per point: a cold load (the first in the process), a second load (files and backend libraries
already warm: "cached"), one timed voice preparation when a reference and support bundle are
there, ``warmup`` untimed rounds (one request per language) per engine, then ``repeats`` timed
passes over the text set with ``concurrency`` worker threads (one engine each). Peak RSS covers
the whole point; with ``isolate`` each point runs in its own process, so loads are cold and RSS
is its own.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gsv_bench.assets import Assets
from gsv_bench.engines import CFM_STAGES, STAGES, gpu_unavailable, make_engine, value_bytes
from gsv_bench.scenarios import BenchPoint, Settings, TextItem, supported
from gsv_bench.sysinfo import GpuMemorySampler, gpt_step_bytes, peak_rss_mb, reset_peak_rss
from gsv_bench.timers import StageClock, summarize

_LOGGER = logging.getLogger(__name__)

SCHEMA: Final = 1
PROGRESS_TAG: Final = "@@gsv-bench-progress"
Tick = Callable[[int], None]


def units(settings: Settings) -> int:
    """Progress units of one point: loads, reference, warm-up and the timed passes."""
    return 2 + settings.warmup + settings.repeats


def _request(engine: Any, item: TextItem, batch: int) -> dict[str, Any]:
    """One request: TTFA, latency, audio and tokens, and its stage seconds."""
    engine.clock.take()
    engine.clock.take_dit()
    t0 = time.perf_counter()
    ttfa = None
    samples = tokens = segments = 0
    for chunk in engine.stream(item, batch):
        if ttfa is None:
            ttfa = time.perf_counter() - t0
        samples += chunk.samples
        tokens += chunk.tokens
        segments += 1
    elapsed = time.perf_counter() - t0
    seconds, calls, steps = engine.clock.take()
    dit = engine.clock.take_dit()
    bert = seconds.get("bert", 0.0)
    cfm = {s: seconds.get(s, 0.0) for s in CFM_STAGES}
    gpt_graphs = seconds.get("gpt_prefill", 0.0) + seconds.get("gpt_steps", 0.0)
    stages = {
        "frontend": seconds.get("frontend_total", 0.0) - bert,
        "bert": bert,
        "gpt_prefill": seconds.get("gpt_prefill", 0.0),
        "gpt_steps": seconds.get("gpt_steps", 0.0),
        "gpt_host": max(0.0, seconds.get("gpt_total", 0.0) - gpt_graphs),
        # v3/v4: the acoustic stage's rest beside its three timed parts
        "sovits": max(0.0, seconds.get("sovits", 0.0) - sum(cfm.values())),
        **cfm,
    }
    return {
        "lang": item.lang,
        "elapsed_s": elapsed,
        "ttfa_s": ttfa if ttfa is not None else elapsed,
        "audio_s": samples / engine.sample_rate,
        "tokens": tokens,
        "segments": segments,
        "stages": stages,
        "steps": [(s.seconds, s.batch, s.context) for s in steps],
        "dit_steps": [(s.seconds, s.batch, s.context) for s in dit],
        "prefills": seconds.get("gpt_prefill", 0.0),
        "prefill_calls": calls.get("gpt_prefill", 0),
    }


def _pass(engines: Sequence[Any], texts: Sequence[TextItem], batch: int) -> dict[str, Any]:
    """All texts once, spread over one worker thread per engine; wall time and requests."""
    work: queue.Queue[TextItem] = queue.Queue()
    for item in texts:
        work.put(item)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def worker(engine: Any) -> None:
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            try:
                results.append(_request(engine, item, batch))
            except BaseException as exc:  # surfaced to the caller below
                errors.append(exc)
                return

    t0 = time.perf_counter()
    if len(engines) == 1:
        worker(engines[0])
    else:
        threads = [threading.Thread(target=worker, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"wall_s": wall, "requests": results}


def aggregate(
    passes: Sequence[dict[str, Any]],
    t2s: dict[str, Any],
    point: BenchPoint,
    bandwidth: float,
    gpt_precision: str | None = None,
    gpt_backend: str | None = None,
) -> dict[str, Any]:
    """Medians and spread over the timed passes, plus the per-step GPT figures.

    ``gpt_precision`` and ``gpt_backend`` are the variant and backend the GPT really ran
    (``auto`` resolves per stage).
    """
    walls = [p["wall_s"] for p in passes]
    audio = [sum(r["audio_s"] for r in p["requests"]) for p in passes]
    requests = [r for p in passes for r in p["requests"]]
    rtf = [w / a for w, a in zip(walls, audio, strict=True) if a > 0]
    stage_sums = {s: [sum(r["stages"][s] for r in p["requests"]) for p in passes] for s in STAGES}
    steps = [s for r in requests for s in r["steps"]]
    step_ms = [s[0] * 1e3 for s in steps]
    tokens = sum(r["tokens"] for r in requests)
    gpt_time = sum(
        r["stages"]["gpt_prefill"] + r["stages"]["gpt_steps"] + r["stages"]["gpt_host"]
        for r in requests
    )
    prefill_calls = sum(r["prefill_calls"] for r in requests)
    metrics: dict[str, Any] = {
        "rtf": summarize(rtf),
        "elapsed_s": summarize(walls),
        "audio_s": summarize(audio),
        "throughput_audio_s_per_s": summarize([a / w for w, a in zip(walls, audio, strict=True)]),
        "requests_per_pass": len(passes[0]["requests"]) if passes else 0,
        "ttfa_s": summarize([r["ttfa_s"] for r in requests]),
        "latency_s": summarize([r["elapsed_s"] for r in requests]),
        "stages_s": {s: summarize(v) for s, v in stage_sums.items()},
        "stages_per_audio_s": {
            s: summarize([x / a for x, a in zip(v, audio, strict=True) if a > 0])["median"]
            if any(audio)
            else None
            for s, v in stage_sums.items()
        },
        "gpt_step_ms": summarize(step_ms),
        "gpt_prefill_ms_mean": (
            1e3 * sum(r["prefills"] for r in requests) / prefill_calls if prefill_calls else None
        ),
        "tokens": tokens,
        "tokens_per_s": tokens / gpt_time if gpt_time > 0 else None,
        "segments_per_request": summarize([r["segments"] for r in requests])["median"],
    }
    dit = [s for r in requests for s in r.get("dit_steps", ())]
    if dit:
        metrics["cfm"] = cfm_metrics(dit, stage_sums, audio, len(passes))
    if steps and t2s:
        engine = gpt_backend or point.engine
        w_bytes, kv_bytes = value_bytes(engine, gpt_precision or point.precision)
        batch = sum(s[1] for s in steps) / len(steps)
        context = sum(s[2] for s in steps) / len(steps)
        step_bytes = gpt_step_bytes(t2s, w_bytes, batch, context, kv_bytes)
        bound_ms = step_bytes / (bandwidth * 1e9) * 1e3 if bandwidth else None
        p50 = metrics["gpt_step_ms"]["median"]
        metrics["bandwidth"] = {
            "bytes_per_step": step_bytes,
            "mean_batch": batch,
            "mean_context": context,
            "weight_bytes_per_value": w_bytes,
            "kv_bytes_per_value": kv_bytes,
            "measured_gbps": bandwidth or None,
            "bound_ms": bound_ms,
            "achieved_fraction": bound_ms / p50 if bound_ms and p50 else None,
        }
    return metrics


def cfm_metrics(
    dit: Sequence[Sequence[float]],
    stage_sums: dict[str, list[float]],
    audio: Sequence[float],
    passes: int,
) -> dict[str, Any]:
    """v3/v4 figures: DiT ms per step with its rows and frames, steps per pass, encoder and
    vocoder seconds per pass and the vocoder's ms per audio second (medians over passes)."""
    step_ms = [s[0] * 1e3 for s in dit]
    frames = [s[2] for s in dit]

    def per_audio(stage: str) -> float | None:
        values = [x / a for x, a in zip(stage_sums[stage], audio, strict=True) if a > 0]
        return 1e3 * summarize(values)["median"] if values else None

    return {
        "dit_step_ms": summarize(step_ms),
        "dit_frames_mean": sum(frames) / len(frames),
        "dit_frames_max": max(frames),
        "dit_rows_mean": sum(s[1] for s in dit) / len(dit),
        "dit_steps_per_pass": len(dit) / max(1, passes),
        "dit_ms_per_frame": sum(step_ms) / sum(frames) if sum(frames) else None,
        "encoder_s": summarize(stage_sums["cfm_encoder"])["median"],
        "vocoder_s": summarize(stage_sums["cfm_vocoder"])["median"],
        "vocoder_ms_per_audio_s": per_audio("cfm_vocoder"),
        "dit_ms_per_audio_s": per_audio("cfm_dit"),
    }


def _not_installed(engine: str) -> str | None:
    import importlib.util

    modules = ("onnxruntime", "openvino") if engine == "auto" else (engine,)
    if any(importlib.util.find_spec(m) is not None for m in modules):
        return None
    extra = "gsv-rt[export]" if engine == "torch" else engine
    return f"{engine} is not installed (pip install {extra})"


def _load(
    assets: Assets, point: BenchPoint, settings: Settings, needs: tuple[bool, bool]
) -> tuple[list[Any], float, float]:
    first = make_engine(assets, point, settings)
    cold = first.load(*needs)
    del first
    gc.collect()
    engines = [make_engine(assets, point, settings) for _ in range(point.concurrency)]
    warm = engines[0].load(*needs)
    for engine in engines[1:]:
        engine.load(*needs)
    return engines, cold, warm


def run_point(
    point: BenchPoint,
    assets: Assets,
    settings: Settings,
    *,
    bandwidth: float = 0.0,
    tick: Tick | None = None,
) -> dict[str, Any]:
    """Measure one configuration; the returned record's ``status`` says ok/skipped/error."""
    tick = tick or (lambda n: None)
    record: dict[str, Any] = {"point": point.to_dict(), "name": point.name}
    reason = (
        supported(point)
        or _not_installed(point.engine)
        or (gpu_unavailable(point.engine) if point.device == "gpu" else None)
    )
    if point.engine == "torch" and not (assets.gpt and assets.sovits):
        reason = "no checkpoints for the torch baseline (give --gpt and --sovits)"
    if reason:
        tick(units(settings))
        return {**record, "status": "skipped", "reason": reason}
    texts = settings.texts
    needs_bert = any(t.needs_bert for t in texts)
    if needs_bert and not assets.has_bert():
        tick(units(settings))
        return {
            **record,
            "status": "skipped",
            "reason": "Chinese text needs a support bundle with BERT (--support)",
        }
    needs_ref = (
        bool(settings.measure_reference and assets.ref_wav and assets.support_dir)
        and point.engine != "torch"
    )
    reset_peak_rss()
    with GpuMemorySampler() as gpu:
        engines, cold, warm = _load(assets, point, settings, (needs_bert, needs_ref))
        tick(1)
        reference = None
        if needs_ref:
            engines[0].prepare_reference()  # warm-up
            engines[0].clock.take()
            total = engines[0].prepare_reference()
            reference = {"total_s": total, "stages_s": engines[0].clock.take()[0]}
        tick(1)
        # one request per language: each language has its own first-use costs (G2P, BERT)
        first = list({t.lang: t for t in reversed(texts)}.values())
        for _ in range(settings.warmup):
            for engine in engines:
                for item in first:
                    _request(engine, item, point.batch)
            tick(1)
        passes = []
        for _ in range(settings.repeats):
            passes.append(_pass(engines, texts, point.batch))
            tick(1)
    t2s = _t2s_block(assets)
    effective = engines[0].effective()
    record.update(
        status="ok",
        effective=effective,
        metrics={
            "load_cold_s": cold,
            "load_warm_s": warm,
            "reference": reference,
            **aggregate(
                passes,
                t2s,
                point,
                bandwidth,
                effective.get("t2s_precision"),
                effective.get("stage_backends", {}).get("gpt"),
            ),
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": gpu.peak_mb,
        },
    )
    return record


def _t2s_block(assets: Assets) -> dict[str, Any]:
    from gsv_runtime.bundle import Bundle

    return dict(Bundle.load(assets.voice_dir).manifest.t2s)


# --------------------------------------------------------------------------- processes


def _spec(point: BenchPoint, assets: Assets, settings: Settings, bandwidth: float) -> dict:
    return {
        "point": point.to_dict(),
        "assets": assets.to_dict(),
        "settings": {
            **{k: v for k, v in settings.to_dict().items() if k != "texts"},
            "texts": [[t.lang, t.text, t.split] for t in settings.texts],
        },
        "bandwidth": bandwidth,
    }


def _from_spec(spec: dict[str, Any]) -> tuple[BenchPoint, Assets, Settings, float]:
    s = dict(spec["settings"])
    s["texts"] = tuple(TextItem(*t) for t in s["texts"])
    return (
        BenchPoint(**spec["point"]),
        Assets.from_dict(spec["assets"]),
        Settings(**s),
        float(spec["bandwidth"]),
    )


def worker_main(argv: Sequence[str]) -> int:
    """``python -m gsv_bench.runner SPEC OUT``: measure one point, write its record to OUT."""
    spec_path, out_path = argv
    point, assets, settings, bandwidth = _from_spec(json.loads(Path(spec_path).read_text()))

    def tick(n: int) -> None:
        print(f"{PROGRESS_TAG} {n}", file=sys.stderr, flush=True)

    try:
        record = run_point(point, assets, settings, bandwidth=bandwidth, tick=tick)
    except Exception as exc:
        record = {
            "point": point.to_dict(),
            "name": point.name,
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8),
        }
    Path(out_path).write_text(json.dumps(record), encoding="utf-8")
    return 0


def run_isolated(
    point: BenchPoint,
    assets: Assets,
    settings: Settings,
    *,
    bandwidth: float = 0.0,
    tick: Tick | None = None,
) -> dict[str, Any]:
    """:func:`run_point` in a fresh ``python`` process (cold loads, its own peak RSS)."""
    tick = tick or (lambda n: None)
    with tempfile.TemporaryDirectory(prefix="gsv-bench-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps(_spec(point, assets, settings, bandwidth)), encoding="utf-8")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gsv_bench.runner", str(spec), str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        tail: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(PROGRESS_TAG):
                tick(int(line.split()[1]))
            else:
                tail = [*tail[-40:], line.rstrip()]
        code = proc.wait()
        if out.is_file():
            return json.loads(out.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    return {
        "point": point.to_dict(),
        "name": point.name,
        "status": "error",
        "reason": f"worker exited with status {code}: " + " | ".join(tail[-5:]),
    }


def stamp(record: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """Add the run-wide fields (schema, time, machine, bundle, settings) to a point record."""
    return {
        "schema": SCHEMA,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        **common,
        **record,
    }


__all__ = ["StageClock", "aggregate", "run_isolated", "run_point", "stamp", "units"]


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
