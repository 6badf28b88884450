"""onnxruntime runner: CPU execution provider, or CUDA when asked for and present.

On the CPU the graph onnxruntime optimises at load is cached (``RunnerOptions.cache_dir``) and
the next load reads it with optimisation off: a full-size v2 voice's graphs load in 0.37 s
instead of 1.32 s on a 2-core EPYC, with the same outputs.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gsv_runtime.backends import RunnerOptions, cache_folder
from gsv_runtime.errors import BackendError, first_line

_LOGGER = logging.getLogger(__name__)


def _providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    import onnxruntime as ort

    kind, _, index = device.lower().partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError(
                "device 'cuda' asked for, but this onnxruntime has no CUDA execution provider "
                "(install onnxruntime-gpu on a machine with an NVIDIA GPU)"
            )
        return [("CUDAExecutionProvider", {"device_id": index or "0"}), "CPUExecutionProvider"]
    raise BackendError(f"onnxruntime: unknown device {device!r}; accepted: cpu, cuda, cuda:N")


class OrtRunner:
    """An ``InferenceSession`` with explicit thread counts."""

    def __init__(self, path: Path, options: RunnerOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from exc
        self._ort = ort
        self._options = options
        cache = _optimised_cache(path, options)
        if cache is None:
            self.session = self._session(path)
        elif (cache / path.name).exists():
            try:
                self.session = self._session(cache / path.name, optimised=True)
            except BackendError as exc:  # a damaged cache entry: rebuild it from the bundle
                _LOGGER.warning("onnxruntime: cached %s unreadable (%s)", path.name, exc)
                shutil.rmtree(cache, ignore_errors=True)
                self.session = self._session_saving(path, cache)
        else:
            self.session = self._session_saving(path, cache)
        self.name = path.name
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def _session(self, path: Path, optimised: bool = False, save_to: Path | None = None) -> Any:
        ort = self._ort
        so = ort.SessionOptions()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self._options.threads:
            so.intra_op_num_threads = self._options.threads
        so.log_severity_level = 3
        # Intra-op threads spin between the ops of a run (a GPT step is ~600 small ops; waking
        # sleeping threads for each cost 2-3 ms of a 7-10 ms step) and stop the moment the run
        # returns, so they never hold a core the other stage needs between runs. Measured in
        # one engine (full-size v2, backend auto, 2 cores): 500-token RTF 0.306-0.324 vs
        # 0.356-0.372 with spinning off; four concurrent requests 3.84-4.39 audio-s/s vs
        # 3.84-4.33. Always spinning (no stop) cost concurrent throughput before (0.55 vs
        # 0.88-1.05 audio-s/s with another session running).
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.force_spinning_stop", "1")
        if optimised:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if save_to is not None:
            so.optimized_model_filepath = str(save_to)
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", f"{save_to.stem}.data"
            )
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
        try:
            return ort.InferenceSession(
                str(path), sess_options=so, providers=_providers(self._options.device)
            )
        except BackendError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime cannot load {path.name}: {exc}") from None

    def _session_saving(self, path: Path, cache: Path) -> Any:
        """Load ``path`` and write its optimised graph to ``cache`` (complete or not at all: it
        is written to a private folder renamed into place, so a concurrent or killed load never
        leaves half a graph there). A cache that cannot be written only costs the saving."""
        staging = cache.with_name(f"{cache.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            staging.mkdir(parents=True, exist_ok=True)
            session = self._session(path, save_to=staging / path.name)
        except (OSError, BackendError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            session = self._session(path)  # raises again when the graph itself is at fault
            _LOGGER.warning("onnxruntime: %s not cached (%s)", path.name, first_line(exc))
            return session
        try:
            staging.rename(cache)
        except OSError:  # another process cached it first
            shutil.rmtree(staging, ignore_errors=True)
        return session

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with host arrays; outputs come back as host arrays.

        Raises:
            BackendError: onnxruntime refused the inputs (its message, first line).
        """
        try:
            outs = self.session.run(None, {k: inputs[k] for k in self.input_names})
        except Exception as exc:  # InvalidArgument, Fail, RuntimeException...
            raise BackendError(
                f"onnxruntime failed running {self.name}: {first_line(exc)}"
            ) from None
        return dict(zip(self.output_names, outs, strict=True))


def _optimised_cache(path: Path, options: RunnerOptions) -> Path | None:
    """The folder caching ``path``'s optimised graph (None: no cache, or not on the CPU).

    Only the CPU provider's graphs are cached: they are specific to this onnxruntime version
    and this CPU's ISA (layouts, fused int8 kernels), which key the folder with the files.
    """
    if options.cache_dir is None or options.device.lower() != "cpu":
        return None
    import onnxruntime as ort

    from gsv_runtime.variants import cpu_flags

    salt = f"onnxruntime {ort.__version__} {' '.join(sorted(cpu_flags()))}"
    return cache_folder(options.cache_dir, path, salt)
