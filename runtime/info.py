"""What ``gsv info`` prints: this machine's backends and devices, the text frontend's resources,
and a bundle's manifest."""

from __future__ import annotations

import importlib.util
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gsv_runtime import __version__
from gsv_runtime.backends import BACKENDS
from gsv_runtime.bundle import FORMAT_OF_BACKEND, Bundle, GraphSpec, TensorSpec
from gsv_runtime.errors import BundleError, GsvError
from gsv_runtime.text.frontend import LANGUAGE_MODULES
from gsv_runtime.variants import (
    PRECISIONS,
    STAGES,
    auto_explained,
    backend_order,
    choose_backends,
    choose_precisions,
    cpu_flags,
    cpu_model,
)

_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """CPU model name, logical cores and the ISA flags that matter for inference."""
    flags = cpu_flags()
    return {
        "model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "isa": [f for f in _ISA_FLAGS if f in flags],
        "last_level_cache": last_level_cache(),
    }


def last_level_cache() -> str | None:
    """Size of CPU 0's last-level cache as the kernel reports it (``32768K``), None if unknown.

    Recorded because it decides the GPT step's ranking: a batch-1 step streams every weight
    once, so int8 weights win where they do not fit in this cache (see ``gsv_runtime.variants``).
    """
    levels = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            levels.append((level, (index / "size").read_text().strip()))
        except (OSError, ValueError):
            continue
    return max(levels)[1] if levels else None


