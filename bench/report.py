"""Results → tables: JSON lines in, markdown out, speed-ups over the torch baseline computed here.

Records from several files (several machines: ``gsv bench report cpu.jsonl gpu.jsonl``) merge
freely; a figure is compared with a baseline only under equal settings: the same machine,
device, threads, batch, concurrency and workload (model, texts, decode length).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gsv_bench.engines import CFM_STAGES, STAGES
from gsv_runtime.errors import InputError

BASELINE = "torch"
BUSY_HOST_CORES = 0.25
"""Other processes' average busy cores above which a figure is flagged as disturbed."""


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every record of the given JSON-lines files, in order.

    Raises:
        FileNotFoundError: a missing file.
        InputError: a line that is not a JSON object (names file and line).
    """
    records = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such results file (gsv bench writes results.jsonl)"
            )
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "point" not in record:
                raise InputError(f"{path}:{n}: not a gsv bench record")
            records.append(record)
    return records


def append_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines (one object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")


def ok(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured records (status ok)."""
    return [r for r in records if r.get("status") == "ok"]


def machine_label(record: dict[str, Any]) -> str:
    """The machine's label (or id)."""
    m = record.get("machine", {})
    return str(m.get("label") or m.get("machine_id") or "?")


def workload_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What must be equal for two figures to be compared: model, texts, decode length."""
    s = record.get("settings", {})
    b = record.get("bundle", {})
    texts = tuple((t.get("lang"), t.get("chars"), t.get("split")) for t in s.get("texts", []))
    model = (b.get("gpt_sha256"), b.get("sovits_sha256"))
    if model[0] is None:
        model = (b.get("version"), None)
    return (model, texts, s.get("fixed_length"), s.get("seed"))


def _key(record: dict[str, Any], **override: Any) -> tuple[Any, ...]:
    p = {**record["point"], **override}
    m = record.get("machine", {}).get("machine_id")
    return (
        m,
        p["device"],
        p["threads"],
        p["batch"],
        p["concurrency"],
        p.get("sample_steps"),
        workload_key(record),
    )


def attach_speedups(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``records`` with ``speedup`` = baseline RTF ÷ this RTF where a baseline exists.

    The baseline is the torch record with the same machine, device, threads, batch, concurrency
    and workload; failing that, the single-stream (batch 1, concurrency 1) torch record of the
    same machine, device, threads and workload, flagged ``speedup_vs`` = ``single-stream``.
    """
    base = {_key(r): r for r in ok(records) if r["point"]["engine"] == BASELINE}
    out = []
    for r in records:
        r = dict(r)
        if r.get("status") == "ok":
            exact = base.get(_key(r))
            single = base.get(_key(r, batch=1, concurrency=1))
            ref, kind = (exact, "same") if exact else (single, "single-stream")
            rtf = r["metrics"]["rtf"].get("median")
            if ref is not None and rtf:
                r["speedup"] = ref["metrics"]["rtf"]["median"] / rtf
                r["speedup_vs"] = kind
        out.append(r)
    return out


# --------------------------------------------------------------------------- formatting


def _f(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}{unit}"


def _rtf_cell(m: dict[str, Any]) -> str:
    rtf = m["rtf"]
    if not rtf.get("n"):
        return "—"
    return f"{rtf['median']:.3f} ± {rtf['std']:.3f}"


def _speedup_cell(r: dict[str, Any]) -> str:
    if "speedup" not in r:
        return "—"
    mark = "" if r.get("speedup_vs") == "same" else "*"
    return f"{r['speedup']:.2f}×{mark}"


def config_label(r: dict[str, Any], with_machine: bool = False) -> str:
    """``engine/device/precision tN bN cN`` (plus the machine when several are merged)."""
    p = r["point"]
    label = (
        f"{p['engine']}/{p['device']}/{p['precision']} t{p['threads']} b{p['batch']} "
        f"c{p['concurrency']}"
    )
    if p.get("sample_steps") is not None:
        label += f" s{p['sample_steps']}"
    return f"{machine_label(r)}: {label}" if with_machine else label


