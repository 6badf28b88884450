"""gsv_models: PyTorch reference networks of GPT-SoVITS and upstream checkpoint I/O."""

from gsv_models.checkpoint import Checkpoint, load_checkpoint
from gsv_models.config import SoVITSConfig, T2SConfig
from gsv_models.load import build_model, load_model
from gsv_models.sovits import SoVITSModel
from gsv_models.sovits_v3 import SoVITSV3Config, SoVITSV3Model
from gsv_models.sv import ERes2NetV2
from gsv_models.t2s import T2SModel
from gsv_models.version import ModelVersion

__all__ = [
    "Checkpoint",
    "ERes2NetV2",
    "ModelVersion",
    "SoVITSConfig",
    "SoVITSModel",
    "SoVITSV3Config",
    "SoVITSV3Model",
    "T2SConfig",
    "T2SModel",
    "build_model",
    "load_checkpoint",
    "load_model",
]
