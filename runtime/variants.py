"""Which backend and stored variant each stage runs: one place for both choices.

A backend request is ``onnxruntime`` or ``openvino`` for every stage, ``auto``, or per stage,
e.g. ``gpt=onnxruntime,acoustic=openvino`` (stages left out: ``auto``). ``auto`` picks, per
stage, the first backend of :func:`backend_order` that is installed and whose graphs the bundle
holds. On a CPU with int8 dot products the GPT runs on onnxruntime (its grouped-query attention
writes a preallocated cache in place, and the step grows less with the context than OpenVINO's
fused stateful attention: int8, batch 1, two interleaved rounds on a 32 MB-L3 EPYC, 10.5–12.2 ms
vs 12.3–15.3 ms at contexts 220–1070); with BF16 units the SoVITS decoder and the support graphs
run on OpenVINO in bf16. End to end (500 forced tokens, three interleaved rounds): GPT on
onnxruntime + the rest on OpenVINO RTF 0.403–0.432, all OpenVINO 0.455–0.528, all onnxruntime
0.563–0.583. Elsewhere (no such units, or a device other than the CPU) onnxruntime comes first.

A precision request is ``fp32``/``fp16``/``bf16``/``int8`` for every stage, ``auto``, or per
stage, e.g. ``gpt=int8,acoustic=bf16,support=bf16``. ``auto`` picks, per stage and backend, the
first variant the bundle holds from an order set by this CPU's ISA, measured side by side on the
2-core AVX-512-VNNI/BF16 EPYC of bench/results (full-size random weights, 2 threads):

* GPT step: int8 weights on both backends, with or without VNNI. The step at batch 1 streams
  every weight once, so fewer bytes win where the weights do not fit in the last-level cache:
  on an EPYC with a 32 MB L3, OpenVINO int8 9.8–12.7 ms vs bf16 13.5–16.2 ms at context
  500–600 (five interleaved rounds); onnxruntime int8 8.1–9.8 vs 13.3–14.5 ms fp32. (On a VM
  reporting a 480 MB L3, which holds the 305 MB fp32 GPT, OpenVINO bf16 was as fast as int8:
  9.0–12.6 vs 10.4–13.4 ms.) On 2 AVX2 cores without VNNI (a Zen 3 EPYC, context 600, one
  run): onnxruntime GQA int8 8.7 vs 15.5 ms fp32, OpenVINO int8 14.0 vs 20.6 ms fp32;
* SoVITS decoder: OpenVINO bf16 (96 vs 148 ms per audio second for the fp32 decoder; on an
  AMX Xeon, one row at a time without length masks, 39 vs 154 ms);
* CFM DiT step (v3/v4/v5): OpenVINO int8 (static, with VNNI); onnxruntime int8 (dynamic) on
  any CPU: 1426–1666 vs 2093–2465 ms fp32 over 655 frames on 2 AVX2 cores without VNNI;
* support graphs (HuBERT, BERT, SV): OpenVINO int8 weights in bf16 compute where the bundle
  holds them (HuBERT 314 vs 338 ms for 8 s of audio, BERT's first run 0.21 vs 0.46 s; a quarter
  of the weight bytes to load and keep), else bf16 (2.0×, 2.3×, 1.8× fp32); onnxruntime int8
  on any CPU (HuBERT 1.5×, BERT 2.8× with VNNI; HuBERT 1.4× on AVX2 alone, 8 s of audio, 691 vs
  962 ms, interleaved medians; SV has no int8 and stays fp32).
"""

from __future__ import annotations

import functools
import logging
import platform
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Final

from gsv_runtime.backends import BACKENDS, GraphTweaks, RunnerOptions
from gsv_runtime.bundle import FORMAT_OF_BACKEND, Bundle
from gsv_runtime.errors import BackendError, BundleError, InputError

_LOGGER = logging.getLogger(__name__)

PRECISIONS: Final = ("fp32", "fp16", "bf16", "int8")
STAGES: Final = ("gpt", "acoustic", "support")
"""The GPT and the acoustic stage run the voice bundle's graphs; ``support`` the support
bundle's (HuBERT, BERT, SV), chosen per graph by :func:`choose_support_precisions`."""


@functools.cache  # a few fixed keys: flags and the model name
def _cpuinfo(keys: tuple[str, ...]) -> str | None:
    """The first ``/proc/cpuinfo`` value under one of ``keys`` (None: absent or unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in keys:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    """The ISA flags of this CPU (empty where /proc/cpuinfo is not readable)."""
    return frozenset((_cpuinfo(("flags", "Features")) or "").split())


def cpu_model() -> str:
    """The CPU's model name (the machine type where /proc/cpuinfo does not say)."""
    return _cpuinfo(("model name",)) or platform.processor() or platform.machine()