def _machines_table(records: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, dict[str, Any]] = {}
    for r in records:
        if "machine" in r:
            seen.setdefault(r["machine"].get("machine_id", "?"), r["machine"])
    lines = [
        "| machine | CPU | ISA | cores (phys/logical) | GPU | OS | Python | versions | "
        "read bandwidth | last-level cache |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in seen.values():
        cpu = m.get("cpu", {})
        gpu = "; ".join(f"{g['name']} (driver {g['driver']})" for g in m.get("gpu", [])) or "—"
        versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
        bw = m.get("bandwidth_gbps", {})
        bw_cell = ", ".join(f"{k} thr {v:.1f} GB/s" for k, v in bw.items()) or "—"
        lines.append(
            f"| {m.get('label')} | {cpu.get('model')} | {' '.join(cpu.get('isa', []))} | "
            f"{cpu.get('physical_cores')}/{cpu.get('logical_cores')} | {gpu} | {m.get('os')} | "
            f"{m.get('python')} | {versions} | {bw_cell} | {cpu.get('last_level_cache') or '—'} |"
        )
    return lines


def _main_table(records: Sequence[dict[str, Any]], with_machine: bool) -> list[str]:
    lines = [
        "| configuration | GPT design | RTF (median ± std) | elapsed s / audio s | vs torch | "
        "TTFA s | GPT step p50 / p95 ms | tokens/s | audio s per s | load cold / cached s | "
        "peak RSS MB | BW bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m = r["metrics"]
        step = m["gpt_step_ms"]
        bw = (m.get("bandwidth") or {}).get("achieved_fraction")
        gpu = f" (GPU {m['peak_gpu_mb']:.0f})" if m.get("peak_gpu_mb") else ""
        design = r.get("effective", {}).get("t2s_design", "—")
        lines.append(
            f"| {config_label(r, with_machine)} | {design} | "
            f"{_rtf_cell(m)} | {_f(m['elapsed_s'].get('median'))} / "
            f"{_f(m['audio_s'].get('median'))} | {_speedup_cell(r)} | "
            f"{_f(m['ttfa_s'].get('median'))} | {_f(step.get('median'), 1)} / "
            f"{_f(step.get('p95'), 1)} | {_f(m.get('tokens_per_s'), 0)} | "
            f"{_f(m['throughput_audio_s_per_s'].get('median'))} | {_f(m['load_cold_s'], 1)} / "
            f"{_f(m['load_warm_s'], 1)} | {_f(m.get('peak_rss_mb'), 0)}{gpu} | "
            f"{_f(bw * 100 if bw else None, 0, ' %')} |"
        )
    return lines


def _stage_table(records: Sequence[dict[str, Any]], with_machine: bool) -> list[str]:
    cfm = any(r["metrics"].get("cfm") for r in records)
    stages = [s for s in STAGES if cfm or s not in CFM_STAGES]
    lines = [
        "| configuration | " + " | ".join(stages) + " | GPT prefill ms (mean) | reference s |",
        "|---|" + "---|" * (len(stages) + 2),
    ]
    for r in records:
        m = r["metrics"]
        per = m.get("stages_per_audio_s", {})
        ref = m.get("reference") or {}
        cells = [_ms_cell(per.get(s)) for s in stages]
        lines.append(
            f"| {config_label(r, with_machine)} | " + " | ".join(cells) + f" | "
            f"{_f(m.get('gpt_prefill_ms_mean'), 1)} | {_f(ref.get('total_s'))} |"
        )
    return lines


def _cfm_table(records: Sequence[dict[str, Any]], with_machine: bool) -> list[str]:
    """v3/v4: the acoustic stage's parts per configuration, decode length and step count."""
    lines = [
        "| configuration | voice | tokens | steps | RTF | vs torch | encoder s | DiT ms/step | "
        "DiT frames × rows | DiT ms per frame-step | DiT s | vocoder s | vocoder ms per audio s |"
        " audio s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        c = r["metrics"].get("cfm")
        if not c:
            continue
        m = r["metrics"]
        steps = r.get("effective", {}).get("sample_steps", r["point"].get("sample_steps"))
        dit_s = m["stages_s"].get("cfm_dit", {}).get("median")
        lines.append(
            f"| {config_label(r, with_machine)} | {r.get('bundle', {}).get('version')} | "
            f"{r.get('settings', {}).get('fixed_length')} | "
            f"{steps} | {_rtf_cell(m)} | {_speedup_cell(r)} | {_f(c.get('encoder_s'), 3)} | "
            f"{_f(c['dit_step_ms'].get('median'), 0)} | {_f(c.get('dit_frames_mean'), 0)} × "
            f"{_f(c.get('dit_rows_mean'), 0)} | {_f(c.get('dit_ms_per_frame'), 2)} | "
            f"{_f(dit_s)} | {_f(c.get('vocoder_s'))} | "
            f"{_f(c.get('vocoder_ms_per_audio_s'), 0)} | {_f(m['audio_s'].get('median'))} |"
        )
    return lines


def _ms_cell(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    return _f(ms, 0 if ms >= 10 else 1)


def _variance_line(records: Sequence[dict[str, Any]]) -> str:
    cvs = []
    for r in records:
        rtf = r["metrics"]["rtf"]
        if rtf.get("n", 0) > 1 and rtf.get("mean"):
            cvs.append(rtf["std"] / rtf["mean"])
    if not cvs:
        return "Variance: single pass per configuration; no spread measured."
    return (
        f"Variance: RTF's coefficient of variation over the timed passes is "
        f"{min(cvs) * 100:.1f}–{max(cvs) * 100:.1f} % "
        f"(median {sorted(cvs)[len(cvs) // 2] * 100:.1f} %)"
        "; differences smaller than about twice that are noise."
    )


def _busy_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    busy = [
        (config_label(r), r["host"]["other_cores"])
        for r in records
        if (r.get("host") or {}).get("other_cores") is not None
        and r["host"]["other_cores"] > BUSY_HOST_CORES
    ]
    if not busy:
        return []
    cells = "; ".join(f"{name} ({cores:.1f})" for name, cores in busy)
    return [
        f"Disturbed: other processes kept cores busy during {cells} (average cores): "
        "those figures are pessimistic.",
        "",
    ]


def _isolation_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    if all(r.get("settings", {}).get("isolate", True) for r in records):
        return []
    return [
        "Peak RSS and cold loads of configurations measured in one process (--no-isolate, "
        "the quick preset) include what earlier configurations left loaded; `--isolate` gives "
        "each configuration its own process.",
        "",
    ]


def markdown(records: Sequence[dict[str, Any]], charts: Sequence[str] = ()) -> str:
    """The report: machines, the main table, stages, skipped points, notes, chart links."""
    records = attach_speedups(records)
    measured = ok(records)
    machines = {machine_label(r) for r in measured}
    several = len(machines) > 1
    out = ["# gsv bench results", ""]
    if records:
        s = records[0].get("settings", {})
        b = records[0].get("bundle", {})
        langs = ", ".join(sorted({t["lang"] for t in s.get("texts", [])}))
        weights = "random full-size weights" if b.get("random_weights") else "real weights"
        out += [
            f"Model {b.get('version', '?')} ({weights}); texts: {langs or '?'}; "
            f"decode length: {s.get('fixed_length') or 'until EOS'} tokens per sentence; "
            f"{s.get('warmup')} warm-up round(s) (one request per language), "
            f"{s.get('repeats')} timed passes.",
            "",
        ]
    out += ["## Machines", "", *_machines_table(records), ""]
    out += ["## Results", "", *_main_table(measured, several), ""]
    out += [
        "RTF = elapsed ÷ audio duration of a pass over the text set (lower is faster); "
        "*vs torch* = torch RTF ÷ this RTF under equal settings (* = against the single-stream "
        "torch run); TTFA = time to the first streamed segment; *audio s per s* = aggregate "
        "throughput (all workers); BW bound = time to read the GPT step's weights and KV cache "
        "at the measured read bandwidth ÷ the measured step p50 (100 % = memory-bound limit).",
        "",
        _variance_line(measured),
        "",
        *_busy_lines(measured),
        *_isolation_lines(measured),
        "## Stages (ms per second of audio)",
        "",
        *_stage_table(measured, several),
        "",
        "Per-stage time summed over a pass ÷ audio seconds (median over passes). With "
        "concurrency > 1 the stages of parallel workers add up to more than the wall time. "
        "*reference* = one voice preparation (HuBERT, SV, encoders), not part of a request.",
        "",
    ]
    if any(r["metrics"].get("cfm") for r in measured):
        out += [
            "## v3/v4: encoder, DiT, vocoder",
            "",
            *_cfm_table(measured, several),
            "",
            "Medians over passes: *DiT ms/step* per velocity call over *frames* mel frames "
            "(prompt + target, one chunk) and *rows* (2 with guidance); *DiT s* = all steps "
            "plus the text embedding per pass; *vocoder ms per audio s* = vocoder time ÷ audio "
            "seconds; *tokens* = decode length per sentence (25 tokens ≈ 1 s of audio).",
            "",
        ]
    other = [r for r in records if r.get("status") != "ok"]
    if other:
        out += ["## Not measured", ""]
        out += [f"- {config_label(r)}: {r.get('status')}: {r.get('reason')}" for r in other]
        out += [""]
    if charts:
        out += ["## Charts", ""] + [f"![{Path(c).stem}]({c})" for c in charts] + [""]
    return "\n".join(out)


def write_report(
    records: Sequence[dict[str, Any]], out_dir: str | Path, charts: bool = True
) -> list[Path]:
    """Write ``report.md`` (and the PNG charts) into ``out_dir``; returns the files written.

    Raises:
        ImportError: ``charts`` without matplotlib (the ``bench`` extra).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if charts:
        from gsv_bench.charts import write_charts

        written += write_charts(attach_speedups(records), out)
    md = out / "report.md"
    md.write_text(markdown(records, [p.name for p in written]), encoding="utf-8")
    return [md, *written]
