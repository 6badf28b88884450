"""The acoustic stage: semantic tokens + phones + the voice's reference → waveform.

Every model family (v1–v2ProPlus VITS-style SoVITS; CFM + vocoder for v3 and later) implements
:class:`AcousticStage`, and :func:`load_acoustic` picks the family the bundle's manifest names
(``audio.family``, ``vits`` when absent), so the engine never branches on versions. Prior noise
comes from a :class:`NoiseSource` keyed by the request's seed and the segment, frame by frame,
so a segment decoded whole, in token-streaming windows, or in any batch sees the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from gsv_runtime.backends import BackendName, GraphRunner, RunnerOptions, make_runner
from gsv_runtime.bundle import Bundle, GraphSpec
from gsv_runtime.errors import BundleError
from gsv_runtime.variants import graph_tweaks, variant_options

if TYPE_CHECKING:
    from gsv_runtime.voice import Voice

FAMILIES = ("vits", "cfm")
"""Acoustic families this runtime can run (``audio.family`` in a voice manifest)."""


class NoiseSource:
    """Standard-normal noise for one segment, addressable by frame: ``frames(c, a, b)`` is the
    same block whatever else was asked before. Frames are drawn frame-major ([T, C]) from a
    generator seeded with ``key``, in blocks, so extending a window never changes a frame."""

    BLOCK = 256

    def __init__(self, key: Sequence[int]) -> None:
        self.key = tuple(int(k) for k in key)
        self._blocks: dict[tuple[int, int], np.ndarray] = {}

    def _block(self, channels: int, index: int) -> np.ndarray:
        got = self._blocks.get((channels, index))
        if got is None:
            rng = np.random.default_rng([*self.key, channels, index])
            got = rng.standard_normal((self.BLOCK, channels), dtype=np.float32)
            self._blocks[(channels, index)] = got
        return got

    def frames(self, channels: int, start: int, stop: int) -> np.ndarray:
        """``[channels, stop - start]`` float32 noise of frames [start, stop)."""
        if stop <= start:
            return np.zeros((channels, 0), np.float32)
        first, last = start // self.BLOCK, (stop - 1) // self.BLOCK
        rows = np.concatenate([self._block(channels, i) for i in range(first, last + 1)])
        off = start - first * self.BLOCK
        return np.ascontiguousarray(rows[off : off + stop - start].T)


@dataclass(frozen=True)
class VocodeJob:
    """One piece of audio to make: a segment's tokens (or a window of them) in one voice."""

    tokens: np.ndarray
    """[T] int semantic tokens (25 Hz)."""
    phones: np.ndarray
    """[N] int phone ids of the whole segment."""
    voice: Voice
    noise: NoiseSource
    speed: float = 1.0
    noise_scale: float = 0.5
    token_offset: int = 0
    """Index of ``tokens[0]`` in the segment (a streaming window); aligns the noise."""
    sample_steps: int | None = None
    """CFM families: Euler steps (None: the bundle's default); others ignore it."""
    cfg_rate: float | None = None
    """CFM families: classifier-free guidance rate (None: the bundle's default, v5dev 1.3)."""
    parallel: bool = False
    """CFM families: upstream's parallel chunking instead of the sequential one."""


class AcousticStage(Protocol):
    """What the engine needs from an acoustic model family."""

    sample_rate: int
    samples_per_token: int
    """Output samples per semantic token at speed 1."""

    def vocode(self, jobs: Sequence[VocodeJob]) -> list[np.ndarray]:
        """One float32 waveform per job, in order (jobs may be decoded as one batch)."""
        ...


def compile_graphs(
    bundle: Bundle,
    names: Sequence[str],
    backend: BackendName,
    options: RunnerOptions | None,
    precision: str,
) -> tuple[dict[str, GraphSpec], dict[str, GraphRunner]]:
    """Declarations and compiled runners of an acoustic stage's graphs at one precision.

    The compile hint per variant comes from :func:`~gsv_runtime.variants.variant_options`,
    each graph's tweaks from :func:`~gsv_runtime.variants.graph_tweaks`.

    Raises:
        BundleError: a graph or variant is missing.
        BackendError: the backend cannot compile a graph.
    """
    options = variant_options(backend, precision, options or RunnerOptions(), "acoustic")
    specs = {name: bundle.graph(name) for name in names}
    runners = {
        name: make_runner(
            bundle.graph_path(name, backend, precision),
            backend,
            options,
            graph_tweaks(name, backend, options),
        )
        for name in names
    }
    return specs, runners


def load_acoustic(
    bundle: Bundle, backend: BackendName, options: RunnerOptions, precision: str
) -> AcousticStage:
    """The acoustic stage of the family the bundle's manifest declares.

    Raises:
        BundleError: an unknown family, or the family's graphs are missing.
    """
    family = str(bundle.manifest.audio.get("family", "vits"))
    if family == "vits":
        from gsv_runtime.acoustic.sovits import SoVITSStage

        return SoVITSStage.from_bundle(bundle, backend, options, precision)
    if family == "cfm":
        from gsv_runtime.acoustic.cfm import CfmStage

        return CfmStage.from_bundle(bundle, backend, options, precision)
    raise BundleError(
        f"{bundle.root}: acoustic family {family!r} is not supported by this runtime "
        f"(supported: {', '.join(FAMILIES)})"
    )