BF16_FLAGS: Final = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""x86 AVX-512 BF16 / AMX, and Arm's BF16 extension (``/proc/cpuinfo`` Features ``bf16``)."""
INT8_DOT_FLAGS: Final = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
"""int8 dot-product units: x86 VNNI / AMX-INT8, Arm dot product and int8 matrix multiply.
The Arm rows follow the x86 measurements by analogy; they are not measured on Arm."""

CPU_INT8_FLAGS: Final = frozenset({"avx2", "asimd"}) | INT8_DOT_FLAGS
"""CPU SIMD that runs int8 graphs faster than fp32 where the work is memory-bound (the GPT
step) or dynamically quantized (onnxruntime's DiT step), even without int8 dot products (none
reported: another device, where an int8 graph would fall back to the host). Arm by analogy."""

_WHY: Final = {
    "onnxruntime-gpt-int8": "the memory-bound step reads a quarter of the weight bytes, as "
    "fused blockwise int8 (bench p50 5.5 ms over 500 tokens, fp32 13.3–14.3 ms at context 600 "
    "with VNNI; 8.7 vs 15.5 ms fp32 at context 600 on AVX2 alone)",
    "onnxruntime-acoustic-int8": "a flow-matching DiT step with dynamic int8 projections: "
    "1426–1666 vs 2093–2465 ms fp32 over 655 frames even without int8 dot products (AVX2); a "
    "v2 SoVITS decoder has no int8 variant and runs fp32",
    "onnxruntime-acoustic": "onnxruntime: its CPU provider has no bf16 kernels and the SoVITS "
    "decoder has no int8 variant",
    "onnxruntime-support-int8": "BERT 2.8×, HuBERT 1.5× fp32 with VNNI; HuBERT 691 vs 962 ms "
    "for 8 s of audio on AVX2 alone (SV has no int8 and runs fp32)",
    "openvino-gpt-int8": "a quarter of the fp32 weight bytes in the memory-bound step "
    "(9.8–12.7 ms vs bf16 13.5–16.2 at context 500–600 with VNNI, 32 MB L3; 14.0 vs 20.6 ms "
    "fp32 at context 600 on AVX2 alone)",
    "openvino-gpt-bf16": "BF16 units: half the weight traffic of fp32",
    "openvino-acoustic-int8": "int8 dot-product units: the flow-matching DiT step runs "
    "statically quantized, 507 ms vs 924 ms bf16 over 700 frames (a v2 SoVITS decoder has no "
    "int8 variant and runs bf16)",
    "openvino-acoustic-bf16": "BF16 units: the compute-bound SoVITS decoder takes 96 ms per "
    "audio second vs 148 ms in fp32 (with AMX, one row at a time: 39 vs 154 ms)",
    "openvino-support-int8": "BF16 units: int8 weights decompressed into bf16 compute (HuBERT "
    "314 vs 338 ms bf16 for 8 s of audio; BERT 39 vs 45 ms, its first run 0.21 vs 0.46 s) and a "
    "quarter of fp32's weight bytes to load (SV has no int8 and runs bf16)",
    "openvino-support-bf16": "BF16 units: HuBERT 2.0×, BERT 2.3×, SV 1.8× fp32",
    "fp32": "the fallback every CPU runs",
}
"""Why ``auto`` ranks each choice (figures from bench/results on the 2-core EPYC)."""


