"""Random-weight checkpoints in upstream's exact on-disk formats, for tests, demos and benchmarks.

No real weights can be downloaded here; these stand-ins have the real architecture ("full":
upstream's hyperparameters; "tiny": shrunk for fast tests) and a non-degenerate random init.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch

from gsv_models.checkpoint import save_gpt, save_sovits
from gsv_models.config import SoVITSConfig, T2SConfig
from gsv_models.version import ModelVersion

Size = Literal["tiny", "full"]

_FULL_SOVITS: dict[ModelVersion, SoVITSConfig] = {
    ModelVersion.V1: SoVITSConfig(version=ModelVersion.V1, n_symbols=322),
    ModelVersion.V2: SoVITSConfig(version=ModelVersion.V2),
    ModelVersion.V2PRO: SoVITSConfig(version=ModelVersion.V2PRO, gin_channels=1024),
    ModelVersion.V2PROPLUS: SoVITSConfig(
        version=ModelVersion.V2PROPLUS,
        gin_channels=1024,
        upsample_initial_channel=768,
        upsample_kernel_sizes=(20, 16, 8, 2, 2),
    ),
}
"""Upstream configs/s2.json, s2v2Pro.json and s2v2ProPlus.json."""


def _check_version(version: ModelVersion) -> None:
    if version not in _FULL_SOVITS:
        supported = ", ".join(v.value for v in _FULL_SOVITS)
        raise ValueError(f"random checkpoints exist for {supported}; got {version.value}")


def t2s_config(version: ModelVersion, size: Size) -> T2SConfig:
    """GPT config: v1 has 512 phone rows (s1longer.yaml), later versions 732."""
    _check_version(version)
    rows = 512 if version is ModelVersion.V1 else 732
    if size == "full":
        return T2SConfig(phoneme_vocab_size=rows)
    # bert_dim 64 pairs with the tiny BERT stand-in (gsv_models.testing.support_dirs)
    return T2SConfig(
        phoneme_vocab_size=rows, embedding_dim=64, hidden_dim=64, n_head=4, n_layer=2, bert_dim=64
    )


def sovits_config(version: ModelVersion, size: Size) -> SoVITSConfig:
    """SoVITS config of the version, full or shrunk."""
    _check_version(version)
    if size == "full":
        return _FULL_SOVITS[version]
    from gsv_models.testing.sovits_init import tiny_sovits_config

    return tiny_sovits_config(version)


def random_t2s(cfg: T2SConfig, seed: int) -> torch.nn.Module:
    """A GPT with non-degenerate random weights."""
    from gsv_models.t2s import T2SModel
    from gsv_models.testing.t2s_init import randomize_t2s_

    model = T2SModel(cfg).eval()
    randomize_t2s_(model, torch.Generator().manual_seed(seed))
    return model


def random_sovits(cfg: SoVITSConfig, seed: int) -> torch.nn.Module:
    """A SoVITS synthesizer with non-degenerate random weights."""
    from gsv_models.sovits import SoVITSModel
    from gsv_models.testing.sovits_init import randomize_sovits_

    model = SoVITSModel(cfg).eval()
    randomize_sovits_(model, torch.Generator().manual_seed(seed))
    return model


def random_sv(size: Size, seed: int) -> torch.nn.Module:
    """An ERes2NetV2 speaker model with non-degenerate random weights."""
    from gsv_models.sv import ERes2NetV2
    from gsv_models.testing.sv_init import randomize_sv_, tiny_sv_kwargs

    model = ERes2NetV2(**(tiny_sv_kwargs() if size == "tiny" else {})).eval()
    randomize_sv_(model, torch.Generator().manual_seed(seed))
    return model


def make_checkpoint(
    version: ModelVersion | str,
    kind: Literal["gpt", "sovits", "sv"],
    path: str | Path,
    size: Size = "tiny",
    seed: int = 0,
    half: bool = True,
) -> Path:
    """Write one random checkpoint of ``kind`` in upstream's format and return its path."""
    version = ModelVersion.parse(version) if isinstance(version, str) else version
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "gpt":
        cfg = t2s_config(version, size)
        save_gpt(path, cfg, random_t2s(cfg, seed).state_dict(), half=half)
    elif kind == "sovits":
        scfg = sovits_config(version, size)
        if scfg.version.is_pro and size == "tiny":
            scfg = replace(scfg, sv_dim=random_sv(size, seed).embed_dim)
        model = random_sovits(scfg, seed)
        save_sovits(path, scfg, model.state_dict(), half=half)
    else:
        torch.save(
            {
                k: v.half() if half and v.is_floating_point() else v
                for k, v in random_sv(size, seed).state_dict().items()
            },
            path,
        )
    return path


def make_voice_checkpoints(
    version: ModelVersion,
    out_dir: str | Path,
    size: Size = "tiny",
    seed: int = 0,
    half: bool = True,
) -> list[Path]:
    """gpt.ckpt + sovits.pth (+ sv.ckpt for v2Pro/v2ProPlus) of one random voice."""
    out = Path(out_dir)
    paths = [
        make_checkpoint(version, "gpt", out / "gpt.ckpt", size, seed, half),
        make_checkpoint(version, "sovits", out / "sovits.pth", size, seed + 1, half),
    ]
    if version.is_pro:
        paths.append(make_checkpoint(version, "sv", out / "sv.ckpt", size, seed + 2, half))
    return paths
