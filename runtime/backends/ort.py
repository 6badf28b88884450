"""onnxruntime runner: CPU execution provider, or CUDA when asked for and present."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from gsv_runtime.backends import RunnerOptions
from gsv_runtime.errors import BackendError, first_line


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
        so = ort.SessionOptions()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: the engine runs the GPT and the
        # acoustic sessions at once, and spinning threads steal the cores the other session
        # (or another process) needs. Measured side by side (engine, full-size v2, ORT fp32, 2
        # cores with other work running): 0.88-1.05 audio-s/s without spinning, 0.55 with.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=so, providers=_providers(options.device)
            )
        except BackendError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime cannot load {path.name}: {exc}") from None
        self.name = path.name
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

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
