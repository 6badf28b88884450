"""Per-step GPT decode time of each KV-cache design at a fixed context (``python -m``-able).

Measures ``T2SSession.step`` (host binding included) at context ≈ ``context`` for batch sizes
1 and 4 on full-size random weights, for every design the bundle holds (onnxruntime canonical
concat, onnxruntime GQA, OpenVINO stateful) and a grow-by-concat baseline (torch eager,
``torch.cat`` cache: upstream's ``infer_panel_naive`` loop). Reported: median and p90 of
``steps`` timed steps after ``warmup`` steps; the prefix is sized so the median step sits at the
context. Without ``--bundle`` a full-size random GPT is exported to ``--work-dir`` first (torch,
onnx and openvino needed; reused when present).

    python -m gsv_bench.kv_step --threads 2 --json kv_step.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsv_bench.sysinfo import machine_info
from gsv_bench.timers import summarize, time_calls
from gsv_runtime.backends import RunnerOptions, available_backends
from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import GsvError
from gsv_runtime.gpt.t2s import open_t2s

_LOGGER = logging.getLogger(__name__)

DESIGNS: tuple[tuple[str, str], ...] = (
    ("onnxruntime", "canonical"),
    ("onnxruntime", "gqa"),
    ("openvino", "stateful"),
)


@dataclass(frozen=True)
class StepTiming:
    """One (design, precision, batch) measurement in milliseconds per step."""

    design: str
    backend: str
    precision: str
    batch: int
    context: int
    median_ms: float
    p90_ms: float
    min_ms: float
    """Least step time: the figure least disturbed by other load on a shared host."""
    steps: int


def _prefix(batch: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``batch`` identical-length rows whose prefix has ``width`` slots (60 % phones)."""
    rng = np.random.default_rng(seed)
    sx = max(1, int(width * 0.6))
    sy = max(1, width - sx)
    return {
        "phones": rng.integers(0, 300, (batch, sx)),
        "phone_lens": np.full(batch, sx),
        "bert": rng.standard_normal((batch, sx, 1024)).astype(np.float32),
        "prompt": rng.integers(0, 1024, (batch, sy)),
        "prompt_lens": np.full(batch, sy),
    }


def _time_steps(
    step: Callable[[np.ndarray], Any], batch: int, warmup: int, steps: int
) -> list[float]:
    """Milliseconds of each timed step (random tokens drawn beforehand, outside the timing)."""
    tokens = np.random.default_rng(1).integers(0, 1024, (warmup + steps, batch))
    return [t * 1e3 for t in time_calls(lambda i: step(tokens[i]), warmup, steps)]


def _summary(times: list[float]) -> tuple[float, float, float]:
    s = summarize(times)
    return s["median"], s["p90"], s["min"]


