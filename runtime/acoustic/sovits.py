"""SoVITS stage (v1/v2/v2Pro/v2ProPlus): prompt codes, reference vector and waveform decoding.

Runs the three graphs that ``gsv_export.sovits`` writes (their I/O is documented there) on one
backend, with numpy on the host: batches are right-padded and trimmed here, the prior noise is
drawn here from the caller's ``numpy.random.Generator`` (so a seeded run gives the same audio on
every backend), and the speed becomes per-row target frame counts, ``int(2·n / speed) + 1`` as
upstream computes it in float64.

A stage owns its compiled graphs and keeps no other state between calls, so it can live on its
own thread; it is not meant to be called from two threads at once (an OpenVINO infer request is
single-threaded): give each worker thread its own stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from gsv_runtime.acoustic import VocodeJob, compile_graphs
from gsv_runtime.backends import BackendName, GraphRunner, RunnerOptions
from gsv_runtime.bundle import Bundle, GraphSpec, check_graph_io
from gsv_runtime.errors import BundleError, InputError
from gsv_runtime.variants import graph_tweaks

PROMPT: Final = "sovits_prompt"
REF: Final = "sovits_ref"
DECODER: Final = "sovits_decoder"
GRAPHS: Final = (PROMPT, REF, DECODER)
DEFAULT_NOISE_SCALE: Final = 0.5
"""Upstream's prior noise scale (neither upstream front end changes it)."""


def frame_lengths(code_lengths: Sequence[int], speeds: Sequence[float]) -> np.ndarray:
    """Prior frames per row: ``2·n`` at speed 1, else ``int(2·n / speed) + 1``.

    Mirrors upstream ``module/models.py::TextEncoder`` (``int(y.shape[-1] / speed) + 1``),
    evaluated in Python float64 like upstream.
    """
    return np.array(
        [
            2 * int(n) if s == 1 else int(2 * int(n) / s) + 1
            for n, s in zip(code_lengths, speeds, strict=True)
        ],
        dtype=np.int64,
    )


def _frame_offset(token_offset: int, speed: float) -> int:
    """Prior frame where a window starting at ``token_offset`` begins (exact at speed 1)."""
    return 2 * token_offset if speed == 1 else int(2 * token_offset / speed)


def mean_reference(ge: np.ndarray) -> np.ndarray:
    """Combine several references of one voice: ``[R, gin, 1]`` → ``[1, gin, 1]``.

    Upstream (``TTS.py``, aux reference audios) averages the per-reference ``ge`` (after the
    speaker-vector fusion of v2Pro/v2ProPlus).
    """
    ge = np.asarray(ge, dtype=np.float32)
    if ge.ndim != 3 or ge.shape[0] < 1:
        raise InputError(f"ge must be [R, gin, 1] with R ≥ 1, got shape {ge.shape}")
    return ge.mean(axis=0, keepdims=True)


def pad_rows(rows: Sequence[np.ndarray], value: float = 0, dtype: str | None = None) -> np.ndarray:
    """Right-pad arrays ``[..., T_i]`` (equal leading dims) to one batch ``[B, ..., max T]``."""
    t = max(r.shape[-1] for r in rows)
    out = np.full((len(rows), *rows[0].shape[:-1], t), value, dtype=dtype or rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, ..., : row.shape[-1]] = row
    return out


