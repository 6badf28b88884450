"""gsv bench end to end on tiny random checkpoints: the CLI verb, every engine, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gsv_runtime.cli import main


def test_bench_cli_on_tiny_bundle(
    tiny_bundle, tiny_voice, tiny_support: Path, ref_wav: Path, tmp_path: Path
) -> None:
    ckpts = tiny_voice("v2")
    out = tmp_path / "out"
    args = [
        "bench",
        "--bundle", str(tiny_bundle("v2")),
        "--ref", str(ref_wav),
        "--prompt-text", "This is a reference.",
        "--prompt-lang", "en",
        "--support", str(tiny_support),
        "--gpt", str(ckpts["gpt"]),
        "--sovits", str(ckpts["sovits"]),
        "--langs", "en,zh",
        "--sentences", "2",
        "--fixed-length", "6",
        "--engines", "torch,onnxruntime,openvino",
        "--devices", "cpu,gpu",
        "--threads", "1",
        "--batch", "2",
        "--warmup", "1",
        "--repeats", "2",
        "--no-isolate",
        "--no-charts",
        "--cache-dir", str(tmp_path / "cache"),
        "-o", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    measured = {r["name"]: r for r in records if r["status"] == "ok"}
    assert set(measured) == {f"{e}/cpu/fp32 t1 b2 c1" for e in ("torch", "onnxruntime", "openvino")}
    gpu = [r for r in records if r["point"]["device"] == "gpu"]
    assert gpu and all(r["status"] == "skipped" and r["reason"] for r in gpu)
    ort = measured["onnxruntime/cpu/fp32 t1 b2 c1"]
    m = ort["metrics"]
    # 2 texts × 2 sentences × 6 tokens × 40 ms per token
    assert m["audio_s"]["median"] == pytest.approx(4 * 6 * 0.04)
    assert m["tokens"] == 2 * 4 * 6 and m["rtf"]["n"] == 2
    assert m["rtf"]["median"] == pytest.approx(m["elapsed_s"]["median"] / m["audio_s"]["median"])
    assert m["stages_s"]["bert"]["median"] > 0  # the Chinese text ran BERT
    # two sentences decoded together: 5 steps after the prefill per text, 2 texts, 2 passes
    assert m["gpt_step_ms"]["n"] == 2 * 2 * 5
    assert m["bandwidth"]["mean_batch"] == 2
    assert m["reference"]["stages_s"]["hubert"] > 0
    assert m["bandwidth"]["achieved_fraction"] > 0 and m["peak_rss_mb"] > 0
    assert ort["effective"]["t2s_design"] == "gqa"
    assert ort["machine"]["cpu"]["logical_cores"] and ort["bundle"]["gpt_sha256"]
    torch_m = measured["torch/cpu/fp32 t1 b2 c1"]["metrics"]
    assert torch_m["gpt_step_ms"]["n"] == 2 * 2 * 5
    assert torch_m["audio_s"]["median"] == pytest.approx(m["audio_s"]["median"])
    report = (out / "report.md").read_text()
    assert "| onnxruntime/cpu/fp32 t1 b2 c1 | gqa |" in report and "×" in report

    merged = tmp_path / "merged"
    result = CliRunner().invoke(
        main, ["bench", "report", str(out / "results.jsonl"), "-o", str(merged), "--no-charts"]
    )
    assert result.exit_code == 0, result.output
    assert (merged / "report.md").read_text() == report


def test_timed_session_context_restarts_with_each_request() -> None:
    """The engine keeps one GPT session across requests; the recorded context (for the
    bandwidth bound) is the live prefix plus steps, not a sum over every request served."""
    import numpy as np

    from gsv_bench.engines import _TimedSession
    from gsv_bench.timers import StageClock

    class Rows:
        batch = 0

        def join(self, *_: object) -> None:
            self.batch = 1

        def step(self, tokens: np.ndarray) -> np.ndarray:
            return tokens

        def keep(self, rows: list[int]) -> None:
            self.batch = len(rows)

    inner = Rows()
    inner.design = "fake"  # type: ignore[attr-defined]
    clock = StageClock()
    session = _TimedSession(inner, clock)
    phones, prompt = np.zeros((1, 30), np.int64), np.zeros((1, 70), np.int64)
    for _ in range(2):  # two requests, one after the other
        session.join(phones, None, None, prompt, None)
        for _ in range(5):
            session.step(np.zeros(1, np.int64))
        session.keep([])
    assert [s.context for s in clock.steps] == [101, 102, 103, 104, 105] * 2
