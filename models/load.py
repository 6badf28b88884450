"""Build the PyTorch reference network of a loaded checkpoint, with a strict key check."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gsv_models.checkpoint import Checkpoint, Kind, check_weights_fit, load_checkpoint
from gsv_models.config import SoVITSConfig, T2SConfig
from gsv_runtime.errors import CheckpointError


def _construct(ckpt: Checkpoint) -> nn.Module:
    if ckpt.kind == "gpt":
        from gsv_models.t2s import T2SModel

        assert isinstance(ckpt.config, T2SConfig)
        return T2SModel(ckpt.config)
    if ckpt.kind == "sovits" and not isinstance(ckpt.config, SoVITSConfig):
        from gsv_models.sovits_v3 import SoVITSV3Config, SoVITSV3Model

        assert isinstance(ckpt.config, SoVITSV3Config)
        return SoVITSV3Model(ckpt.config)
    if ckpt.kind == "sovits":
        from gsv_models.sovits import SoVITSModel

        assert isinstance(ckpt.config, SoVITSConfig)
        return SoVITSModel(ckpt.config)
    from gsv_models.sv import ERes2NetV2

    try:
        return ERes2NetV2(**ERes2NetV2.kwargs_from_state_dict(ckpt.state_dict))
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{ckpt.path}: speaker model lacks weight {exc}") from None


def build_model(ckpt: Checkpoint) -> nn.Module:
    """The eval-mode network of ``ckpt`` with its weights; every key must match.

    The network is first laid out on torch's ``meta`` device (no memory) and compared with the
    weights present, so a config that declares a huge network fails before anything is
    allocated.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped weights (names the first few).
    """
    try:
        with torch.device("meta"):
            expected = _construct(ckpt).state_dict()
    except CheckpointError:
        raise
    except Exception as exc:  # a config the network cannot be built from
        raise CheckpointError(f"{ckpt.path}: config does not describe a network ({exc})") from None
    check_weights_fit(
        ckpt.path, f"{ckpt.version.value} {ckpt.kind} network", expected, ckpt.state_dict
    )
    model = _construct(ckpt)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()


def load_model(
    path: str | Path, kind: Kind | None = None, base: str | Path | None = None
) -> tuple[Checkpoint, nn.Module]:
    """Load a checkpoint file and build its network (see :func:`build_model`).

    ``base`` is the full model a LoRA fine-tune merges into (see :func:`load_checkpoint`).
    """
    ckpt = load_checkpoint(path, kind, base)
    return ckpt, build_model(ckpt)
