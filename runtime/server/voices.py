"""The voices a server offers: a TOML file, or every voice saved in the bundles named on the
command line.

.. code-block:: toml

    [voices.alice]                 # the name clients ask for
    bundle = "bundles/alice"       # voice bundle (relative to this file)
    saved = "calm"                 # a voice saved in it with `gsv voice add` ...
    # ref_audio = "refs/alice.wav" # ... or a reference clip + its transcript
    # prompt_text = "参考音频说的话。"
    # prompt_lang = "zh"
    [voices.alice.options]         # default options (upstream names), overridable per request
    top_k = 10
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsv_runtime.bundle import Bundle
from gsv_runtime.config import RuntimeConfig, SynthesisConfig
from gsv_runtime.engine import VoiceModel
from gsv_runtime.errors import InputError
from gsv_runtime.voice import Voice, saved_voices

_KEYS = {"bundle", "saved", "ref_audio", "prompt_text", "prompt_lang", "options"}


@dataclass
class ServerVoice:
    """One voice clients can name: the model that runs it and how to prepare it."""

    name: str
    model: str
    """Engine model name (the bundle's folder)."""
    voice: Voice | None = None
    """A prepared (saved) voice, or None to prepare ``ref_audio`` per request."""
    ref_audio: Path | None = None
    prompt_text: str = ""
    prompt_lang: str = "zh"
    options: dict[str, Any] = field(default_factory=dict)


ModelOpener = Callable[[Path], Any]
"""Bundle folder → the model object the engine runs (a ``VoiceModel`` in one process)."""


@dataclass
class VoiceCatalog:
    """Loaded models by name and the voices on them."""

    models: dict[str, Any] = field(default_factory=dict)
    voices: dict[str, ServerVoice] = field(default_factory=dict)
    default: str | None = None
    """The voice used when a request names none (api_v2 requests name a reference instead)."""
    open_model: ModelOpener | None = None
    """How this catalog opened its bundles; ``/set_*_weights`` opens new ones the same way."""


def _model_name(bundle: Path) -> str:
    return bundle.resolve().name


def load_catalog(
    voices_file: Path | None,
    bundles: list[Path],
    runtime: RuntimeConfig,
    open_model: ModelOpener | None = None,
) -> VoiceCatalog:
    """Open every bundle once (default: compile it here) and list the voices.

    Raises:
        InputError: an unreadable or malformed voices file, a voice with neither a saved voice
            nor a reference, an unknown option.
        BundleError, BackendError: a bundle that cannot run here.
    """
    catalog = VoiceCatalog(
        open_model=open_model
        or (lambda b: VoiceModel(Bundle.load(b), runtime, warm_up=first_prompt(b)))
    )

    def model_for(bundle: Path) -> str:
        name = _model_name(bundle)
        if name not in catalog.models:
            catalog.models[name] = catalog.open_model(bundle)
        return name

    for bundle in bundles:
        model = model_for(bundle)
        for saved in saved_voices(bundle):
            name = saved if saved not in catalog.voices else f"{model}/{saved}"
            catalog.voices[name] = ServerVoice(name, model, Voice.load(bundle, saved))
    if voices_file is not None:
        try:
            table = tomllib.loads(voices_file.read_text(encoding="utf-8")).get("voices", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"{voices_file}: unreadable voices file ({exc})") from None
        if not isinstance(table, dict):
            raise InputError(f"{voices_file}: [voices] must be a table of voices")
        base = voices_file.parent
        for name, entry in table.items():
            catalog.voices[name] = _entry(name, entry, base, model_for, voices_file)
    catalog.default = next(iter(catalog.voices), None)
    return catalog


def _entry(name: str, entry: Any, base: Path, model_for: Any, where: Path) -> ServerVoice:
    if not isinstance(entry, dict) or "bundle" not in entry:
        raise InputError(f"{where}: voice {name!r} needs a bundle")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise InputError(f"{where}: voice {name!r} has unknown keys {unknown}")
    bundle = base / str(entry["bundle"])
    model = model_for(bundle)
    options = dict(entry.get("options", {}))
    SynthesisConfig.from_options(**options)  # unknown or out-of-range options fail here
    if "saved" in entry:
        return ServerVoice(name, model, Voice.load(bundle, str(entry["saved"])), options=options)
    if "ref_audio" not in entry:
        raise InputError(f"{where}: voice {name!r} needs saved or ref_audio")
    return ServerVoice(
        name,
        model,
        None,
        base / str(entry["ref_audio"]),
        str(entry.get("prompt_text", "")),
        str(entry.get("prompt_lang", "zh")),
        options,
    )


def first_prompt(bundle: Path) -> tuple[str, str] | None:
    """(prompt text, language) of the first voice saved in ``bundle``, if any: what a server
    prepares a model for while it loads (``VoiceModel(warm_up=...)``), so that its first
    request does not pay 1-3 s of dictionaries and BERT loading."""
    for name in saved_voices(bundle):
        voice = Voice.load(bundle, name)
        if voice.prompt_text.strip():
            return voice.prompt_text, voice.prompt_lang
    return None
