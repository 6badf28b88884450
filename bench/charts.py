"""PNG charts of benchmark records (matplotlib, the ``bench`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsv_bench.engines import CFM_STAGES, STAGES
from gsv_bench.report import config_label, machine_label, ok

_COLORS = {
    "frontend": "#8c8c8c",
    "bert": "#b07aa1",
    "gpt_prefill": "#f28e2b",
    "gpt_steps": "#e15759",
    "gpt_host": "#ff9d9a",
    "sovits": "#4e79a7",
    "cfm_encoder": "#76b7b2",
    "cfm_dit": "#59a14f",
    "cfm_vocoder": "#edc948",
}
_SHORT = {"torch": "torch", "onnxruntime": "ORT", "openvino": "OV"}
_ENGINE_COLORS = {"torch": "#bab0ac", "onnxruntime": "#4e79a7", "openvino": "#59a14f"}


def require_matplotlib() -> None:
    """Fail early (before a long run) when charts are wanted but matplotlib is missing.

    Raises:
        ImportError: naming the ``bench`` extra.
    """
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "charts need matplotlib: pip install gsv-rt[bench] (or pass --no-charts)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Write the figure and close it (pyplot keeps every open figure alive until closed)."""
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def stages_chart(records: Sequence[dict[str, Any]], path: Path, several: bool) -> Path:
    """Stacked horizontal bars: ms of each stage per second of audio, one bar per config."""
    plt = _pyplot()
    labels = [config_label(r, several) for r in records]
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.38 * len(records)))
    left = [0.0] * len(records)
    for stage in STAGES:
        vals = [(r["metrics"]["stages_per_audio_s"].get(stage) or 0.0) * 1e3 for r in records]
        if stage in CFM_STAGES and not any(vals):
            continue  # v1/v2 records: no CFM parts
        ax.barh(labels, vals, left=left, color=_COLORS[stage], label=stage)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.axvline(1000, color="black", lw=0.8, ls="--", label="real time (one stream)")
    ax.invert_yaxis()
    ax.set_xlabel("ms of compute per second of audio (stages summed over workers)")
    ax.set_title("Where the time goes, per configuration", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def rtf_chart(records: Sequence[dict[str, Any]], path: Path, several: bool) -> Path:
    """RTF by engine and precision (batch 1, one stream, most threads), with the spread."""
    plt = _pyplot()
    single = [r for r in records if r["point"]["batch"] == 1 and r["point"]["concurrency"] == 1]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in single:
        p = r["point"]
        groups.setdefault((machine_label(r), p["device"], p["threads"]), []).append(r)
    ordered = sorted(groups.items())
    bars = [len(rs) for _, rs in ordered]
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(max(6.0, 0.8 * sum(bars) + 1.5 * len(groups)), 3.8),
        squeeze=False,
        gridspec_kw={"width_ratios": [max(2, n) for n in bars]},
    )
    for ax, ((machine, device, threads), rs) in zip(axes[0], ordered, strict=True):
        names = [f"{_SHORT.get(r['point']['engine'], '?')}\n{r['point']['precision']}" for r in rs]
        med = [r["metrics"]["rtf"]["median"] for r in rs]
        err = [r["metrics"]["rtf"].get("std", 0.0) for r in rs]
        colors = [_ENGINE_COLORS.get(r["point"]["engine"], "#999") for r in rs]
        ax.bar(names, med, yerr=err, color=colors, capsize=3)
        for i, r in enumerate(rs):
            if "speedup" in r:
                top = med[i] + err[i]
                ax.text(i, top, f"{r['speedup']:.1f}×", ha="center", va="bottom", fontsize=8)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        title = f"{device}, {threads} thread(s)"
        ax.set_title(f"{machine}\n{title}" if several else title, fontsize=9)
        ax.set_ylabel("RTF (lower is faster)")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("RTF by backend and precision (labels: speed-up over torch)", fontsize=10)
    return _save(fig, path)


def _series(
    records: Sequence[dict[str, Any]], axis: str, other: str, several: bool
) -> dict[tuple[Any, ...], list[tuple[int, float]]]:
    """Throughput points per (machine, engine, device, precision, threads) along ``axis``."""
    series: dict[tuple[Any, ...], list[tuple[int, float]]] = {}
    for r in records:
        p = r["point"]
        if p[other] != 1:
            continue
        key = (
            machine_label(r) if several else "",
            p["engine"],
            p["device"],
            p["precision"],
            f"t{p['threads']}",
        )
        series.setdefault(key, []).append(
            (p[axis], r["metrics"]["throughput_audio_s_per_s"]["median"])
        )
    return {k: sorted(v) for k, v in series.items() if len({x for x, _ in v}) > 1}


def throughput_chart(records: Sequence[dict[str, Any]], path: Path, several: bool) -> Path | None:
    """Aggregate audio seconds per second against concurrency and against batch size.

    Only series measured at two or more values are drawn; None when there are none.
    """
    panels = [
        (axis, other, _series(records, axis, other, several))
        for axis, other in (("concurrency", "batch"), ("batch", "concurrency"))
    ]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 3.8), squeeze=False)
    for ax, (axis, other, series) in zip(axes[0], panels, strict=True):
        xs = sorted({x for pts in series.values() for x, _ in pts})
        for key, pts in series.items():
            label = "/".join(k for k in key if k)
            color = _ENGINE_COLORS.get(key[1])
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label, color=color)
        ax.set_xticks(xs)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(axis)
        ax.set_ylabel("audio seconds per second")
        ax.set_title(f"Throughput vs {axis} ({other} 1)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def cpu_gpu_chart(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """RTF on CPU and GPU side by side per engine/precision (batch 1, one stream)."""
    plt = _pyplot()
    single = [r for r in records if r["point"]["batch"] == 1 and r["point"]["concurrency"] == 1]
    best: dict[tuple[str, str], dict[str, float]] = {}
    for r in single:
        p = r["point"]
        cell = best.setdefault((p["engine"], p["precision"]), {})
        rtf = r["metrics"]["rtf"]["median"]
        cell[p["device"]] = min(rtf, cell.get(p["device"], rtf))
    keys = sorted(best)
    fig, ax = plt.subplots(figsize=(1.4 * len(keys) + 2, 3.6))
    width = 0.38
    for j, (device, color) in enumerate((("cpu", "#4e79a7"), ("gpu", "#76b900"))):
        xs = [i + (j - 0.5) * width for i in range(len(keys))]
        ax.bar(xs, [best[k].get(device, 0.0) for k in keys], width, label=device, color=color)
    ax.set_xticks(range(len(keys)), [f"{e}\n{p}" for e, p in keys], fontsize=8)
    ax.set_ylabel("RTF (best over threads; lower is faster)")
    ax.set_title("CPU vs GPU")
    ax.legend()
    return _save(fig, path)


def write_charts(records: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """All charts the records support; returns the PNG paths written."""
    measured = ok(records)
    if not measured:
        return []
    several = len({machine_label(r) for r in measured}) > 1
    paths = [
        stages_chart(measured, out_dir / "stages.png", several),
        rtf_chart(measured, out_dir / "rtf.png", several),
    ]
    throughput = throughput_chart(measured, out_dir / "throughput.png", several)
    if throughput is not None:
        paths.append(throughput)
    if {r["point"]["device"] for r in measured} >= {"cpu", "gpu"}:
        paths.append(cpu_gpu_chart(measured, out_dir / "cpu_vs_gpu.png"))
    return paths
