"""Write one graph: torch module → ONNX (+ external data, metadata) → OpenVINO IR, per precision.

Every exporter in gsv_export goes through these functions, so graphs are declared once
(:class:`GraphDecl`) and the manifest, the dynamic axes and the parity checks all read the same
declaration.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from gsv_export.ov_sine import replace_sine
from gsv_export.polyphase import polyphase_upsampling
from gsv_runtime.bundle import FORMAT_VERSION, GraphFile, GraphSpec, TensorSpec
from gsv_runtime.errors import GsvError

OPSET: Final = 17
EXTERNAL_DATA_MIN_BYTES: Final = 2 * 1024 * 1024
"""Graphs larger than this keep their weights in a ``<name>.onnx.data`` file beside them."""
PRECISIONS: Final = ("fp32", "fp16", "bf16", "int8")
FORMATS: Final = ("onnx", "openvino")


class ExportError(GsvError):
    """A graph could not be exported, converted or quantized."""


@dataclass(frozen=True)
class GraphDecl:
    """A graph's name and signature; shapes use ints for fixed dims and names for dynamic ones."""

    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    atol: float = 1e-4
    """Parity tolerance relative to each output's scale (max |expected|)."""
    metadata: dict[str, str] = field(default_factory=dict)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx ``dynamic_axes`` built from the named dims."""
        axes: dict[str, dict[int, str]] = {}
        for name, spec in (*self.inputs.items(), *self.outputs.items()):
            named = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            if named:
                axes[name] = named
        return axes

    def spec(self, variants: Sequence[GraphFile]) -> GraphSpec:
        """The manifest entry for this graph with the files written."""
        return GraphSpec(dict(self.inputs), dict(self.outputs), tuple(variants), self.atol)


def tensor(dtype: str, *shape: int | str) -> TensorSpec:
    """Shorthand for a :class:`TensorSpec`: ``tensor("float32", "batch", 1024)``."""
    return TensorSpec(dtype=dtype, shape=tuple(shape))


def export_onnx(
    module: torch.nn.Module, args: tuple[Any, ...], decl: GraphDecl, path: Path
) -> Path:
    """Trace ``module(*args)`` to ONNX at ``path`` with the declaration's names and axes.

    Weights go to ``<path>.data`` when the graph is large. The graph carries ``gsv.graph`` and
    ``gsv.format_version`` metadata so a stray file identifies itself. Transposed convolutions
    are traced in their polyphase form (:mod:`gsv_export.polyphase`: same map, fast kernels).

    Raises:
        ExportError: if tracing or the ONNX checker fails.
    """
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".traced.onnx")
    try:
        with warnings.catch_warnings(), torch.no_grad(), polyphase_upsampling(module):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(tmp),
                input_names=list(decl.inputs),
                output_names=list(decl.outputs),
                dynamic_axes=decl.dynamic_axes(),
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        model = onnx.load(str(tmp))
    except Exception as exc:
        raise ExportError(f"{decl.name}: ONNX export failed: {exc}") from exc
    finally:
        for leftover in tmp.parent.glob(tmp.name + "*"):
            leftover.unlink()
    meta = {"gsv.graph": decl.name, "gsv.format_version": str(FORMAT_VERSION), **decl.metadata}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    save_onnx(model, path)
    return path


def save_onnx(model: Any, path: Path) -> None:
    """Save an ONNX ModelProto, with external data when large, and run the checker on the file."""
    import onnx

    large = model.ByteSize() > EXTERNAL_DATA_MIN_BYTES
    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"{path.name}: the ONNX checker rejects the graph: {exc}") from exc


def onnx_files(path: Path) -> list[Path]:
    """The files an ONNX graph consists of (the graph and its external data, if any)."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def share_onnx_weights(root: Path, graphs: dict[str, GraphSpec]) -> dict[str, int]:
    """Store every external initializer of the bundle's ONNX graphs once per precision.

    The GPT's prefill, step and GQA-step graphs hold the same weights; each graph's own
    ``.onnx.data`` would store them three times (3 × 310 MB for a full-size fp32 GPT). Tensors
    with identical bytes, shape and type are written once to ``onnx/weights[-<precision>].data``
    (each at a page-aligned offset) and every graph points there; the per-graph data files go.

    Returns:
        Bytes of external data per precision after sharing.
    """
    import hashlib

    import onnx
    from onnx.external_data_helper import uses_external_data

    by_precision: dict[str, list[Path]] = {}
    seen: set[Path] = set()  # a file several variants name (a CFM int8 entry may be fp32's)
    for spec in graphs.values():
        for v in spec.variants:
            if v.format == "onnx" and root / v.path not in seen:
                seen.add(root / v.path)
                by_precision.setdefault(v.precision, []).append(root / v.path)
    sizes: dict[str, int] = {}
    for precision, paths in sorted(by_precision.items()):
        models = [(p, onnx.load(str(p), load_external_data=False)) for p in paths]
        external = [(p, m) for p, m in models if any(map(uses_external_data, _tensors(m.graph)))]
        if not external:
            continue
        folder = external[0][0].parent
        name = "weights.data" if precision == "fp32" else f"weights-{precision}.data"
        offsets: dict[bytes, tuple[int, int]] = {}
        old_files: set[Path] = set()
        tmp = folder / (name + ".tmp")
        with tmp.open("wb") as out:
            for path, model in external:
                for tensor in _tensors(model.graph):
                    if not uses_external_data(tensor):
                        continue
                    info = {e.key: e.value for e in tensor.external_data}
                    source = path.parent / info["location"]
                    old_files.add(source)
                    with source.open("rb") as f:
                        f.seek(int(info.get("offset", 0)))
                        raw = f.read(int(info["length"]))
                    key = hashlib.sha256(
                        raw + repr((tensor.data_type, tuple(tensor.dims))).encode()
                    ).digest()
                    if key not in offsets:
                        out.seek(-out.tell() % 4096, 1)
                        offsets[key] = (out.tell(), len(raw))
                        out.write(raw)
                    offset, length = offsets[key]
                    del tensor.external_data[:]
                    for k, v in (("location", name), ("offset", offset), ("length", length)):
                        entry = tensor.external_data.add()
                        entry.key, entry.value = k, str(v)
            sizes[precision] = out.tell()
        tmp.replace(folder / name)
        for path, model in external:
            onnx.save_model(model, str(path))
        for stale in old_files - {folder / name}:
            stale.unlink(missing_ok=True)
        for path, _ in external:
            onnx.checker.check_model(str(path))
    return sizes


