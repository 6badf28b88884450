"""The serving engine: the one way requests run, under the Python API, the CLI and the server.

Thread rule: :class:`Engine`'s public methods (``submit``, ``add_model``, ``remove_model``,
``stats``, ``close``) and :class:`RequestHandle`'s (iteration, ``result``, ``cancel``) are safe
from any thread. Everything underneath — a :class:`VoiceModel`'s graphs, the GPT sessions, the
acoustic stage — belongs to exactly one engine thread: the frontend thread (reference
preparation, text, BERT/HuBERT/SV, the SoVITS prompt and reference graphs), one GPT thread per
model (its T2S decoder), and the acoustic thread (the decoders). Code outside the engine may call
a model's stages directly only while no engine is running requests on that model.
"""

from gsv_runtime.engine.engine import Engine, EngineConfig
from gsv_runtime.engine.handle import RequestHandle
from gsv_runtime.engine.model import SegmentInput, StageThreads, VoiceModel
from gsv_runtime.engine.request import AudioChunk, AudioResult, SynthesisRequest

__all__ = [
    "AudioChunk",
    "AudioResult",
    "Engine",
    "EngineConfig",
    "RequestHandle",
    "SegmentInput",
    "StageThreads",
    "SynthesisRequest",
    "VoiceModel",
]
