"""gsv bench report generation on small synthetic results (no model runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsv_bench.report import attach_speedups, load_records, markdown, write_report
from gsv_bench.scenarios import BenchPoint, Sweep, builtin_texts, expand, read_texts, supported
from gsv_bench.sysinfo import gpt_step_bytes, memory_bandwidth_gbps
from gsv_bench.timers import StageClock, summarize
from gsv_runtime.errors import InputError

STAGES = {
    "frontend": 0.01,
    "bert": 0.0,
    "gpt_prefill": 0.1,
    "gpt_steps": 0.5,
    "gpt_host": 0.02,
    "sovits": 0.2,
}


def _machine(name: str, gpu: bool = False) -> dict:
    return {
        "label": name,
        "machine_id": name,
        "cpu": {"model": f"{name} CPU", "isa": ["avx2"], "logical_cores": 2, "physical_cores": 2},
        "gpu": [{"name": "Test GPU", "driver": "1.0", "memory": "80 GiB"}] if gpu else [],
        "os": "Linux",
        "python": "3.11",
        "versions": {"onnxruntime": "1.0"},
        "bandwidth_gbps": {"1": 20.0, "2": 30.0},
    }


def _record(
    engine: str,
    rtf: float,
    *,
    machine: str = "box",
    device: str = "cpu",
    precision: str = "fp32",
    batch: int = 1,
    concurrency: int = 1,
    status: str = "ok",
) -> dict:
    point = BenchPoint(engine, device, precision, 2, batch, concurrency)
    record = {
        "schema": 1,
        "machine": _machine(machine, gpu=device == "gpu"),
        "bundle": {
            "version": "v2",
            "gpt_sha256": "g",
            "sovits_sha256": "s",
            "random_weights": True,
        },
        "settings": {
            "warmup": 1,
            "repeats": 3,
            "fixed_length": 40,
            "seed": 0,
            "texts": [{"lang": "en", "chars": 80, "split": "cut4"}],
        },
        "point": point.to_dict(),
        "name": point.name,
        "status": status,
    }
    if status != "ok":
        return {**record, "reason": "not here"}
    audio = 3.2
    record["effective"] = {"t2s_design": "gqa" if engine == "onnxruntime" else engine}
    record["host"] = {"other_cores": 0.0}
    record["metrics"] = {
        "load_cold_s": 2.0,
        "load_warm_s": 1.5,
        "reference": None,
        "rtf": summarize([rtf * 0.98, rtf, rtf * 1.02]),
        "elapsed_s": summarize([rtf * audio] * 3),
        "audio_s": summarize([audio] * 3),
        "throughput_audio_s_per_s": summarize([1 / rtf] * 3),
        "ttfa_s": summarize([0.5, 0.6]),
        "latency_s": summarize([1.0, 1.1]),
        "stages_s": {k: summarize([v]) for k, v in STAGES.items()},
        "stages_per_audio_s": {k: v * rtf for k, v in STAGES.items()},
        "gpt_step_ms": summarize([12.0, 13.0, 15.0]),
        "gpt_prefill_ms_mean": 100.0,
        "tokens": 80,
        "tokens_per_s": 60.0 / rtf,
        "bandwidth": {"achieved_fraction": 0.5},
        "peak_rss_mb": 900.0,
        "peak_gpu_mb": 1200.0 if device == "gpu" else None,
    }
    return record


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_speedups_compare_only_equal_settings() -> None:
    records = attach_speedups(
        [
            _record("torch", 4.0),
            _record("onnxruntime", 1.0),
            _record("openvino", 2.0, precision="int8"),
            _record("onnxruntime", 0.5, concurrency=2),  # no torch c2: single-stream baseline
            _record("onnxruntime", 0.8, machine="other"),  # no torch on that machine
        ]
    )
    by_name = {(r["machine"]["label"], r["name"]): r for r in records}
    assert by_name[("box", "onnxruntime/cpu/fp32 t2 b1 c1")]["speedup"] == pytest.approx(4.0)
    assert by_name[("box", "openvino/cpu/int8 t2 b1 c1")]["speedup"] == pytest.approx(2.0)
    c2 = by_name[("box", "onnxruntime/cpu/fp32 t2 b1 c2")]
    assert c2["speedup"] == pytest.approx(8.0) and c2["speedup_vs"] == "single-stream"
    assert "speedup" not in by_name[("other", "onnxruntime/cpu/fp32 t2 b1 c1")]


def test_markdown_states_operands_spread_and_skips() -> None:
    text = markdown(
        [
            _record("torch", 4.0),
            _record("onnxruntime", 1.0),
            _record("openvino", 1.0, device="gpu", status="skipped"),
        ]
    )
    assert "| onnxruntime/cpu/fp32 t2 b1 c1 | gqa | 1.000 ± 0.020 | 3.20 / 3.20 | 4.00× |" in text
    assert "13.0 / 14.8" in text  # step p50 / p95
    assert "Variance: RTF's coefficient of variation" in text
    assert "openvino/gpu/fp32 t2 b1 c1: skipped: not here" in text
    assert "| box | box CPU | avx2 | 2/2 |" in text
    assert "random full-size weights" in text


def test_load_records_merges_files_and_names_bad_lines(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [_record("torch", 4.0), _record("onnxruntime", 1.0)])
    b = _write(tmp_path / "b.jsonl", [_record("onnxruntime", 0.1, device="gpu", machine="gpu")])
    assert len(load_records([a, b])) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_record("torch", 1.0)) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        load_records([bad])
    with pytest.raises(FileNotFoundError):
        load_records([tmp_path / "missing.jsonl"])


def test_report_with_charts_for_two_machines(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    records = [
        _record("torch", 4.0),
        _record("onnxruntime", 1.0),
        _record("onnxruntime", 0.7, batch=4),
        _record("onnxruntime", 0.6, concurrency=2),
        _record("torch", 0.5, device="gpu", machine="gpu"),
        _record("onnxruntime", 0.1, device="gpu", machine="gpu"),
    ]
    files = write_report(records, tmp_path)
    names = sorted(p.name for p in files)
    assert names == ["cpu_vs_gpu.png", "report.md", "rtf.png", "stages.png", "throughput.png"]
    for png in files[1:]:
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 200_000
    md = (tmp_path / "report.md").read_text()
    assert "gpu: onnxruntime/gpu/fp32 t2 b1 c1" in md and "5.00×" in md
    assert "![stages](stages.png)" in md


def test_report_without_charts(tmp_path: Path) -> None:
    files = write_report([_record("onnxruntime", 1.0)], tmp_path, charts=False)
    assert [p.name for p in files] == ["report.md"]


def test_sweeps_drop_unsupported_points() -> None:
    points = expand(
        [
            Sweep(engines=("torch", "onnxruntime", "openvino"), precisions=("fp32", "bf16")),
            Sweep(engines=("onnxruntime",), threads=(2,)),  # duplicate point
        ]
    )
    names = [p.name for p in points]
    assert "onnxruntime/cpu/bf16 t2 b1 c1" not in names  # no bf16 onnx graphs
    assert "torch/cpu/bf16 t2 b1 c1" not in names
    assert names.count("onnxruntime/cpu/fp32 t2 b1 c1") == 1
    # the baseline runs fp32 whatever precision is asked: auto and fp32 are one torch point
    both = [p.name for p in expand([Sweep(engines=("torch",), precisions=("auto", "fp32"))])]
    assert both == ["torch/cpu/fp32 t2 b1 c1"]
    assert supported(BenchPoint("openvino", precision="bf16")) is None
    assert BenchPoint("onnxruntime", threads=2, concurrency=2).threads_per_worker == 1
    with pytest.raises(InputError, match="engine"):
        BenchPoint("tensorflow").validate()


def test_texts(tmp_path: Path) -> None:
    (item,) = builtin_texts(["en"], sentences=2)
    assert item.text.count(".") == 2 and item.split == "cut4" and not item.needs_bert
    assert builtin_texts(["zh"])[0].needs_bert
    with pytest.raises(InputError, match="no built-in text"):
        builtin_texts(["xx"])
    f = tmp_path / "t.txt"
    f.write_text("zh|你好。\n\nHello there.\n", encoding="utf-8")
    assert [(t.lang, t.text) for t in read_texts(f)] == [("zh", "你好。"), ("en", "Hello there.")]


def test_timing_helpers() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["n"] == 4
    assert summarize([]) == {"n": 0}
    clock = StageClock()
    clock.wrap(lambda: None, "x")()
    clock.step(0.01, 2, 100)
    seconds, calls, steps = clock.take()
    assert calls == {"x": 1, "gpt_steps": 1} and steps[0].context == 100
    assert seconds["gpt_steps"] == pytest.approx(0.01)
    assert clock.take()[0] == {}
    # v2 GPT at fp32: 24 layers × 12 × 512² + 512 × 1025 weights, plus 2 × 24 × 1 × 100 × 512 KV
    t2s = {"n_layer": 24, "d_model": 512, "vocab_size": 1025}
    weights = (24 * 12 * 512 * 512 + 512 * 1025) * 4
    assert gpt_step_bytes(t2s, 4, 1, 100, 4) == weights + 2 * 24 * 100 * 512 * 4
    assert memory_bandwidth_gbps(1, size_mb=8, repeats=2) > 0.1