def drop_reference_variants(root: Path, graphs: dict[str, GraphSpec]) -> dict[str, GraphSpec]:
    """The graphs without the fp32 variants nobody asked for, and only the files still used.

    fp32 is always exported (every other precision is checked against it); for a bundle that
    should not carry it (an int8 + bf16 edge bundle), a graph's fp32 variant goes wherever the
    graph keeps a lower precision in the same format. Graphs that exist only in fp32 (the
    embeddings, the reference encoders) keep it, and a file another variant still uses (the
    OpenVINO IR that its bf16 variant compiles) stays.
    """
    kept: dict[str, GraphSpec] = {}
    for name, spec in graphs.items():
        lower = {v.format for v in spec.variants if v.precision != "fp32"}
        variants = tuple(v for v in spec.variants if v.precision != "fp32" or v.format not in lower)
        kept[name] = replace(spec, variants=variants)
    used = {f for spec in kept.values() for v in spec.variants for f in _files_of(root, v)}
    for folder in ("onnx", "openvino"):
        for path in sorted((root / folder).glob("*")) if (root / folder).is_dir() else []:
            if path.is_file() and path not in used:
                path.unlink()
    return kept


def _files_of(root: Path, variant: GraphFile) -> list[Path]:
    """The files a graph variant reads: the graph and its weights."""
    path = root / variant.path
    if variant.format == "openvino":
        return [path, path.with_suffix(".bin")]
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    data = {
        e.value
        for t in _tensors(model.graph)
        if uses_external_data(t)
        for e in t.external_data
        if e.key == "location"
    }
    return [path, *(path.parent / d for d in sorted(data))]


def _tensors(graph: Any) -> Iterator[Any]:
    """Every stored tensor of an ONNX graph: initializers and node attributes, subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def to_openvino(onnx_path: Path, xml_path: Path, fp16_weights: bool = False) -> Path:
    """Convert an ONNX graph to OpenVINO IR (.xml + .bin); optionally store fp16 weights.

    ``Sin`` nodes become a polynomial the CPU plugin vectorises (:mod:`gsv_export.ov_sine`).

    Raises:
        ExportError: if OpenVINO cannot convert it.
    """
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = ov.convert_model(str(onnx_path))
        replace_sine(model)
        ov.save_model(model, str(xml_path), compress_to_fp16=fp16_weights)
    except Exception as exc:
        raise ExportError(f"{onnx_path.name}: OpenVINO conversion failed: {exc}") from exc
    return xml_path


def openvino_files(xml_path: Path) -> list[Path]:
    """The files of an OpenVINO IR (.xml and .bin)."""
    return [xml_path, xml_path.with_suffix(".bin")]


def to_numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """A detached CPU numpy copy of a tensor (numpy arrays pass through)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value
