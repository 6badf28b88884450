"""The bundle: a directory of graphs plus ``bundle.json``, its self-describing manifest.

Written by gsv_export, read by the runtime. The runtime reads only JSON and graph files from a
bundle: nothing in it is ever unpickled. Readers ignore unknown keys and refuse a newer major
``format_version`` (the number is bumped only for changes that break readers).
"""

from __future__ import annotations

import hashlib
import json
import math
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from gsv_runtime.errors import BundleError

FORMAT: Final = "gsv-bundle"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "bundle.json"
MAX_MANIFEST_BYTES: Final = 16 << 20
"""A manifest larger than this is refused unread."""

Kind = Literal["voice", "support"]
GraphFormat = Literal["onnx", "openvino"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: dtype name (numpy spelling) and shape with named dynamic dims."""

    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(dtype=_typed(d["dtype"], str), shape=tuple(_typed(d["shape"], list)))


@dataclass(frozen=True)
class GraphFile:
    """One serialised variant of a graph."""

    format: GraphFormat
    precision: str
    """fp32, fp16, bf16 or int8 (weights); what the graph computes in."""
    path: str
    """Relative to the bundle root (the .onnx or the .xml file)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphFile:
        fmt = d["format"]
        if fmt not in ("onnx", "openvino"):
            raise ValueError(f"unknown graph format {fmt!r}")
        return cls(format=fmt, precision=_typed(d["precision"], str), path=_typed(d["path"], str))


@dataclass(frozen=True)
class GraphSpec:
    """A graph's signature, shared by all its variants, and the variants themselves."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    variants: tuple[GraphFile, ...]
    atol: float = 1e-4
    """Tolerance the exporter's parity check used (relative to the output scale)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(
            inputs={k: TensorSpec.from_dict(v) for k, v in d["inputs"].items()},
            outputs={k: TensorSpec.from_dict(v) for k, v in d["outputs"].items()},
            variants=tuple(GraphFile.from_dict(v) for v in _typed(d["variants"], list)),
            atol=float(d.get("atol", 1e-4)),
        )

    def variant(self, fmt: GraphFormat, precision: str) -> GraphFile | None:
        """The variant of that format and precision, if the bundle holds it."""
        for v in self.variants:
            if v.format == fmt and v.precision == precision:
                return v
        return None


