"""A voice: everything synthesis needs from the reference, computed once and savable.

Holding the prompt's semantic tokens, phones, BERT features and the reference vector ``ge``
lets an edge device synthesize without HuBERT, BERT or the reference audio. Saved voices are a
JSON file plus an ``.npz`` read with ``allow_pickle=False``: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from gsv_runtime.errors import BundleError, InputError

VOICES_DIR: Final = "voices"
VOICE_FORMAT_VERSION: Final = 1
_ARRAYS: Final = ("prompt_tokens", "prompt_phones", "prompt_bert", "ge")
_OPTIONAL_ARRAYS: Final = ("ref_mel",)
MAX_ARRAY_BYTES: Final = 64 << 20
"""A saved voice's array larger than this (uncompressed) is refused before it is read."""
MAX_JSON_BYTES: Final = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Voice:
    """A prepared reference (one main clip, optionally averaged with auxiliary ones)."""

    prompt_tokens: np.ndarray
    """[P] int64 semantic tokens of the main reference (HuBERT → ssl_proj → codebook)."""
    prompt_phones: np.ndarray
    """[N] int64 phone ids of the prompt text."""
    prompt_bert: np.ndarray
    """[N, 1024] float32 BERT features of the prompt text (zeros for non-Chinese text)."""
    ge: np.ndarray
    """[R, gin, 1] float32 reference vectors, one per reference clip (averaged at decode)."""
    prompt_text: str = ""
    prompt_lang: str = ""
    symbols_version: str = "v2"
    name: str | None = None
    ref_mel: np.ndarray | None = None
    """v3/v4 (CFM) voices only: [n_mels, T] float32 natural-log mel of the main reference at
    the bundle's mel rate (``audio.mel``), the prompt the flow continues; None for v1–v2ProPlus."""

    @property
    def mean_ge(self) -> np.ndarray:
        """``ge`` averaged over the references, [1, gin, 1] (upstream's multi-reference rule)."""
        return self.ge.mean(axis=0, keepdims=True).astype(np.float32)

    def with_extra_references(self, ge: np.ndarray) -> Voice:
        """This voice with more references' ``ge`` ([R', gin, 1]) added to the average."""
        return Voice(
            self.prompt_tokens,
            self.prompt_phones,
            self.prompt_bert,
            np.concatenate([self.ge, ge.astype(np.float32)], axis=0),
            self.prompt_text,
            self.prompt_lang,
            self.symbols_version,
            self.name,
            self.ref_mel,
        )

    def save(self, bundle_root: str | Path, name: str) -> Path:
        """Store under ``<bundle>/voices/<name>/`` atomically; an existing voice is replaced.

        Raises:
            InputError: an invalid name.
        """
        if not _NAME.match(name):
            raise InputError(
                f"invalid voice name {name!r}: use 1–64 letters, digits, '_', '.', '-'"
            )
        root = Path(bundle_root)
        target = root / VOICES_DIR / name
        for path in (target.parent, target):
            if path.is_symlink():
                raise InputError(f"{path} is a symbolic link; refusing to write a voice there")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root.resolve()):
            raise InputError(f"{target.parent} leads outside the bundle {root}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
        meta = {
            "format_version": VOICE_FORMAT_VERSION,
            "name": name,
            "prompt_text": self.prompt_text,
            "prompt_lang": self.prompt_lang,
            "symbols_version": self.symbols_version,
        }
        (tmp / "voice.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
        np.savez(
            tmp / "arrays.npz",
            prompt_tokens=self.prompt_tokens,
            prompt_phones=self.prompt_phones,
            prompt_bert=self.prompt_bert,
            ge=self.ge,
            **({} if self.ref_mel is None else {"ref_mel": self.ref_mel}),
        )
        if target.exists():
            old = target.with_name(f".{name}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, bundle_root: str | Path, name: str) -> Voice:
        """Read a saved voice of a bundle.

        Raises:
            BundleError: no such voice, or a damaged one.
        """
        root = Path(bundle_root)
        folder = root / VOICES_DIR / name
        if not isinstance(name, str) or not _NAME.match(name) or not folder.is_dir():
            known = ", ".join(saved_voices(bundle_root)) or "none"
            raise BundleError(f"{bundle_root}: no voice {name!r} (saved voices: {known})")
        try:
            if not folder.resolve().is_relative_to(root.resolve()):
                raise ValueError("the voice folder leads outside the bundle")
            meta_path = folder / "voice.json"
            if meta_path.stat().st_size > MAX_JSON_BYTES:
                raise ValueError("voice.json is too large")
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("voice.json is not a JSON object")
            data = _read_arrays(folder / "arrays.npz")
            voice = cls(
                prompt_tokens=data["prompt_tokens"].astype(np.int64),
                prompt_phones=data["prompt_phones"].astype(np.int64),
                prompt_bert=data["prompt_bert"].astype(np.float32),
                ge=data["ge"].astype(np.float32),
                prompt_text=str(meta.get("prompt_text", "")),
                prompt_lang=str(meta.get("prompt_lang", "")),
                symbols_version=str(meta.get("symbols_version", "v2")),
                name=name,
                ref_mel=data["ref_mel"].astype(np.float32) if "ref_mel" in data else None,
            )
            version = meta.get("format_version", 0)
            if not isinstance(version, int):
                raise ValueError(f"format_version {version!r} is not an integer")
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            RecursionError,
            zipfile.BadZipFile,
        ) as exc:
            raise BundleError(f"{folder}: damaged voice ({exc})") from None
        if version > VOICE_FORMAT_VERSION:
            raise BundleError(f"{folder}: voice format is newer than this runtime; upgrade gsv-rt")
        voice.check(str(folder))
        return voice

    def check(self, where: str = "voice") -> None:
        """Shapes and values consistent: 1-D ids, BERT rows per phone, finite ``ge``.

        Raises:
            BundleError: naming what is wrong.
        """
        problems = []
        if self.prompt_tokens.ndim != 1 or self.prompt_phones.ndim != 1:
            problems.append("prompt tokens and phones must be 1-D")
        elif self.prompt_bert.ndim != 2 or len(self.prompt_bert) != len(self.prompt_phones):
            problems.append("prompt_bert must have one row per prompt phone")
        if self.ge.ndim != 3 or self.ge.shape[0] < 1 or self.ge.shape[2] != 1:
            problems.append(f"ge must be [R, gin, 1], got {self.ge.shape}")
        if self.ref_mel is not None and (self.ref_mel.ndim != 2 or self.ref_mel.shape[1] < 1):
            problems.append(f"ref_mel must be [n_mels, T ≥ 1], got {self.ref_mel.shape}")
        elif self.ref_mel is not None and not np.isfinite(self.ref_mel).all():
            problems.append("non-finite ref_mel")
        if not (np.isfinite(self.ge).all() and np.isfinite(self.prompt_bert).all()):
            problems.append("non-finite values")
        if (
            self.prompt_tokens.size
            and not 0 <= self.prompt_tokens.min() <= self.prompt_tokens.max() < 1 << 16
        ):
            problems.append("prompt token ids out of range")
        if problems:
            raise BundleError(f"{where}: damaged voice ({'; '.join(problems)})")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The voice arrays, each member's uncompressed size checked before it is inflated."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.file_size > MAX_ARRAY_BYTES:
                raise ValueError(f"{info.filename} inflates to {info.file_size} bytes")
    with np.load(path, allow_pickle=False) as arrays:
        required = {k: arrays[k] for k in _ARRAYS}  # a missing one raises KeyError
        return required | {k: arrays[k] for k in _OPTIONAL_ARRAYS if k in arrays.files}


def saved_voices(bundle_root: str | Path) -> list[str]:
    """Names of the voices saved in a bundle."""
    return sorted(p.parent.name for p in (Path(bundle_root) / VOICES_DIR).glob("*/voice.json"))
