"""gsv_models: PyTorch reference networks of GPT-SoVITS and upstream checkpoint I/O."""

from gsv_models.config import SoVITSConfig, T2SConfig
from gsv_models.version import ModelVersion

__all__ = ["ModelVersion", "SoVITSConfig", "T2SConfig"]
