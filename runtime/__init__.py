"""gsv_runtime: the lean, torch-free GPT-SoVITS runtime."""

from gsv_runtime.errors import BackendError, BundleError, CheckpointError, GsvError, InputError

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BundleError",
    "CheckpointError",
    "GsvError",
    "InputError",
    "__version__",
]
