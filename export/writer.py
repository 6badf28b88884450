"""Write a bundle atomically: graphs into a temporary sibling directory, manifest last, rename.

A failed export (bad input, parity failure, full disk) leaves nothing at the destination.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gsv_runtime import __version__
from gsv_runtime.bundle import (
    MANIFEST_NAME,
    FileEntry,
    GraphSpec,
    Kind,
    Manifest,
    read_manifest,
    sha256_file,
)
from gsv_runtime.errors import BundleError, GsvError, InputError


def created_by() -> dict[str, Any]:
    """Exporter and library versions recorded in every manifest."""
    import onnx
    import torch

    info: dict[str, Any] = {
        "gsv_rt": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
    }
    try:
        import openvino

        info["openvino"] = openvino.__version__
    except ImportError:
        pass
    return info


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        try:
            read_manifest(out)
        except BundleError:
            raise BundleError(
                f"{out}: exists, is not empty and is not a gsv bundle; refusing to overwrite it"
            ) from None


VOICE_POLICIES = ("refuse", "keep", "drop")


def _saved_voices(out: Path) -> list[str]:
    folder = out / "voices"
    if not folder.is_dir() or folder.is_symlink():
        return []
    return sorted(p.parent.name for p in folder.glob("*/voice.json"))


def check_voices(out: Path, voices: str) -> list[str]:
    """The saved voices of the bundle at ``out`` (if any) that ``voices`` allows to go on.

    Raises:
        BundleError: ``out`` is not a bundle, or holds saved voices and ``voices`` is
            ``refuse``.
        InputError: an unknown policy.
    """
    if voices not in VOICE_POLICIES:
        raise InputError(f"voices must be one of {', '.join(VOICE_POLICIES)}, got {voices!r}")
    _check_destination(out)
    saved = _saved_voices(out) if out.is_dir() else []
    if saved and voices == "refuse":
        raise BundleError(
            f"{out} holds saved voices ({', '.join(saved)}); export with --voices keep to "
            "carry them over or --voices drop to discard them"
        )
    return saved


@contextmanager
def staging_dir(out: Path, voices: str = "refuse") -> Iterator[Path]:
    """A temporary directory beside ``out``; on success it replaces ``out`` in one rename.

    An existing bundle at ``out`` is replaced; any other non-empty path is refused first. Its
    saved voices are carried over (``voices="keep"``), dropped (``"drop"``), or, by default,
    the export is refused before any work so that nobody loses them unawares.

    Raises:
        BundleError: ``out`` is a file, a non-bundle directory, or a bundle with saved voices
            under ``voices="refuse"``; or the disk is full.
        InputError: an unknown ``voices`` policy.
    """
    out = out.resolve()
    saved = check_voices(out, voices)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle is an ordinary folder
    try:
        yield tmp
        if saved and voices == "keep":
            shutil.copytree(out / "voices", tmp / "voices", symlinks=True)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"{out}: could not write the bundle ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(
    root: Path, kind: Kind, graphs: dict[str, GraphSpec], **sections: dict[str, Any]
) -> Manifest:
    """Hash every file under ``root`` and write ``bundle.json`` (the last file of a bundle)."""
    files = {
        p.relative_to(root).as_posix(): FileEntry(sha256_file(p), p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    for name, spec in graphs.items():
        for variant in spec.variants:
            if variant.path not in files:
                raise GsvError(f"graph {name}: {variant.path} was not written")
    manifest = Manifest(kind=kind, created_by=created_by(), graphs=graphs, files=files, **sections)
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False)
    (root / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")
    return manifest