@dataclass(frozen=True)
class FileEntry:
    """Integrity record of one bundle file."""

    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Manifest:
    """Everything in ``bundle.json``; sections are plain dicts where their content is open-ended."""

    kind: Kind
    created_by: dict[str, Any]
    graphs: dict[str, GraphSpec]
    files: dict[str, FileEntry]
    model: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    audio: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    t2s: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    support: dict[str, Any] = field(default_factory=dict)
    """Voice bundles: which support bundle (HuBERT/BERT/SV) they need, by relative path."""
    parity: dict[str, Any] = field(default_factory=dict)
    """The exporter's parity checks: each check's value, limit and outcome."""
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
        """Parse and check a manifest dict.

        Raises:
            BundleError: not a gsv bundle, a newer major format, or malformed.
        """
        if d.get("format") != FORMAT:
            raise BundleError(f"{where}: not a gsv bundle manifest (format={d.get('format')!r})")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise BundleError(f"{where}: format_version missing or not an integer")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format {version} is newer than this runtime reads "
                f"({FORMAT_VERSION}); upgrade gsv-rt"
            )
        try:
            manifest = cls(
                kind=d["kind"],
                created_by=dict(d.get("created_by", {})),
                graphs={k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()},
                files={
                    _typed(k, str): FileEntry(
                        _typed(v["sha256"], str), _typed(v["size_bytes"], int)
                    )
                    for k, v in d["files"].items()
                },
                model=dict(d.get("model", {})),
                source=dict(d.get("source", {})),
                audio=dict(d.get("audio", {})),
                text=dict(d.get("text", {})),
                t2s=dict(d.get("t2s", {})),
                sampling=dict(d.get("sampling", {})),
                support=dict(d.get("support", {})),
                parity=dict(d.get("parity", {})),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{where}: malformed manifest ({exc!r})") from None
        manifest.check_values(where)
        return manifest

    def check_values(self, where: str = MANIFEST_NAME) -> None:
        """Numeric fields within sane ranges, before anything is sized from them.

        Raises:
            BundleError: naming the field and its value.
        """
        checks: list[tuple[str, Any, float, float]] = [
            ("audio.sample_rate", self.audio.get("sample_rate", 32000), 8000, 192000),
            ("text.bert_dim", self.text.get("bert_dim", 1024), 1, 8192),
            ("t2s.max_tokens", self.t2s.get("max_tokens", 1500), 1, 100000),
            ("sampling.top_k", self.sampling.get("top_k", 15), 1, 1 << 20),
            ("sampling.top_p", self.sampling.get("top_p", 1.0), 1e-9, 1.0),
            ("sampling.temperature", self.sampling.get("temperature", 1.0), 0.0, 100.0),
            (
                "sampling.repetition_penalty",
                self.sampling.get("repetition_penalty", 1.35),
                1e-6,
                100.0,
            ),
            ("sampling.noise_scale", self.sampling.get("noise_scale", 0.5), 0.0, 10.0),
        ]
        for name, value, lo, hi in checks:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is None and name == "sampling.top_k":
                continue
            if not number or not math.isfinite(value) or not lo <= value <= hi:
                raise BundleError(
                    f"{where}: {name} must be a number in [{lo:g}, {hi:g}], got {value!r}"
                )
        for name, spec in self.graphs.items():
            for port in (*spec.inputs.values(), *spec.outputs.values()):
                for dim in port.shape:
                    if not (isinstance(dim, str) or (isinstance(dim, int) and 0 <= dim < 1 << 16)):
                        raise BundleError(f"{where}: graph {name} declares a bad dimension {dim!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, ``format`` first."""
        d = asdict(self)
        for g in d["graphs"].values():
            for spec in (*g["inputs"].values(), *g["outputs"].values()):
                spec["shape"] = list(spec["shape"])
            g["variants"] = list(g["variants"])
        return {"format": FORMAT, **d}


def _typed(value: Any, kind: type) -> Any:
    """``value`` if it is a ``kind`` (bool is not an int here), else TypeError."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: str | Path) -> Manifest:
    """Read ``bundle.json`` of a bundle directory.

    Raises:
        BundleError: the directory or manifest is missing or invalid.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    if not path.is_file():
        raise BundleError(f"{root}: not a gsv bundle (no {MANIFEST_NAME})")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    except RecursionError:
        raise BundleError(f"{path}: manifest nested too deeply") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: manifest is not a JSON object")
    return Manifest.from_dict(data, str(path))


def inside(root: str | Path, rel: Any, what: str = "file", *, parent_ok: bool = False) -> Path:
    """The one confinement rule for paths read from a manifest: ``rel`` is a relative path
    without ``..`` that resolves (symlinks followed) inside ``root`` — or, with ``parent_ok``,
    inside ``root``'s parent folder, where a voice finds its sibling support bundle — and is a
    regular file (``what="file"``) or a directory (``what="dir"``); never a FIFO or a device.

    Raises:
        BundleError: naming the path and the rule it breaks.
    """
    root = Path(root)
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise BundleError(f"{root}: bad {what} path {rel!r} in the manifest")
    candidate = Path(rel)
    parts = candidate.parts
    if candidate.is_absolute() or (".." in parts and not parent_ok) or parts.count("..") > 1:
        raise BundleError(f"{root}: {what} path {rel!r} must stay inside the bundle")
    base = (root.parent if parent_ok else root).resolve()
    try:
        resolved = (root / candidate).resolve(strict=True)
    except (OSError, RuntimeError):
        raise BundleError(f"{root}: missing {what} {rel}") from None
    if not resolved.is_relative_to(base):
        raise BundleError(f"{root}: {what} path {rel!r} leads outside the bundle")
    mode = resolved.stat().st_mode
    if (what == "dir" and not stat.S_ISDIR(mode)) or (what != "dir" and not stat.S_ISREG(mode)):
        raise BundleError(f"{root}: {rel} is not a regular {what}")
    return resolved


def check_files(root: str | Path, manifest: Manifest, verify_hashes: bool = False) -> None:
    """Check every listed file (confined, regular) exists with its size (fast) and,
    optionally, its sha256; every graph file must be listed.

    Raises:
        BundleError: naming the first missing, altered, unlisted or escaping file.
    """
    root = Path(root)
    for name, spec in manifest.graphs.items():
        for variant in spec.variants:
            if variant.path not in manifest.files:
                raise BundleError(
                    f"{root}: graph {name} file {variant.path!r} is not covered by the "
                    "manifest's hashes"
                )
    for rel, entry in manifest.files.items():
        path = inside(root, rel)
        if not isinstance(entry.size_bytes, int):
            raise BundleError(f"{root}: bad size for {rel} in the manifest")
        if path.stat().st_size != entry.size_bytes:
            raise BundleError(f"{root}: {rel} was altered (size differs from the manifest)")
        if verify_hashes and sha256_file(path) != entry.sha256:
            raise BundleError(f"{root}: {rel} was altered (sha256 differs from the manifest)")


def check_graph_io(name: str, spec: GraphSpec, inputs: Any, outputs: Any) -> None:
    """A compiled graph's input and output names must be the manifest's declaration.

    Raises:
        BundleError: naming the graph and both sides.
    """
    want, have = (set(spec.inputs), set(spec.outputs)), (set(inputs), set(outputs))
    if want != have:
        raise BundleError(
            f"{name}: graph I/O {sorted(have[0])} → {sorted(have[1])} does not match the "
            f"manifest {sorted(want[0])} → {sorted(want[1])}"
        )


FORMAT_OF_BACKEND: Final[dict[str, GraphFormat]] = {"onnxruntime": "onnx", "openvino": "openvino"}
"""The graph format each backend runs."""


class Bundle:
    """A bundle directory with its parsed manifest; hands out graph files and runners."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def load(cls, root: str | Path, verify_hashes: bool = False) -> Bundle:
        """Read the manifest and check the listed files (size always, sha256 on request).

        Raises:
            BundleError: missing/invalid manifest, newer format, missing or altered files.
        """
        root = Path(root)
        manifest = read_manifest(root)
        check_files(root, manifest, verify_hashes)
        return cls(root, manifest)

    def graph(self, name: str) -> GraphSpec:
        """The declaration of graph ``name``.

        Raises:
            BundleError: the bundle has no such graph.
        """
        try:
            return self.manifest.graphs[name]
        except KeyError:
            have = ", ".join(sorted(self.manifest.graphs)) or "none"
            raise BundleError(f"{self.root}: no graph {name!r} (has: {have})") from None

    def graph_path(self, name: str, backend: str, precision: str = "fp32") -> Path:
        """The file of graph ``name`` for a backend (onnxruntime → .onnx, openvino → .xml).

        Raises:
            BundleError: the bundle holds no such variant.
        """
        fmt = FORMAT_OF_BACKEND.get(backend)
        variant = self.graph(name).variant(fmt, precision) if fmt else None
        if variant is None:
            held = ", ".join(f"{v.format}/{v.precision}" for v in self.graph(name).variants)
            raise BundleError(
                f"{self.root}: graph {name!r} has no {backend} {precision} variant (has: {held})"
            )
        return inside(self.root, variant.path)
