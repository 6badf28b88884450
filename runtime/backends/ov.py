"""OpenVINO runner: compile once, keep one infer request."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from gsv_runtime.backends import GraphTweaks, RunnerOptions, cache_folder
from gsv_runtime.errors import BackendError, first_line

_LOGGER = logging.getLogger(__name__)


_MASK_PATH: Final = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Convert", "Broadcast"})
"""Operations a length mask passes through between its ``Less`` and the ``Multiply``."""

_FUSED_ELEMENTWISE: Final = {"SNIPPETS_MODE": "IGNORE_CALLBACK"}
"""The CPU plugin's property that lets Snippets fuse element-wise chains over dynamic shapes
(its default callback refuses every dynamic node)."""


def _is_length_mask(value: Any) -> bool:
    node = value.get_node()
    while node.get_type_name() in _MASK_PATH:
        node = node.input_value(0).get_node()
    return bool(node.get_type_name() == "Less")


def drop_length_masks(model: Any) -> int:
    """Bypass, in place, every ``Multiply`` by a length mask (positions ``Less`` than a row's
    length, through reshapes and casts); returns how many.

    A batch of rows of different lengths needs those multiplies so that padding never leaks
    into a shorter row; one row as long as its tensors has all-ones masks, so the graph then
    computes the same without them. In the v2 SoVITS decoder they are 187 multiplies whose
    ``[B, 1, T]`` broadcast also kept OpenVINO's CPU plugin reordering each convolution's
    output out of and back into its blocked layout: 10 s of audio under the bf16 hint on 2
    AMX cores, 478 → 389 ms; f32 1667 → 1536 ms with bit-identical output.
    """
    dropped = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Multiply":
            continue
        a, b = node.input_value(0), node.input_value(1)
        kept = a if _is_length_mask(b) else b if _is_length_mask(a) else None
        if kept is not None:
            node.output(0).replace(kept)
            dropped += 1
    if dropped:
        model.validate_nodes_and_infer_types()
    return dropped


def compile_model(
    path: Path,
    options: RunnerOptions,
    extra: dict[str, object] | None = None,
    tweaks: GraphTweaks | None = None,
) -> Any:
    """``core.compile_model`` with the LATENCY hint, the options' precision, threads and
    cache, plus ``extra`` properties and the graph's :class:`GraphTweaks`.

    Raises:
        BackendError: OpenVINO missing, the device absent, or the compile failed.
    """
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendError("OpenVINO is not installed (pip install openvino)") from exc
    tweaks = tweaks or GraphTweaks()
    device = options.device.upper()
    config: dict[str, object] = {
        "PERFORMANCE_HINT": "LATENCY",
        # this CPU defaults to bf16 (AMX); parity needs f32 unless asked otherwise
        "INFERENCE_PRECISION_HINT": options.precision_hint,
        **(extra or {}),
    }
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    if device.startswith("CPU"):
        # No thread pinning: the engine runs the GPT and the acoustic models at once, and
        # threads pinned to the same cores queue behind each other. Measured side by side
        # (engine, full-size v2, OpenVINO bf16, 2 cores, two runs each): 1.62-2.01 audio-s/s
        # unpinned vs 1.51-1.53 pinned at N=1, 2.56-3.09 vs 2.09-2.19 at N=4.
        config["ENABLE_CPU_PINNING"] = False
    if options.cache_dir is not None:
        salt = "+".join(n for n, on in vars(tweaks).items() if on)  # a tweak compiles anew
        config["CACHE_DIR"] = str(cache_folder(options.cache_dir, path, salt))
    core = ov.Core()
    if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
        raise BackendError(
            f"OpenVINO device {device} is not available here "
            f"(available: {', '.join(core.available_devices)})"
        )
    model: Any = str(path)
    try:
        if tweaks.one_row:
            model = core.read_model(str(path))
            drop_length_masks(model)
        if tweaks.fuse_elementwise and device.startswith("CPU"):
            try:
                return core.compile_model(model, device, {**config, **_FUSED_ELEMENTWISE})
            except Exception as exc:  # e.g. a graph exported before the polyphase bias moved
                _LOGGER.warning(
                    "OpenVINO cannot fuse the element-wise ops of %s (%s); compiling it unfused",
                    path.name,
                    first_line(exc),
                )
        return core.compile_model(model, device, config)
    except Exception as exc:  # OpenVINO raises RuntimeError with a long plugin log
        raise BackendError(
            f"OpenVINO cannot compile {path.name} on {device}: {first_line(exc)}"
        ) from None


class OvRunner:
    """A compiled OpenVINO model with LATENCY hint and an explicit inference precision."""

    def __init__(
        self, path: Path, options: RunnerOptions, tweaks: GraphTweaks | None = None
    ) -> None:
        self.compiled = compile_model(path, options, tweaks=tweaks)
        self.inference_precision = str(
            self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        )
        """What the plugin computes in (a CPU without bf16/fp16 units falls back to f32)."""
        if self.inference_precision != options.precision_hint:
            _LOGGER.warning(
                "OpenVINO %s cannot compute in %s here; %s runs in %s",
                options.device.upper(),
                options.precision_hint,
                path.name,
                self.inference_precision,
            )
        self.request = self.compiled.create_infer_request()
        self.name = path.name
        self.input_names = tuple(p.any_name for p in self.compiled.inputs)
        self.output_names = tuple(p.any_name for p in self.compiled.outputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run synchronously; outputs are copied out of the request's buffers.

        Raises:
            BackendError: the plugin refused the inputs (first line of its message).
        """
        try:
            result = self.request.infer({k: inputs[k] for k in self.input_names})
        except Exception as exc:  # OpenVINO raises RuntimeError with a long plugin log
            raise BackendError(f"OpenVINO failed running {self.name}: {first_line(exc)}") from None
        return {
            name: np.array(result[port])
            for name, port in zip(self.output_names, self.compiled.outputs, strict=True)
        }
