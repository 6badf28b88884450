"""Import upstream GPT-SoVITS modules from a local checkout, as a parity oracle.

Upstream code is never part of this project: tests marked ``upstream`` run only when the
environment variable GSV_UPSTREAM_DIR names a checkout of RVC-Boss/GPT-SoVITS (the folder
that contains ``GPT_SoVITS/``) and are skipped otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

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


V5_ENV_VAR = "GSV_UPSTREAM_V5_DIR"
V5_FILES = ("GPT_SoVITS/module/v5_inference.py", "GPT_SoVITS/f5_tts/model/backbones/dit.py")
"""Files a v5 oracle tree has newer than GSV_UPSTREAM_DIR's snapshot: upstream's checkout
with ``v5_inference.py`` and ``dit.py`` (``use_step_embedding``) of commit ac846f5 or later."""


def import_upstream_v5(relpath: str, name: str) -> ModuleType:
    """Import one file of the v5 oracle tree (GSV_UPSTREAM_V5_DIR) under a private module name,
    so that it never shadows the older snapshot's module of the same name; skip without it."""
    root = os.environ.get(V5_ENV_VAR)
    if not root:
        pytest.skip(f"{V5_ENV_VAR} is not set (no upstream v5 tree to compare against)")
    missing = [f for f in V5_FILES if not (Path(root) / f).is_file()]
    if missing:
        pytest.skip(f"{V5_ENV_VAR}={root} lacks upstream's v5 files {missing}")
    if name in sys.modules:
        return sys.modules[name]
    for p in (Path(root) / "GPT_SoVITS", Path(root)):  # for the file's own imports
        if str(p) not in sys.path:
            sys.path.append(str(p))
    spec = importlib.util.spec_from_file_location(name, Path(root) / relpath)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def upstream_dit_args(cfg: Any) -> dict[str, Any]:
    """Keyword arguments of upstream's ``DiT`` for our ``SoVITSV3Config`` ``cfg``."""
    d = cfg.dit
    return {
        "dim": d.dim,
        "depth": d.depth,
        "heads": d.heads,
        "dim_head": d.dim_head,
        "ff_mult": d.ff_mult,
        "mel_dim": d.mel_dim,
        "text_dim": cfg.feature_dim,
        "conv_layers": d.conv_layers,
    }


def upstream_bigvgan(model_dir: Path, remove_weight_norm: bool = True) -> Any:
    """Upstream's BigVGAN loaded from a local model folder by its own loader.

    ``BigVGAN._from_pretrained`` is called directly: huggingface_hub's newer ``from_pretrained``
    no longer passes the two download arguments upstream's signature requires, and a local
    folder downloads nothing."""
    bigvgan = import_upstream("BigVGAN.bigvgan").BigVGAN
    net = bigvgan._from_pretrained(
        model_id=str(model_dir),
        revision=None,
        cache_dir=None,
        force_download=False,
        proxies=None,
        resume_download=False,
        local_files_only=True,
        token=None,
    )
    if remove_weight_norm:
        net.remove_weight_norm()
    return net.eval()


def upstream_lora_config(rank: int) -> Any:
    """peft's config as upstream builds it for a LoRA of ``rank`` (``s2_train_v3_lora.py``
    trains with it, ``TTS.init_vits_weights`` wraps the CFM with it before merging)."""
    from peft import LoraConfig

    return LoraConfig(
        target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        r=rank,
        lora_alpha=rank,
        init_lora_weights=True,
    )