def backend_devices() -> dict[str, dict[str, Any]]:
    """Installed backends with their version and devices (providers for onnxruntime)."""
    found: dict[str, dict[str, Any]] = {}
    try:
        import onnxruntime as ort

        found["onnxruntime"] = {
            "version": ort.__version__,
            "devices": ["cpu"]
            + (["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else []),
        }
    except ImportError:
        pass
    try:
        import openvino as ov

        found["openvino"] = {
            "version": ov.__version__,
            "devices": [d.lower() for d in ov.Core().available_devices],
        }
    except ImportError:
        pass
    return found


def describe_machine() -> Iterator[str]:
    """Versions, platform, CPU flags, backends and devices."""
    cpu = cpu_info()
    yield f"gsv-rt {__version__}, Python {platform.python_version()}, {platform.platform()}"
    cache = f"; last-level cache {cpu['last_level_cache']}" if cpu["last_level_cache"] else ""
    yield (
        f"CPU: {cpu['model']} ({cpu['logical_cores']} logical cores; {' '.join(cpu['isa'])}{cache})"
    )
    backends = backend_devices()
    if not backends:
        yield "backends: none installed (pip install onnxruntime or openvino)"
    for name, info in backends.items():
        yield f"backend {name} {info['version']}: devices {', '.join(info['devices'])}"


def describe_choices() -> Iterator[str]:
    """What ``--backend auto`` and ``--precision auto`` run per stage on this CPU, and why."""
    flags = cpu_flags()
    yield "backend auto on this CPU (first installed one whose graphs a bundle holds):"
    for stage in STAGES:
        ranked = backend_order(stage, flags)
        best, why = ranked[0]
        yield f"  {stage}: {best} ({why}); then {', '.join(b for b, _ in ranked[1:])}"
    yield "precision auto on this CPU (first variant a bundle holds, best first):"
    for backend in backend_devices():
        for stage in STAGES:
            ranked = auto_explained(stage, backend, flags)
            best, why = ranked[0]
            then = f"; then {', '.join(p for p, _ in ranked[1:])}" if len(ranked) > 1 else ""
            yield f"  {backend} {stage}: {best} ({why}){then}"


def describe_frontend(g2pw: Path | None = None, ja_userdict: Path | None = None) -> Iterator[str]:
    """Installed languages and which upstream resources the frontend will use.

    Raises:
        InputError: ``g2pw`` or ``ja_userdict`` is given but cannot be loaded.
    """
    installed = [
        lang
        for lang, modules in LANGUAGE_MODULES.items()
        if all(importlib.util.find_spec(m) is not None for m in modules)
    ]
    yield f"text frontend: {', '.join(installed) or 'no language installed (gsv-rt[text])'}"
    if "zh" in installed:
        if g2pw is None:
            yield "  zh polyphones: pypinyin (no G2PWModel given: --g2pw DIR for upstream's g2pW)"
        else:
            from gsv_runtime.text import load_g2pw

            yield f"  zh polyphones: g2pW from {load_g2pw(g2pw).model_dir}"
    if "en" in installed:
        from gsv_runtime.text.en import pos_tagger

        yield f"  en homographs: POS tags by {pos_tagger()[1]}"
    if "ja" in installed:
        if ja_userdict is None:
            yield "  ja user dictionary: none (--ja-userdict CSV for upstream's userdict.csv)"
        else:
            from gsv_runtime.text import load_ja_user_dictionary

            load_ja_user_dictionary(ja_userdict)
            yield f"  ja user dictionary: {ja_userdict}"


def _signature(specs: dict[str, TensorSpec]) -> str:
    return ", ".join(
        f"{name}:{spec.dtype}[{','.join(str(d) for d in spec.shape)}]"
        for name, spec in specs.items()
    )


def _graph_lines(name: str, spec: GraphSpec) -> Iterator[str]:
    variants = ", ".join(f"{v.format}/{v.precision}" for v in spec.variants)
    yield f"  {name} ({variants})"
    yield f"    in:  {_signature(spec.inputs)}"
    yield f"    out: {_signature(spec.outputs)}"


def _higher_is_better(check: Mapping[str, Any]) -> bool:
    """Recorded by newer exporters; for older bundles: a passing value lies on
    the good side of its limit (an exact hit is read as a ceiling, like ``mismatch ≤ 0``)."""
    if "higher_is_better" in check:
        return bool(check["higher_is_better"])
    return (float(check["value"]) > float(check["limit"])) == bool(check["ok"])


def parity_table(checks: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """The exporter's parity checks as a floors table: per graph × backend × precision, each
    metric's worst measured value against its limit (``graph/backend/precision/.../metric``)."""
    worst: dict[str, dict[str, Mapping[str, Any]]] = {}
    for check in checks:
        parts = str(check["name"]).split("/")
        at = next((i for i, part in enumerate(parts) if part in BACKENDS), None)
        if at is None:
            continue
        after = parts[at + 1] if at + 1 < len(parts) else ""
        precision = after if after in PRECISIONS else "fp32"
        variant = f"{'/'.join(parts[:at])} {parts[at]} {precision}"
        metrics = worst.setdefault(variant, {})
        old = metrics.get(parts[-1])
        value = float(check["value"])
        if old is None or (
            value < float(old["value"]) if _higher_is_better(check) else value > float(old["value"])
        ):
            metrics[parts[-1]] = check
    for variant, metrics in worst.items():
        cells = [
            f"{metric} {float(c['value']):.4g} "
            f"({'≥' if _higher_is_better(c) else '≤'} {float(c['limit']):g})"
            for metric, c in metrics.items()
        ]
        yield f"  {variant}: {', '.join(cells)}"


def describe_bundle(root: Path, verify_hashes: bool = False) -> Iterator[str]:
    """The manifest in readable form and which backends/devices here can run the bundle.

    Raises:
        BundleError: unreadable, newer-format or altered bundle.
    """
    bundle = Bundle.load(root, verify_hashes=verify_hashes)
    m = bundle.manifest
    size = sum(f.size_bytes for f in m.files.values())
    checked = "sha256 verified" if verify_hashes else "sizes checked"
    yield f"bundle {root}: {m.kind}, format {m.format_version}, {size / 1e6:.1f} MB ({checked})"
    if m.model:
        yield "model: " + ", ".join(f"{k} {v}" for k, v in m.model.items())
    for key, src in m.source.items():
        yield f"source {key}: {src.get('file')} sha256 {str(src.get('sha256'))[:12]}…"
    if m.audio:
        yield "audio: " + ", ".join(f"{k} {v}" for k, v in m.audio.items() if k != "spec")
    if m.t2s:
        yield "t2s: " + ", ".join(f"{k} {v}" for k, v in m.t2s.items())
    if m.sampling:
        yield "sampling defaults: " + ", ".join(f"{k} {v}" for k, v in m.sampling.items())
    if m.support:
        yield f"support bundle: {m.support.get('path')} (graphs {m.support.get('graphs')})"
    created = m.created_by
    yield "created by: " + ", ".join(f"{k} {v}" for k, v in created.items())
    checks = m.parity.get("checks", [])
    if checks:
        failed = [c for c in checks if not c.get("ok")]
        yield f"parity: {len(checks)} checks, {len(failed)} failed; worst per variant:"
        yield from parity_table(checks)
    yield "graphs:"
    for name, spec in m.graphs.items():
        yield from _graph_lines(name, spec)
    by_folder: dict[str, int] = {}
    for rel, entry in m.files.items():
        top = rel.split("/", 1)[0] if "/" in rel else "."
        by_folder[top] = by_folder.get(top, 0) + entry.size_bytes
    yield "files: " + ", ".join(f"{k}/ {v / 1e6:.1f} MB" for k, v in sorted(by_folder.items()))
    formats = {v.format for spec in m.graphs.values() for v in spec.variants}
    for backend, info in backend_devices().items():
        fmt = FORMAT_OF_BACKEND[backend]
        if fmt not in formats:
            yield f"runs on {backend} ({', '.join(info['devices'])}): no (no graphs in its format)"
            continue
        try:
            chosen = choose_precisions(bundle, backend, "auto")
        except BundleError as exc:  # not a complete voice (no GPT or acoustic graph)
            yield f"runs on {backend} ({', '.join(info['devices'])}): no ({exc})"
            continue
        picks = ", ".join(f"{k} {v}" for k, v in chosen.items())
        yield f"runs on {backend} ({', '.join(info['devices'])}): yes; precision auto: {picks}"
    yield from _auto_here(bundle)


def _auto_here(bundle: Bundle) -> Iterator[str]:
    """What ``--backend auto --precision auto`` runs for this voice on this CPU."""
    try:
        backends = choose_backends(bundle, "auto", "auto", list(backend_devices()))
        chosen = choose_precisions(bundle, backends, "auto")
    except GsvError as exc:  # nothing installed runs a stage, or not a complete voice
        yield f"backend auto: none ({exc})"
        return
    picks = ", ".join(f"{s} {backends[s]} {chosen[s]}" for s in backends)
    yield f"backend auto + precision auto here: {picks}"
