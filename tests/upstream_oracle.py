"""Import upstream GPT-SoVITS modules from a local checkout, as a parity oracle.

Upstream code is never part of this project: tests marked ``upstream`` run only when the
environment variable GSV_UPSTREAM_DIR names a checkout of RVC-Boss/GPT-SoVITS (the folder
that contains ``GPT_SoVITS/``) and are skipped otherwise.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ENV_VAR = "GSV_UPSTREAM_DIR"


def upstream_root() -> Path:
    """The checkout named by GSV_UPSTREAM_DIR, or skip the calling test."""
    root = os.environ.get(ENV_VAR)
    if not root:
        pytest.skip(f"{ENV_VAR} is not set (no upstream checkout to compare against)")
    path = Path(root)
    if not (path / "GPT_SoVITS").is_dir():
        pytest.fail(f"{ENV_VAR}={root} does not contain GPT_SoVITS/")
    return path


def import_upstream(name: str) -> ModuleType:
    """Import an upstream module by its in-repo name, e.g. ``"module.models"`` or ``"kaldi"``."""
    root = upstream_root()
    pkg = root / "GPT_SoVITS"
    # upstream imports itself three ways: "GPT_SoVITS.x", "x" and (eres2net) bare file names
    for p in (pkg / "eres2net", pkg, root):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    return importlib.import_module(name)
