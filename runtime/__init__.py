"""gsv_runtime: the lean, torch-free GPT-SoVITS runtime.

``gsv_runtime.load(voice_dir, ...)`` returns a :class:`Synthesizer`. The heavy names load on first
use, so importing the package (and ``gsv --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gsv_runtime.errors import BackendError, BundleError, CheckpointError, GsvError, InputError

if TYPE_CHECKING:
    from gsv_runtime.bundle import Bundle
    from gsv_runtime.config import RuntimeConfig, SynthesisConfig
    from gsv_runtime.engine import (
        AudioChunk,
        AudioResult,
        Engine,
        EngineConfig,
        SynthesisRequest,
        VoiceModel,
    )
    from gsv_runtime.synthesizer import Synthesizer
    from gsv_runtime.voice import Voice

__version__ = "0.1.0"

_LAZY = {
    "AudioChunk": "gsv_runtime.engine",
    "AudioResult": "gsv_runtime.engine",
    "Engine": "gsv_runtime.engine",
    "EngineConfig": "gsv_runtime.engine",
    "SynthesisRequest": "gsv_runtime.engine",
    "VoiceModel": "gsv_runtime.engine",
    "Bundle": "gsv_runtime.bundle",
    "RuntimeConfig": "gsv_runtime.config",
    "SynthesisConfig": "gsv_runtime.config",
    "Synthesizer": "gsv_runtime.synthesizer",
    "Voice": "gsv_runtime.voice",
}

__all__ = [
    "AudioChunk",
    "AudioResult",
    "BackendError",
    "Bundle",
    "BundleError",
    "CheckpointError",
    "Engine",
    "EngineConfig",
    "GsvError",
    "InputError",
    "RuntimeConfig",
    "SynthesisConfig",
    "SynthesisRequest",
    "Synthesizer",
    "Voice",
    "VoiceModel",
    "__version__",
    "load",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gsv_runtime' has no attribute {name!r}")


def load(voice_dir: str, **kwargs: Any) -> Synthesizer:
    """Open a voice bundle: ``backend`` ("auto"/"onnxruntime"/"openvino"), ``device``,
    ``threads``, ``precision``, ``support`` (see :meth:`Synthesizer.load`)."""
    from gsv_runtime.synthesizer import Synthesizer

    return Synthesizer.load(voice_dir, **kwargs)