def auto_explained(stage: str, backend: str, flags: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """Precisions ``auto`` tries for a stage, best first, each with the reason it is there."""
    bf16 = bool(flags & BF16_FLAGS)
    vnni = bool(flags & INT8_DOT_FLAGS)
    simd = bool(flags & CPU_INT8_FLAGS)
    ranked = {
        ("onnxruntime", "gpt"): [("int8", simd)],
        ("onnxruntime", "acoustic"): [("int8", simd)],
        ("onnxruntime", "support"): [("int8", simd)],
        ("openvino", "gpt"): [("int8", simd), ("bf16", bf16)],
        ("openvino", "acoustic"): [("int8", vnni), ("bf16", bf16)],
        ("openvino", "support"): [("int8", bf16), ("bf16", bf16)],
    }.get((backend, stage), [])
    chosen = [(p, _WHY[f"{backend}-{stage}-{p}"]) for p, available in ranked if available]
    fallback = "onnxruntime-acoustic" if (backend, stage) == ("onnxruntime", "acoustic") else "fp32"
    return (*chosen, ("fp32", _WHY[fallback]))


def auto_order(stage: str, backend: str, flags: frozenset[str]) -> tuple[str, ...]:
    """Precisions ``auto`` tries for a stage, best first, on this backend and CPU."""
    return tuple(precision for precision, _ in auto_explained(stage, backend, flags))


def _per_stage(spec: str, kind: str, omitted: str, accepted: tuple[str, ...]) -> dict[str, str]:
    """``value`` for every stage, or ``stage=value,...`` (a stage left out gets ``omitted``).

    Raises:
        InputError: an unknown stage, or a value not in ``accepted``.
    """
    per = dict.fromkeys(STAGES, spec.strip() if "=" not in spec else omitted)
    if "=" in spec:
        for part in spec.split(","):
            stage, _, value = part.partition("=")
            if stage.strip() not in STAGES:
                raise InputError(f"{kind}: unknown stage {stage!r}; stages: {', '.join(STAGES)}")
            per[stage.strip()] = value.strip()
    for stage, value in per.items():
        if value not in accepted:
            raise InputError(
                f"unknown {kind} {value!r} for {stage}; accepted: {', '.join(accepted)}, "
                "or one per stage (gpt=...,acoustic=...,support=...)"
            )
    return per


def parse_backend(spec: str) -> dict[str, str]:
    """``auto`` / ``openvino`` / ``gpt=onnxruntime,acoustic=openvino`` → a backend (or
    ``auto``) per stage (a stage a per-stage request leaves out is ``auto``).

    Raises:
        InputError: an unknown stage or backend.
    """
    return _per_stage(spec, "backend", "auto", ("auto", *BACKENDS))


def parse_precision(spec: str) -> dict[str, str]:
    """``fp32`` / ``auto`` / ``gpt=int8,acoustic=bf16`` → a precision (or ``auto``) per stage
    (a stage a per-stage request leaves out runs fp32).

    Raises:
        InputError: an unknown stage or precision.
    """
    return _per_stage(spec, "precision", "fp32", ("auto", *PRECISIONS))


_BACKEND_WHY: Final = {
    "gpt-onnxruntime": "int8 dot-product units: grouped-query attention on an in-place cache "
    "(step 10.5–12.2 ms vs OpenVINO 12.3–15.3 at contexts 220–1070, int8)",
    "acoustic-openvino": "BF16 units: the bf16 SoVITS decoder (134 vs 281 ms per audio second "
    "for onnxruntime's fp32 on the 32 MB-L3 EPYC)",
    "support-openvino": "BF16 units: bf16 HuBERT/BERT/SV (HuBERT 205 vs 254 ms for onnxruntime "
    "int8)",
    "default": "the first installed backend whose graphs the bundle holds",
}


def backend_order(stage: str, flags: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """Backends ``auto`` tries for a stage on a CPU with ``flags``, best first, with why."""
    preferred = None
    if stage == "gpt" and flags & INT8_DOT_FLAGS:
        preferred = "onnxruntime"
    elif stage in ("acoustic", "support") and flags & BF16_FLAGS:
        preferred = "openvino"
    if preferred is None:
        return tuple((b, _BACKEND_WHY["default"]) for b in BACKENDS)
    other = next(b for b in BACKENDS if b != preferred)
    return ((preferred, _BACKEND_WHY[f"{stage}-{preferred}"]), (other, _BACKEND_WHY["default"]))


def bundle_formats(bundle: Bundle, stage: str | None = None, precision: str = "auto") -> set[str]:
    """Graph formats ``bundle`` holds: for a voice ``stage``, those of the graph that decides it
    on each backend (:data:`STAGE_GRAPHS`), and only those holding ``precision`` unless it is
    ``auto``; for ``None``, those of any graph."""
    graphs = bundle.manifest.graphs
    if stage is None:
        return {v.format for spec in graphs.values() for v in spec.variants}
    found = set()
    for backend, fmt in FORMAT_OF_BACKEND.items():
        name = stage_graph(bundle, backend, stage)
        variants = graphs[name].variants if name in graphs else ()
        if any(v.format == fmt and precision in ("auto", v.precision) for v in variants):
            found.add(fmt)
    return found


def _takes_device(backend: str, device: str) -> bool:
    kind = device.lower().partition(":")[0]
    return kind in ("cpu", "cuda") if backend == "onnxruntime" else kind != "cuda"


def choose_backend(
    stage: str, requested: str, formats: set[str], installed: list[str], device: str = "cpu"
) -> str:
    """The backend ``stage`` runs: the one requested for it (from :func:`parse_backend`), or
    under ``auto`` the first of :func:`backend_order` that is installed and whose graph format
    (``formats``: what the bundle holds for this stage) is there.

    Raises:
        BackendError: the requested backend is not installed or the bundle has no graphs for
            it; under ``auto``, nothing installed can run the stage.
    """
    if requested != "auto":
        if requested not in installed:
            raise BackendError(f"backend {requested} is not installed (pip install {requested})")
        if FORMAT_OF_BACKEND[requested] not in formats:
            raise BackendError(
                f"the bundle has no {FORMAT_OF_BACKEND[requested]} graphs for the {stage} stage "
                f"(it holds: {', '.join(sorted(formats)) or 'none'})"
            )
        return requested
    for backend, _ in backend_order(stage, auto_flags(device)):
        if (
            backend in installed
            and FORMAT_OF_BACKEND[backend] in formats
            and _takes_device(backend, device)
        ):
            return backend
    raise BackendError(
        f"no installed backend can run the {stage} stage on {device} (installed: "
        f"{', '.join(installed) or 'none'}; bundle formats: {', '.join(sorted(formats))})"
    )


STAGE_GRAPHS: Final[dict[str, dict[str, str]]] = {
    "onnxruntime": {"gpt": "t2s_prefill", "acoustic": "sovits_decoder"},
    "openvino": {"gpt": "t2s_decoder", "acoustic": "sovits_decoder"},
}
"""The graph whose variants decide a stage's precision, per backend."""
ACOUSTIC_GRAPHS: Final[dict[str, str]] = {"vits": "sovits_decoder", "cfm": "cfm_step"}
"""The acoustic stage's deciding graph per family (``audio.family``)."""


def stage_graph(bundle: Bundle, backend: str, stage: str) -> str:
    """The graph whose variants decide a voice stage on ``backend`` (the acoustic one by the
    bundle's family)."""
    name = STAGE_GRAPHS[backend][stage]
    if stage == "acoustic":
        return ACOUSTIC_GRAPHS.get(str(bundle.manifest.audio.get("family", "vits")), name)
    return name


def auto_flags(device: str) -> frozenset[str]:
    """The ISA flags ``auto`` ranks by on ``device``: this CPU's on ``cpu``, none elsewhere
    (the ranking was measured on CPUs; on a GPU or NPU ``auto`` runs fp32 until measured)."""
    return cpu_flags() if device.lower() == "cpu" else frozenset()


def choose_backends(
    bundle: Bundle, requested: str, precision: str, installed: list[str], device: str = "cpu"
) -> dict[str, str]:
    """The backend of each voice stage (gpt, acoustic) for a backend request; a precision asked
    for by name steers ``auto`` to a backend whose graphs hold it (``--precision bf16`` puts
    the GPT on OpenVINO), and is ignored where no backend holds it.

    Raises:
        InputError: a malformed request.
        BackendError: see :func:`choose_backend`.
    """
    wanted_backend, wanted_precision = parse_backend(requested), parse_precision(precision)
    return {
        stage: choose_backend(
            stage,
            wanted_backend[stage],
            bundle_formats(bundle, stage, wanted_precision[stage]) or bundle_formats(bundle, stage),
            installed,
            device,
        )
        for stage in ("gpt", "acoustic")
    }


def choose_precisions(
    bundle: Bundle, backend: str | Mapping[str, str], requested: str, device: str = "cpu"
) -> dict[str, str]:
    """The variant each stage runs for a precision request (see the module), on one backend or
    a backend per stage (``{"gpt": "onnxruntime", "acoustic": "openvino"}``).

    ``auto`` takes, per stage, the first precision of :func:`auto_order` the bundle holds. A
    per-stage request (``gpt=int8``) is a demand: a stage the bundle lacks it for is an error.
    One precision for all stages (``int8``) is a preference: stages without that variant run
    fp32 and a warning says so; a bundle where no stage has it is an error.

    Raises:
        InputError: a malformed request.
        BundleError: a demanded variant is missing (the message names what the bundle holds).
    """
    backends = {s: backend for s in ("gpt", "acoustic")} if isinstance(backend, str) else backend
    wanted = parse_precision(requested)
    demanded = "=" in requested
    chosen: dict[str, str] = {}
    for stage in ("gpt", "acoustic"):
        on = backends[stage]
        graph = stage_graph(bundle, on, stage)
        held = [
            v.precision for v in bundle.graph(graph).variants if v.format == FORMAT_OF_BACKEND[on]
        ]
        if wanted[stage] == "auto":
            order = auto_order(stage, on, auto_flags(device))
            chosen[stage] = next((p for p in order if p in held), "fp32")
        elif wanted[stage] in held:
            chosen[stage] = wanted[stage]
        elif demanded:
            raise BundleError(
                f"{bundle.root}: {graph} has no {on} {wanted[stage]} variant (it holds "
                f"{', '.join(sorted(held)) or 'none'}); choose one of those, auto, or re-export "
                f"with --precision {wanted[stage]}"
            )
        else:
            chosen[stage] = "fp32"
    single = wanted["gpt"]
    if not demanded and single != "auto" and single not in chosen.values():
        on = "/".join(sorted(set(backends.values())))
        raise BundleError(
            f"{bundle.root}: no stage has a {on} {single} variant; re-export with "
            f"--precision {single}, or ask for auto"
        )
    for stage, precision in chosen.items():
        if not demanded and single != "auto" and precision != single:
            _LOGGER.warning(
                "%s has no %s %s variant; the %s stage runs fp32",
                bundle.root,
                backends[stage],
                single,
                stage,
            )
    return chosen


def choose_support_precisions(
    bundle: Bundle, backend: str, requested: str, device: str = "cpu"
) -> dict[str, str]:
    """The variant each support graph (HuBERT, BERT, SV) runs for a precision request.

    The support stage follows the request as the voice's stages do, graph by graph: ``auto``
    takes the first of :func:`auto_order` ``("support")`` the graph holds; a precision (one for
    all stages, or ``support=...``) runs where the graph holds it and fp32 where it does not.
    A missing variant is not an error here: one support bundle serves voices exported at other
    precisions, and some graphs never have some variants (SV has no int8).

    Raises:
        InputError: a malformed request.
    """
    fmt = FORMAT_OF_BACKEND[backend]
    wanted = parse_precision(requested)["support"]
    order = auto_order("support", backend, auto_flags(device)) if wanted == "auto" else (wanted,)
    chosen = {}
    for name, spec in bundle.manifest.graphs.items():
        held = {v.precision for v in spec.variants if v.format == fmt}
        chosen[name] = next((p for p in order if p in held), "fp32")
    return chosen


_BF16_INT8_STAGES: Final = frozenset({("int8", "acoustic"), ("int8", "support")})


def variant_options(
    backend: str, precision: str, options: RunnerOptions, stage: str = ""
) -> RunnerOptions:
    """The options a variant compiles with: OpenVINO's ``bf16`` variant is the fp32 IR compiled
    with a bf16 inference-precision hint, and so are the acoustic stage's ``int8`` (a statically
    quantized DiT step, the float operations around it in bf16; the other graphs' int8 entry
    is their fp32 IR) and the support graphs' ``int8`` (int8 weights decompressed into bf16
    compute: HuBERT 314 ms for 8 s of audio vs 443 ms under the f32 hint); every other variant
    runs as stored (the GPT's int8 weights decompress to f32)."""
    if backend == "openvino" and (precision == "bf16" or (precision, stage) in _BF16_INT8_STAGES):
        return replace(options, precision_hint="bf16")
    return options


_OV_CPU_TWEAKS: Final = {
    "sovits_decoder": GraphTweaks(one_row=True),
    "cfm_vocoder": GraphTweaks(fuse_elementwise=True),
}
"""Per-graph compile tweaks on OpenVINO's CPU plugin. The v2 SoVITS decoder runs one row per
call without its length masks (10 s of audio in bf16 on 2 AMX cores: 389 vs 478 ms, the same
audio). BigVGAN's SnakeBeta activations are chains of element-wise ops over a dynamic time
axis, each its own pass over the tensor unless fused: in f32 on 2 AVX2 cores, interleaved,
10 s of audio 16.0 vs 18.4 s unfused (medians of 4), 2 s 2.80 vs 2.77 s (116.9 dB apart)."""


def graph_tweaks(graph: str, backend: str, options: RunnerOptions) -> GraphTweaks:
    """The :class:`GraphTweaks` a graph compiles with on this backend and device."""
    if backend != "openvino" or options.device.upper() != "CPU":
        return GraphTweaks()
    return _OV_CPU_TWEAKS.get(graph, GraphTweaks())
