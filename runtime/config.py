"""Request and runtime settings: upstream's option names and defaults, validated once."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from gsv_runtime.errors import InputError
from gsv_runtime.gpt.sampling import SamplingParams

SPLIT_METHODS: Final = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")
DEFAULT_SPLIT_METHOD: Final = "cut1"
"""Upstream TTS.run's default (api_v2 defaults to cut5)."""


@dataclass(frozen=True)
class SynthesisConfig:
    """Per-request options; ``None`` means the bundle's default (its ``sampling`` block)."""

    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    noise_scale: float | None = None
    """SoVITS prior noise scale (upstream 0.5)."""
    text_split_method: str = DEFAULT_SPLIT_METHOD
    batch_size: int = 1
    """Segments decoded together by the GPT."""
    speed_factor: float = 1.0
    fragment_interval: float = 0.3
    """Seconds of silence after each segment (counted at the SoVITS rate, as upstream)."""
    seed: int = -1
    """−1 draws a fresh seed; any other value makes the run reproducible."""
    ref_free: bool = False
    """Decode without the prompt's semantic tokens and text (upstream's ref_free)."""
    aux_ref_audio_paths: tuple[str, ...] = field(default_factory=tuple)
    """More references of the same voice; their ge vectors are averaged with the main one."""
    max_steps: int = 1500
    overlap_length: int = 2
    """Token streaming: tokens of audio two consecutive chunks share (cross-faded)."""
    min_chunk_length: int = 16
    """Token streaming: new tokens that make a chunk."""
    fixed_length: int | None = None
    """Decode exactly this many tokens per segment with EOS masked (benchmarks, random weights)."""
    sample_steps: int | None = None
    """v3/v4/v5: Euler steps of the flow-matching sampler (None: the bundle's: 32, v5turbo 4;
    v5 models take 4, 8, 16 or 32); no effect on v1–v2ProPlus voices."""
    cfg_rate: float | None = None
    """v3/v4/v5: classifier-free guidance rate of the flow (None: the bundle's: 0, v5dev 1.3;
    v5 models take [0, 2]); no effect on v1–v2ProPlus voices."""
    parallel_infer: bool = False
    """v3/v4: upstream's parallel chunking of a segment (overlapping windows all prompted by
    the reference, one CFM batch, SOLA joins; api_v2's default) instead of the sequential one
    (each window prompted by the previous, the WebUI's); no effect on v1–v2ProPlus voices."""

    def validate(self) -> None:
        """Raise InputError naming the first out-of-range field, its range and the value."""
        try:
            self.sampling({}).validate()
        except ValueError as exc:
            raise InputError(str(exc)) from None
        checks: list[tuple[str, bool, str]] = [
            (
                "text_split_method",
                self.text_split_method in SPLIT_METHODS,
                f"one of {', '.join(SPLIT_METHODS)}",
            ),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("speed_factor", 0.25 <= self.speed_factor <= 4.0, "in [0.25, 4]"),
            ("fragment_interval", 0.0 <= self.fragment_interval <= 10.0, "in [0, 10]"),
            (
                "noise_scale",
                self.noise_scale is None or 0.0 <= self.noise_scale <= 10.0,
                "in [0, 10]",
            ),
            ("max_steps", 1 <= self.max_steps <= 1500, "in [1, 1500]"),
            ("overlap_length", 0 <= self.overlap_length <= 64, "in [0, 64]"),
            ("min_chunk_length", 1 <= self.min_chunk_length <= 1500, "in [1, 1500]"),
            (
                "fixed_length",
                self.fixed_length is None or 1 <= self.fixed_length <= 1500,
                "None or in [1, 1500]",
            ),
            (
                "sample_steps",
                self.sample_steps is None
                or (isinstance(self.sample_steps, int) and 1 <= self.sample_steps <= 1000),
                "None or an integer in [1, 1000]",
            ),
            (
                "cfg_rate",
                self.cfg_rate is None
                or (
                    isinstance(self.cfg_rate, (int, float))
                    and not isinstance(self.cfg_rate, bool)
                    and math.isfinite(self.cfg_rate)
                    and 0 <= self.cfg_rate <= 100
                ),
                "None or a finite number in [0, 100] (v5: [0, 2])",
            ),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InputError(f"{name} must be {allowed}, but got {getattr(self, name)!r}")

    def sampling(self, defaults: Mapping[str, Any]) -> SamplingParams:
        """The sampler settings, falling back to ``defaults`` (a bundle's ``sampling`` block)."""
        base = SamplingParams()
        values = {
            f.name: next(
                v
                for v in (getattr(self, f.name), defaults.get(f.name), getattr(base, f.name))
                if v is not None
            )
            for f in fields(SamplingParams)
        }
        return SamplingParams(**values)

    def resolved_noise_scale(self, defaults: Mapping[str, Any]) -> float:
        """``noise_scale`` or the bundle default (0.5)."""
        if self.noise_scale is not None:
            return self.noise_scale
        return float(defaults.get("noise_scale", 0.5))

    @classmethod
    def from_options(cls, **options: Any) -> SynthesisConfig:
        """Build from keyword options with upstream's names; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown option(s) {unknown}; accepted: {', '.join(sorted(known))}")
        if "aux_ref_audio_paths" in options:
            options["aux_ref_audio_paths"] = tuple(options["aux_ref_audio_paths"] or ())
        config = replace(cls(), **options)
        config.validate()
        return config


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run a bundle: backend, device, threads and graph precision."""

    backend: str = "auto"
    """``auto`` (per stage, from this CPU's ISA, among the installed backends whose graphs the
    bundle holds: see ``gsv_runtime.variants``), ``onnxruntime``, ``openvino``, or per stage,
    e.g. ``gpt=onnxruntime,acoustic=openvino``."""
    device: str = "cpu"
    """``cpu``, ``cuda``/``cuda:N`` (onnxruntime), or an OpenVINO device name."""
    threads: int | None = None
    """Intra-op threads per graph; None lets the backend use every core."""
    precision: str = "auto"
    """Graph variant: ``auto`` (per stage, from this CPU's ISA, among the variants the bundle
    holds; fp32 for an fp32-only bundle and on non-CPU devices), fp32, fp16, bf16 (OpenVINO),
    int8 or per stage, e.g. ``gpt=int8,acoustic=bf16`` (see ``gsv_runtime.variants``)."""
    cache_dir: str | None = field(default_factory=lambda: default_cache_dir())
    """Compiled-model cache folder: OpenVINO's compiled blobs and onnxruntime's optimised CPU
    graphs (None: none); see :func:`default_cache_dir`."""


def default_cache_dir() -> str | None:
    """``$GSV_CACHE_DIR`` (empty or ``off``: no cache), else ``~/.cache/gsv-rt/compiled``.

    On a 2-core CPU, OpenVINO compiles a full-size v2 voice in about 3.7 s and imports the
    cached blobs in 0.8 s; onnxruntime optimises its graphs in 1.3 s and reads the optimised
    ones in 0.4 s. Either takes about as much disk as the weights it was made from.
    """
    value = os.environ.get("GSV_CACHE_DIR")
    if value is None:
        return str(Path.home() / ".cache" / "gsv-rt" / "compiled")
    return None if value.strip().lower() in ("", "off") else value
