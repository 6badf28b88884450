"""gsv_bench: CPU-vs-GPU and backend-vs-backend benchmarks of the gsv runtime (``gsv bench``).

:func:`run_benchmark` measures configuration points (engine × device × precision × threads ×
batch × concurrency) on one voice, appends one JSON line per point to ``results.jsonl`` and
writes ``report.md`` plus PNG charts. ``gsv_bench.kv_step`` is the GPT-step micro-benchmark.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gsv_bench.assets import Assets
from gsv_bench.report import BUSY_HOST_CORES, append_records, load_records, write_report
from gsv_bench.runner import run_isolated, run_point, stamp, units
from gsv_bench.scenarios import PRESETS, BenchPoint, Settings, Sweep, expand, resolve_threads
from gsv_bench.sysinfo import HostLoad, machine_info, memory_bandwidth_gbps

__all__ = ["Assets", "BenchPoint", "BenchResult", "Settings", "Sweep", "run_benchmark"]

_LOGGER = logging.getLogger(__name__)


@dataclass
class BenchResult:
    """What a run produced."""

    records: list[dict[str, Any]]
    jsonl: Path
    files: list[Path] = field(default_factory=list)


def _bandwidths(points: Sequence[BenchPoint]) -> dict[str, float]:
    counts = sorted({1, *(p.threads for p in points if p.device == "cpu")})
    return {str(n): memory_bandwidth_gbps(n) for n in counts}


def run_benchmark(
    assets: Assets,
    points: Sequence[BenchPoint],
    settings: Settings,
    out_dir: str | Path,
    *,
    label: str | None = None,
    fresh: bool = False,
    charts: bool = True,
    progress: Callable[[int, str], None] | None = None,
    echo: Callable[[str], None] = _LOGGER.info,
) -> BenchResult:
    """Measure every point and write ``results.jsonl`` (appended), ``report.md`` and charts.

    Args:
        assets: voice bundle, support bundle, voice and (for the baseline) checkpoints.
        points: configurations to measure (see :func:`gsv_bench.scenarios.expand`).
        settings: warm-up, repeats, decode length, texts, isolation.
        out_dir: output folder.
        label: machine name used in merged reports.
        fresh: start ``results.jsonl`` afresh instead of appending.
        charts: also write the PNG charts (needs matplotlib).
        progress: called as ``progress(units_done, current_label)``.
        echo: one line per finished point.

    Returns:
        The records of this run and the files written (the report covers the whole file).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "results.jsonl"
    if fresh and jsonl.exists():
        jsonl.unlink()
    machine = machine_info(label)
    machine["bandwidth_gbps"] = _bandwidths(points)
    common = {
        "machine": machine,
        "bundle": assets.describe(),
        "settings": settings.to_dict(),
    }
    records = []
    for point in points:
        if progress:
            progress(0, point.name)
        bw = machine["bandwidth_gbps"].get(str(point.threads), 0.0)
        tick = (lambda n, name=point.name: progress(n, name)) if progress else None
        with HostLoad() as load:
            if settings.isolate:
                record = run_isolated(point, assets, settings, bandwidth=bw, tick=tick)
            else:
                record = run_point(point, assets, settings, bandwidth=bw, tick=tick)
        record = stamp(record, common)
        record["host"] = {"other_cores": load.other_cores, "steal_cores": load.steal_cores}
        append_records(jsonl, [record])
        records.append(record)
        echo(_summary_line(record))
    files = write_report(load_records([jsonl]), out, charts=charts)
    return BenchResult(records, jsonl, [jsonl, *files])


def _summary_line(record: dict[str, Any]) -> str:
    if record.get("status") != "ok":
        return f"{record['name']}: {record['status']}: {record.get('reason')}"
    m = record["metrics"]
    line = (
        f"{record['name']}: RTF {m['rtf']['median']:.3f} ± {m['rtf']['std']:.3f} "
        f"({m['elapsed_s']['median']:.2f} s / {m['audio_s']['median']:.2f} s audio), "
        f"TTFA {m['ttfa_s']['median']:.2f} s, step p50 {m['gpt_step_ms'].get('median', 0):.1f} ms"
    )
    other = (record.get("host") or {}).get("other_cores")
    if other is not None and other > BUSY_HOST_CORES:
        line += f" [warning: other processes kept {other:.1f} cores busy meanwhile]"
    return line


def preset_points(name: str, cores: int | None = None) -> tuple[list[BenchPoint], Settings]:
    """A preset's points (``threads=0`` → this machine's logical cores) and settings.

    Raises:
        KeyError: an unknown preset.
    """
    preset = PRESETS[name]
    sweeps = resolve_threads(preset.sweeps, cores or os.cpu_count() or 1)
    return expand(sweeps), replace(preset.settings)


def total_units(points: Sequence[BenchPoint], settings: Settings) -> int:
    """Progress units of a whole run."""
    return len(points) * units(settings)