def _per_row(value: float | Sequence[float], n: int, name: str) -> list[float]:
    if isinstance(value, (int, float, np.number)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise InputError(f"{name}: expected one value or {n} (one per row), got {len(values)}")
    return values


def run_prompt(spec: GraphSpec | None, runner: GraphRunner, ssl_features: np.ndarray) -> np.ndarray:
    """``sovits_prompt`` on ``[768, T50]`` or ``[B, 768, T50]`` HuBERT features → int64 codes
    ``[T50 // 2]`` or ``[B, T50 // 2]`` (every acoustic family shares this graph).

    Raises:
        InputError: wrong rank or channel count, or fewer than 2 frames.
    """
    x = np.asarray(ssl_features, dtype=np.float32)
    single = x.ndim == 2
    x = x[None] if single else x
    dim = spec.inputs["ssl"].shape[1] if spec is not None else None
    if x.ndim != 3 or (dim is not None and x.shape[1] != dim) or x.shape[2] < 2:
        raise InputError(
            f"ssl_features must be [{dim}, T≥2] or [B, {dim}, T≥2], got shape {x.shape}"
        )
    codes = runner.run({"ssl": np.ascontiguousarray(x)})["codes"]
    return codes[0] if single else codes


class SoVITSStage:
    """The SoVITS graphs of one voice bundle on one backend.

    Build it with :meth:`from_bundle`, or inject runners (any object with ``run``) together
    with the graphs' declarations. ``prompt`` and ``ref`` are optional: a voice whose prompt
    codes and ``ge`` are cached only needs the decoder.
    """

    def __init__(
        self,
        specs: Mapping[str, GraphSpec],
        runners: Mapping[str, GraphRunner],
        one_row_decoder: bool = False,
    ) -> None:
        """Check each runner's input and output names against its declaration;
        ``one_row_decoder``: the decoder runner takes one full-length row per call (compiled
        without its length masks), so a batch is decoded row by row.

        Raises:
            BundleError: the decoder is missing, or a runner's I/O differs from its spec.
        """
        if DECODER not in runners or DECODER not in specs:
            raise BundleError(f"the SoVITS stage needs the {DECODER} graph")
        for name, runner in runners.items():
            spec = specs.get(name)
            if spec is None:
                raise BundleError(f"runner {name!r} has no graph declaration")
            check_graph_io(name, spec, runner.input_names, runner.output_names)
        self.specs = dict(specs)
        self.runners = dict(runners)
        self.one_row_decoder = one_row_decoder
        dec = specs[DECODER]
        self.noise_channels = int(dec.inputs["noise"].shape[1])
        self.ge_channels = int(dec.inputs["ge"].shape[1])
        self.is_pro = REF in specs and "sv" in specs[REF].inputs
        """v2Pro/v2ProPlus: the reference graph also takes the speaker vector ``sv``."""

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        backend: BackendName = "onnxruntime",
        options: RunnerOptions | None = None,
        precision: str = "fp32",
        graphs: Sequence[str] = GRAPHS,
    ) -> SoVITSStage:
        """Compile ``graphs`` (default: all three) of a voice bundle.

        On OpenVINO's CPU plugin the decoder runs one row per call without its length masks
        (:func:`~gsv_runtime.variants.graph_tweaks`); elsewhere a batch goes through the masked
        graph in one call.

        Args:
            bundle: a loaded voice bundle with the ``sovits_*`` graphs.
            backend: ``onnxruntime`` or ``openvino``.
            options: device and threads. For the OpenVINO ``bf16`` variant the precision hint
                is set to bf16 (that variant is the fp32 IR compiled in bf16).
            precision: the variant to load (``fp32``, ``fp16``, ``bf16``).
            graphs: which graphs to compile; must include ``sovits_decoder``.

        Raises:
            BundleError: a graph or variant is missing, or its I/O differs from the manifest.
            BackendError: the backend cannot compile a graph.
        """
        one_row = graph_tweaks(DECODER, backend, options or RunnerOptions()).one_row
        return cls(*compile_graphs(bundle, graphs, backend, options, precision), one_row)

    def _runner(self, name: str) -> GraphRunner:
        try:
            return self.runners[name]
        except KeyError:
            raise BundleError(f"this SoVITS stage was built without the {name} graph") from None

    # ----------------------------------------------------------------------------------------

    def prompt_codes(self, ssl_features: np.ndarray) -> np.ndarray:
        """HuBERT features → prompt semantic codes (25 Hz).

        Args:
            ssl_features: ``[768, T50]`` for one reference or ``[B, 768, T50]`` (rows
                right-padded; a row of ``n`` valid frames has ``n // 2`` valid codes).

        Returns:
            int64 codes ``[T50 // 2]`` or ``[B, T50 // 2]``.

        Raises:
            InputError: wrong rank or channel count, or fewer than 2 frames.
        """
        return run_prompt(self.specs.get(PROMPT), self._runner(PROMPT), ssl_features)

    def reference(
        self,
        spec: np.ndarray | Sequence[np.ndarray],
        spec_lengths: Sequence[int] | np.ndarray | None = None,
        sv: np.ndarray | None = None,
    ) -> np.ndarray:
        """Reference spectrogram(s) → ``ge`` ``[B, gin, 1]``, one row per reference.

        Args:
            spec: host linear spectrogram(s) (``audio_features.linear_spectrogram`` of the
                32 kHz reference): ``[1025, T]``, ``[B, 1025, T]`` (right-padded, with
                ``spec_lengths``) or a list of ``[1025, T_i]`` (padded here).
            spec_lengths: valid frames per row of a padded batch; None means all frames.
            sv: v2Pro/v2ProPlus only: speaker vectors ``[sv_dim]`` or ``[B, sv_dim]``.

        Returns:
            float32 ``ge`` ``[B, gin, 1]``; average several references of one voice with
            :func:`mean_reference` before decoding.

        Raises:
            InputError: bad shapes, or ``sv`` missing on a Pro voice or given on another one.
        """
        if isinstance(spec, np.ndarray):
            batch = spec[None] if spec.ndim == 2 else spec
            lengths = (
                np.full(batch.shape[0], batch.shape[-1])
                if spec_lengths is None
                else np.asarray(spec_lengths)
            )
        else:
            rows = [np.asarray(s, dtype=np.float32) for s in spec]
            if not rows or any(r.ndim != 2 for r in rows):
                raise InputError("spec list must hold [bins, T] arrays")
            batch, lengths = pad_rows(rows), np.array([r.shape[-1] for r in rows])
        bins = self.specs[REF].inputs["spec"].shape[1] if REF in self.specs else batch.shape[1]
        if batch.ndim != 3 or batch.shape[1] != bins or lengths.shape != (batch.shape[0],):
            raise InputError(
                f"spec must be [{bins}, T] or [B, {bins}, T] with B lengths, got "
                f"{batch.shape} and {lengths.shape[0] if lengths.ndim else 'no'} lengths"
            )
        if lengths.min() < 1 or lengths.max() > batch.shape[-1]:
            raise InputError(f"spec_lengths must be in [1, {batch.shape[-1]}], got {lengths}")
        feeds: dict[str, np.ndarray] = {
            "spec": np.ascontiguousarray(batch, dtype=np.float32),
            "spec_lengths": lengths.astype(np.int64),
        }
        if self.is_pro != (sv is not None):
            need = "needs the speaker vector sv" if self.is_pro else "takes no speaker vector"
            raise InputError(f"this voice {need}")
        if sv is not None:
            sv = np.asarray(sv, dtype=np.float32)
            sv = sv[None] if sv.ndim == 1 else sv
            if sv.shape[0] != batch.shape[0]:
                raise InputError(f"sv has {sv.shape[0]} rows for {batch.shape[0]} references")
            feeds["sv"] = np.ascontiguousarray(sv)
        return self._runner(REF).run(feeds)["ge"]

    def decode(
        self,
        codes_list: Sequence[np.ndarray],
        phones_list: Sequence[np.ndarray],
        ge: np.ndarray,
        noise_scale: float | Sequence[float] = DEFAULT_NOISE_SCALE,
        speed: float | Sequence[float] = 1.0,
        rng: np.random.Generator | None = None,
        noise: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Decode a batch of rows (one row is the special case) to 32 kHz waveforms.

        Args:
            codes_list: per row, 1-D semantic codes (25 Hz).
            phones_list: per row, 1-D phone ids.
            ge: ``[gin, 1]`` or ``[1, gin, 1]`` shared by all rows, or ``[B, gin, 1]``.
            noise_scale: prior noise scale, one value or one per row.
            speed: time stretch (> 1 is faster), one value or one per row.
            rng: draws each row's standard-normal noise ``[192, frames_i]`` as float32, row
                after row; give the same seeded generator for the same audio on any backend.
            noise: instead of ``rng``: per row, standard-normal noise ``[192, ≥ frames_i]``
                (only the first ``frames_i`` frames are used).

        Returns:
            One float32 waveform per row, trimmed to its length (``frames_i · 640`` samples).

        Raises:
            InputError: mismatched rows, empty rows, negative ids, bad ``ge``, bad speed, or
                not exactly one of ``rng`` and ``noise``.
        """
        b = len(codes_list)
        if b == 0 or len(phones_list) != b:
            raise InputError(
                f"need ≥ 1 row and as many phone rows ({len(phones_list)}) as code rows ({b})"
            )
        codes = [np.asarray(c, dtype=np.int64).ravel() for c in codes_list]
        phones = [np.asarray(p, dtype=np.int64).ravel() for p in phones_list]
        for kind, rows in (("codes", codes), ("phones", phones)):
            if any(r.size == 0 for r in rows) or any(int(r.min()) < 0 for r in rows):
                raise InputError(f"every row of {kind} must be non-empty with ids ≥ 0")
        speeds = _per_row(speed, b, "speed")
        if not all(0 < s < 100 for s in speeds):
            raise InputError(f"speed must be in (0, 100), got {speeds}")
        frames = frame_lengths([c.size for c in codes], speeds)
        ge_rows = self._batch_ge(ge, b)
        noise_rows = self._noise(frames, rng, noise)  # drawn for all rows, in row order
        scales = np.array(_per_row(noise_scale, b, "noise_scale"), dtype=np.float32)
        groups = [[i] for i in range(b)] if self.one_row_decoder else [list(range(b))]
        out: list[np.ndarray] = []
        for rows in groups:
            feeds = {
                "codes": pad_rows([codes[i] for i in rows]),
                "code_lengths": np.array([codes[i].size for i in rows], dtype=np.int64),
                "phones": pad_rows([phones[i] for i in rows]),
                "phone_lengths": np.array([phones[i].size for i in rows], dtype=np.int64),
                "ge": ge_rows[rows],
                "noise": np.ascontiguousarray(noise_rows[rows, :, : int(frames[rows].max())]),
                "noise_scale": scales[rows],
                "frame_lengths": frames[rows],
            }
            out.extend(self._run_decoder(feeds))
        return out

    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self._runner(DECODER).run(feeds)
        wav, lengths = out["wav"], out["wav_lengths"]
        return [np.array(wav[i, : int(n)], dtype=np.float32) for i, n in enumerate(lengths)]

    sample_rate = 32000
    samples_per_token = 1280
    """Two prior frames per 25 Hz token, 640 samples per frame at 32 kHz."""

    def vocode(self, jobs: Sequence[VocodeJob]) -> list[np.ndarray]:
        """The engine's acoustic call (:class:`gsv_runtime.acoustic.AcousticStage`).

        Jobs are decoded as one batch when they share a voice, noise scale and speed, else one
        by one; each job's prior noise comes from its :class:`NoiseSource` at its frames.
        """
        if not jobs:
            return []
        first = jobs[0]
        same = all(
            j.voice is first.voice and j.speed == first.speed and j.noise_scale == first.noise_scale
            for j in jobs
        )
        if not same:
            return [w for job in jobs for w in self.vocode([job])]
        frames = frame_lengths([len(j.tokens) for j in jobs], [j.speed for j in jobs])
        noise = [
            j.noise.frames(self.noise_channels, start, start + int(n))
            for j, n, start in zip(
                jobs,
                frames,
                [_frame_offset(j.token_offset, j.speed) for j in jobs],
                strict=True,
            )
        ]
        return self.decode(
            [j.tokens for j in jobs],
            [j.phones for j in jobs],
            first.voice.mean_ge,
            noise_scale=first.noise_scale,
            speed=first.speed,
            noise=noise,
        )

    def _batch_ge(self, ge: np.ndarray, b: int) -> np.ndarray:
        ge = np.asarray(ge, dtype=np.float32)
        ge = ge[None] if ge.ndim == 2 else ge
        if ge.ndim != 3 or ge.shape[1:] != (self.ge_channels, 1) or ge.shape[0] not in (1, b):
            raise InputError(
                f"ge must be [{self.ge_channels}, 1], [1, {self.ge_channels}, 1] or "
                f"[{b}, {self.ge_channels}, 1], got shape {ge.shape}"
            )
        return np.ascontiguousarray(np.broadcast_to(ge, (b, *ge.shape[1:])))

    def _noise(
        self,
        frames: np.ndarray,
        rng: np.random.Generator | None,
        noise: Sequence[np.ndarray] | None,
    ) -> np.ndarray:
        c, t = self.noise_channels, int(frames.max())
        if (rng is None) == (noise is None):
            raise InputError("give exactly one of rng (a numpy Generator) and noise")
        if noise is not None and len(noise) != len(frames):
            raise InputError(f"noise has {len(noise)} rows for {len(frames)} rows of codes")
        out = np.zeros((len(frames), c, t), dtype=np.float32)
        for i, n in enumerate(frames.tolist()):
            if rng is not None:
                out[i, :, :n] = rng.standard_normal((c, n), dtype=np.float32)
                continue
            row = np.asarray(noise[i], dtype=np.float32)  # type: ignore[index]
            if row.ndim != 2 or row.shape[0] != c or row.shape[1] < n:
                raise InputError(f"noise row {i} must be [{c}, ≥{n}], got shape {row.shape}")
            out[i, :, :n] = row[:, :n]
        return out
