"""Inference backends behind one small interface: a runner per graph, named numpy in and out."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from gsv_runtime.errors import BackendError

BackendName = Literal["onnxruntime", "openvino"]
BACKENDS: tuple[BackendName, ...] = ("onnxruntime", "openvino")


class GraphRunner(Protocol):
    """One compiled graph. ``run`` takes and returns numpy arrays keyed by tensor name."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; every declared input must be given."""
        ...


@dataclass(frozen=True)
class RunnerOptions:
    """How to compile a graph: device and threads (None = the backend's default)."""

    device: str = "cpu"
    """``cpu`` or ``cuda[:N]`` for onnxruntime; an OpenVINO device name (CPU, GPU, NPU) too."""
    threads: int | None = None
    """Intra-op threads; keep ``threads × parallel workers`` within the physical cores."""
    precision_hint: str = "f32"
    """OpenVINO inference precision (f32 for parity; bf16/f16 for speed where supported)."""
    cache_dir: Path | None = None
    """Compiled-model cache (None: compile on every load): OpenVINO's compiled blobs and
    onnxruntime's optimised graphs, each in a subfolder from :func:`cache_folder`."""


@dataclass(frozen=True)
class GraphTweaks:
    """Per-graph compile choices beside :class:`RunnerOptions`: OpenVINO's CPU plugin applies
    them, onnxruntime ignores them; :func:`gsv_runtime.variants.graph_tweaks` picks them."""

    one_row: bool = False
    """The caller feeds one row per call, as long as its tensors, so OpenVINO may drop the
    graph's length masks (:func:`gsv_runtime.backends.ov.drop_length_masks`); onnxruntime keeps
    them (6 % of the v2 SoVITS decoder there, and rewriting an ONNX graph at load would need
    the onnx package)."""
    fuse_elementwise: bool = False
    """Fuse chains of element-wise ops over dynamic shapes into one Snippets kernel each
    (``SNIPPETS_MODE=IGNORE_CALLBACK``; by default the plugin fuses them only for static
    shapes, and each op is then its own pass over the tensor). Falls back to the default
    compile where the plugin refuses the graph."""


def cache_folder(root: Path, graph: Path, salt: str = "") -> Path:
    """Where ``graph``'s compiled form is cached under ``root``.

    Keyed by the identity (path, size, mtime) of the graph and its weight files (the ``.bin``
    beside an IR, the ``*.data`` beside an ONNX graph) and by ``salt`` (what else the compiled
    form depends on), so a re-exported bundle never meets a stale entry.
    """
    if graph.suffix == ".xml":
        weights = [graph.with_suffix(".bin")]
    else:
        weights = sorted(graph.parent.glob("*.data"))
    return root / f"{graph.stem}-{identity_key((graph, *weights), salt)}"


def identity_key(files: Sequence[Path], salt: str = "") -> str:
    """A short hash of ``salt`` and each existing file's (resolved path, size, mtime): what a
    cached artefact derived from those files is filed under, so an edit gets a new entry."""
    parts = [salt]
    for f in files:
        if f.exists():
            st = f.stat()
            parts.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def available_backends() -> list[BackendName]:
    """The backends whose Python packages import on this machine."""
    found: list[BackendName] = []
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            __import__(module)
        except ImportError:
            continue
        found.append(name)  # type: ignore[arg-type]
    return found


def make_runner(
    path: str | Path,
    backend: BackendName,
    options: RunnerOptions | None = None,
    tweaks: GraphTweaks | None = None,
) -> GraphRunner:
    """Compile a graph file (.onnx for onnxruntime, .xml or .onnx for OpenVINO).

    Raises:
        BackendError: the backend is not installed or cannot compile the graph on the device.
    """
    options = options or RunnerOptions()
    if backend == "onnxruntime":
        from gsv_runtime.backends.ort import OrtRunner

        return OrtRunner(Path(path), options)
    if backend == "openvino":
        from gsv_runtime.backends.ov import OvRunner

        return OvRunner(Path(path), options, tweaks)
    raise BackendError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
