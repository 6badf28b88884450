"""gsv bench serving on a tiny bundle: every point measured, the table and chart written."""

from __future__ import annotations

import json
from pathlib import Path

from gsv_bench.serving import run_serving, write_serving
from gsv_runtime.synthesizer import Synthesizer


def test_serving_points_and_report(tiny_bundle, ref_wav: Path, tmp_path: Path) -> None:
    bundle = tiny_bundle("v2")
    root = tmp_path / "voices-root"
    synth = Synthesizer.load(bundle, backend="onnxruntime")
    synth.voice(ref_wav, "这是一段参考音频。", "zh").save(root, "bench")
    records = run_serving(
        bundle,
        root,
        "bench",
        backend="onnxruntime",
        precision="fp32",
        concurrency=[1, 3],
        tokens=15,
        progress=lambda _: None,
    )
    assert [(r["mode"], r["concurrency"]) for r in records] == [
        ("engine", 1),
        ("engine", 3),
        ("sessions", 1),
        ("sessions", 3),
    ]
    for r in records:
        assert r["gpt_tokens_per_s"] > 0 and r["audio_s_per_s"] > 0
        assert r["busy_s"]["gpt"] > 0 and r["busy_s"]["acoustic"] > 0
        # 15 tokens per request → 15 × 1280 samples at 32 kHz each
        assert abs(r["audio_s_per_s"] * r["wall_s"] - r["concurrency"] * 15 * 0.04) < 1e-6
    write_serving(records, tmp_path / "out")
    lines = (tmp_path / "out" / "serving.jsonl").read_text().splitlines()
    assert [json.loads(x)["concurrency"] for x in lines] == [1, 3, 1, 3]
    table = (tmp_path / "out" / "serving.md").read_text()
    assert table.count("\n") == 2 + len(records)
    assert (tmp_path / "out" / "serving.png").stat().st_size > 1000
