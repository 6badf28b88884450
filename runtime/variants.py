"""Which stored variant each stage runs: one place for the precision choice.

A precision request is ``fp32``/``fp16``/``bf16``/``int8`` for every stage, ``auto``, or per
stage, e.g. ``gpt=int8,acoustic=bf16``. ``auto`` picks, per stage and backend, the first
variant the bundle holds from an order set by this CPU's ISA (measured on the 2-core
AVX-512-VNNI/BF16 EPYC of bench/results: OpenVINO's GPT step is fastest in int8 with VNNI
(5.5 ms vs 8.4 ms bf16 at context 600) and its SoVITS decoder in bf16 (67 vs 170 ms per audio
second); onnxruntime gains nothing from int8 on the step here, so it stays fp32).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Final

from gsv_runtime.bundle import Bundle
from gsv_runtime.errors import BundleError, InputError

_LOGGER = logging.getLogger(__name__)

PRECISIONS: Final = ("fp32", "fp16", "bf16", "int8")
STAGES: Final = ("gpt", "acoustic")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ISA flags of this CPU (empty where /proc/cpuinfo is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


BF16_FLAGS: Final = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""x86 AVX-512 BF16 / AMX, and Arm's BF16 extension (``/proc/cpuinfo`` Features ``bf16``)."""
INT8_DOT_FLAGS: Final = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
"""int8 dot-product units: x86 VNNI / AMX-INT8, Arm dot product and int8 matrix multiply.
The Arm rows follow the x86 measurements by analogy; they are not measured on Arm."""

_WHY: Final = {
    "onnxruntime-gpt": "onnxruntime: int8 was no faster than fp32 on the GPT step (9.1 ms both "
    "on a VNNI CPU) and its CPU provider has no bf16 kernels",
    "onnxruntime-acoustic": "onnxruntime: its CPU provider has no bf16 kernels and the SoVITS "
    "decoder has no int8 variant",
    "gpt-int8": "int8 dot-product units: int8 weights stream fastest in the memory-bound step "
    "(5.5 ms vs 8.4 ms bf16 at context 600, VNNI)",
    "gpt-bf16": "BF16 units: half the weight traffic of fp32",
    "acoustic-bf16": "BF16 units: the compute-bound SoVITS decoder takes 67 ms per audio "
    "second vs 170 ms in fp32",
    "fp32": "the fallback every CPU runs",
}
"""Why ``auto`` ranks each choice (figures from bench/results on the 2-core EPYC)."""


def auto_explained(stage: str, backend: str, flags: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """Precisions ``auto`` tries for a stage, best first, each with the reason it is there."""
    if backend != "openvino":
        return (("fp32", _WHY[f"onnxruntime-{stage}"]),)
    bf16 = bool(flags & BF16_FLAGS)
    vnni = bool(flags & INT8_DOT_FLAGS)
    ranked = [("int8", vnni), ("bf16", bf16)] if stage == "gpt" else [("bf16", bf16)]
    chosen = [(p, _WHY[f"{stage}-{p}"]) for p, available in ranked if available]
    return (*chosen, ("fp32", _WHY["fp32"]))


def auto_order(stage: str, backend: str, flags: frozenset[str]) -> tuple[str, ...]:
    """Precisions ``auto`` tries for a stage, best first, on this backend and CPU."""
    return tuple(precision for precision, _ in auto_explained(stage, backend, flags))


def parse_precision(spec: str) -> dict[str, str]:
    """``fp32`` / ``auto`` / ``gpt=int8,acoustic=bf16`` → a precision (or ``auto``) per stage.

    Raises:
        InputError: an unknown stage or precision.
    """
    if "=" not in spec:
        per = dict.fromkeys(STAGES, spec.strip())
    else:
        per = dict.fromkeys(STAGES, "fp32")
        for part in spec.split(","):
            stage, _, value = part.partition("=")
            if stage.strip() not in STAGES:
                raise InputError(f"precision: unknown stage {stage!r}; stages: {', '.join(STAGES)}")
            per[stage.strip()] = value.strip()
    for stage, value in per.items():
        if value not in (*PRECISIONS, "auto"):
            raise InputError(
                f"precision for {stage} must be one of {', '.join(PRECISIONS)} or auto, "
                f"got {value!r}"
            )
    return per


STAGE_GRAPHS: Final[dict[str, dict[str, str]]] = {
    "onnxruntime": {"gpt": "t2s_prefill", "acoustic": "sovits_decoder"},
    "openvino": {"gpt": "t2s_decoder", "acoustic": "sovits_decoder"},
}
"""The graph whose variants decide a stage's precision, per backend."""
ACOUSTIC_GRAPHS: Final[dict[str, str]] = {"vits": "sovits_decoder", "cfm": "cfm_step"}
"""The acoustic stage's deciding graph per family (``audio.family``)."""


def choose_precisions(bundle: Bundle, backend: str, requested: str) -> dict[str, str]:
    """The variant each stage runs for a precision request (see the module).

    ``auto`` takes, per stage, the first precision of :func:`auto_order` the bundle holds. A
    per-stage request (``gpt=int8``) is a demand: a stage the bundle lacks it for is an error.
    One precision for all stages (``int8``) is a preference: stages without that variant run
    fp32 and a warning says so; a bundle where no stage has it is an error.

    Raises:
        InputError: a malformed request.
        BundleError: a demanded variant is missing (the message names what the bundle holds).
    """
    fmt = "onnx" if backend == "onnxruntime" else "openvino"
    wanted = parse_precision(requested)
    demanded = "=" in requested
    chosen: dict[str, str] = {}
    family = str(bundle.manifest.audio.get("family", "vits"))
    for stage, graph in STAGE_GRAPHS[backend].items():
        if stage == "acoustic":
            graph = ACOUSTIC_GRAPHS.get(family, graph)
        held = [v.precision for v in bundle.graph(graph).variants if v.format == fmt]
        if wanted[stage] == "auto":
            order = auto_order(stage, backend, cpu_flags())
            chosen[stage] = next((p for p in order if p in held), "fp32")
        elif wanted[stage] in held:
            chosen[stage] = wanted[stage]
        elif demanded:
            raise BundleError(
                f"{bundle.root}: {graph} has no {backend} {wanted[stage]} variant (it holds "
                f"{', '.join(sorted(held)) or 'none'}); choose one of those, auto, or re-export "
                f"with --precision {wanted[stage]}"
            )
        else:
            chosen[stage] = "fp32"
    single = wanted["gpt"]
    if not demanded and single != "auto" and single not in chosen.values():
        raise BundleError(
            f"{bundle.root}: no stage has a {backend} {single} variant; re-export with "
            f"--precision {single}, or ask for auto"
        )
    for stage, precision in chosen.items():
        if not demanded and single != "auto" and precision != single:
            _LOGGER.warning(
                "%s has no %s %s variant; the %s stage runs fp32",
                bundle.root,
                backend,
                single,
                stage,
            )
    return chosen