def bench_session(
    bundle: Bundle,
    backend: str,
    design: str,
    precision: str,
    batch: int,
    context: int,
    *,
    options: RunnerOptions,
    warmup: int = 5,
    steps: int = 25,
) -> StepTiming:
    """Time one design: prefill to ``context − warmup − steps/2`` then time single steps."""
    session = open_t2s(bundle, backend, options, precision, design=design)  # type: ignore[arg-type]
    p = _prefix(batch, context - warmup - steps // 2)
    session.prefill(p["phones"], p["phone_lens"], p["bert"], p["prompt"], p["prompt_lens"])
    stats = _summary(_time_steps(session.step, batch, warmup, steps))
    return StepTiming(design, backend, precision, batch, context, *stats, steps)


def bench_torch_concat(
    model: Any, batch: int, context: int, *, warmup: int = 5, steps: int = 25
) -> StepTiming:
    """Baseline: torch eager step with a cache grown by ``torch.cat`` every step."""
    import torch

    p = {k: torch.from_numpy(v) for k, v in _prefix(batch, context - warmup - steps // 2).items()}
    with torch.no_grad():
        _, cache = model.prefill(
            p["phones"], p["phone_lens"], p["bert"], p["prompt"], p["prompt_lens"]
        )
        keys, values = list(cache.keys), list(cache.values)
        pos = [int(p["prompt_lens"][0])]

        def step(tokens: np.ndarray) -> None:
            h = model.embed_audio(
                torch.from_numpy(tokens).view(-1, 1), torch.full((batch, 1), pos[0])
            )
            for i, layer in enumerate(model.layers):
                q, k, v = layer.qkv(h)
                keys[i] = torch.cat([keys[i], k], dim=2)
                values[i] = torch.cat([values[i], v], dim=2)
                h = layer.finish(h, layer.attend(q, keys[i], values[i], 0.0))
            model.predict(h[:, 0])
            pos[0] += 1

        stats = _summary(_time_steps(step, batch, warmup, steps))
    return StepTiming("torch-concat", "torch", "fp32", batch, context, *stats, steps)


def build_random_bundle(
    work_dir: Path, precisions: Sequence[str], seed: int = 0
) -> tuple[Bundle, Any]:
    """Export a full-size random GPT (v2 shapes) into ``work_dir`` unless already there."""
    import torch

    from gsv_export.gpt import export_gpt_graphs
    from gsv_export.writer import write_manifest
    from gsv_models.testing import random_t2s, t2s_config
    from gsv_models.version import ModelVersion
    from gsv_runtime.bundle import MANIFEST_NAME

    model = random_t2s(t2s_config(ModelVersion.V2, "full"), seed)
    torch.set_grad_enabled(False)
    if not (work_dir / MANIFEST_NAME).is_file():
        specs = export_gpt_graphs(model, work_dir, ("onnx", "openvino"), precisions)
        write_manifest(work_dir, "voice", specs)
    return Bundle.load(work_dir), model


def run_benchmark(
    bundle: Bundle,
    model: Any | None,
    *,
    context: int = 500,
    batches: Sequence[int] = (1, 4),
    precisions: Sequence[str] = ("fp32",),
    threads: int = 2,
    warmup: int = 5,
    steps: int = 25,
) -> list[StepTiming]:
    """Every available design × precision × batch, plus the torch baseline when ``model``."""
    options = RunnerOptions(threads=threads)
    have = available_backends()
    results = []
    for batch in batches:
        if model is not None:
            import torch

            torch.set_num_threads(threads)
            results.append(bench_torch_concat(model, batch, context, warmup=warmup, steps=steps))
        for precision in precisions:
            for backend, design in DESIGNS:
                if backend not in have:
                    continue
                try:
                    results.append(
                        bench_session(
                            bundle,
                            backend,
                            design,
                            precision,
                            batch,
                            context,
                            options=options,
                            warmup=warmup,
                            steps=steps,
                        )
                    )
                except GsvError as exc:  # a design the bundle lacks at this precision
                    _LOGGER.warning("skip %s/%s/%s B%d: %s", design, backend, precision, batch, exc)
    return results


def format_table(results: Sequence[StepTiming]) -> str:
    """Markdown table (ms per step): one row per design and precision, three columns per batch."""
    batches = sorted({r.batch for r in results})
    head = (
        "| design | backend | precision | "
        + " | ".join(f"B{b} median | B{b} p90 | B{b} min" for b in batches)
        + " |"
    )
    lines = [head, "|" + "---|" * (3 + 3 * len(batches))]
    keys = list(dict.fromkeys((r.design, r.backend, r.precision) for r in results))
    for key in keys:
        cells = []
        for b in batches:
            hit = [r for r in results if (r.design, r.backend, r.precision) == key and r.batch == b]
            cells += (
                [f"{hit[0].median_ms:.1f}", f"{hit[0].p90_ms:.1f}", f"{hit[0].min_ms:.1f}"]
                if hit
                else ["—"] * 3
            )
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def system_info(threads: int) -> dict[str, Any]:
    """Versions and machine facts recorded with the figures (as ``gsv bench`` records them)."""
    return {**machine_info(), "threads": threads}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: build or open a bundle, run, print the table, optionally write JSON."""
    ap = argparse.ArgumentParser(
        prog="python -m gsv_bench.kv_step", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--bundle", type=Path, help="existing bundle with the t2s graphs")
    ap.add_argument("--work-dir", type=Path, default=Path(".cache/kv_step_bundle"))
    ap.add_argument("--context", type=int, default=500)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    precisions = args.precisions.split(",")
    if args.bundle:
        bundle, model = Bundle.load(args.bundle), None
    else:
        bundle, model = build_random_bundle(args.work_dir, precisions)
    results = run_benchmark(
        bundle,
        model,
        context=args.context,
        batches=[int(b) for b in args.batches.split(",")],
        precisions=precisions,
        threads=args.threads,
        warmup=args.warmup,
        steps=args.steps,
    )
    print(format_table(results))
    if args.json:
        payload = {"system": system_info(args.threads), "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
