"""Load the support models of GPT-SoVITS from a user's local Hugging Face folders, offline.

* HuBERT (``chinese-hubert-base``): upstream ``GPT_SoVITS/feature_extractor/cnhubert.py`` loads a
  ``HubertModel`` and a ``Wav2Vec2FeatureExtractor``, but every inference path
  (``TTS_infer_pack/TTS.py::_set_prompt_semantic``, ``inference_webui.py``) calls
  ``cnhubert.model(wav16k[None])`` directly, so the extractor's zero-mean/unit-variance
  normalisation is bypassed: the raw 16 kHz waveform goes in, with no attention mask.
* BERT (``chinese-roberta-wwm-ext-large``): ``AutoModelForMaskedLM`` with
  ``output_hidden_states=True``; the feature is ``hidden_states[-3]``
  (``TTS_infer_pack/TextPreprocessor.py::get_bert_feature``).

Loading never contacts the Hugging Face hub (``local_files_only=True`` on a local folder) and
never unpickles code: ``pytorch_model.bin`` goes through transformers'
``load_state_dict(weights_only=True)`` (``torch.load(..., weights_only=True)``), safetensors
files through safetensors. Weights are always materialised in float32, whatever the folder's
``torch_dtype`` says (the real files are fp16, and transformers 5 would otherwise keep them so).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Final

import torch
from torch import Tensor, nn

from gsv_runtime.errors import CheckpointError

_LOGGER = logging.getLogger(__name__)

WEIGHT_FILES: Final = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""Weight files transformers reads from a folder, in its order of preference."""
BERT_LAYER: Final = -3
"""Index into ``hidden_states`` (embeddings + one entry per layer) that upstream uses."""
_IGNORABLE_MISSING: Final = ("masked_spec_embed", "cls.predictions.decoder")
"""Parameters a folder may lack without changing the features (training-only or tied)."""


def _read_config(folder: Path, expected: str, what: str) -> dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such {what} folder")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: not a Hugging Face model folder (no config.json); point to the {what} "
            "folder of GPT_SoVITS/pretrained_models"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != expected:
        found = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise CheckpointError(
            f"{folder}: expected a {expected} model ({what}), but config.json says "
            f"model_type={found!r}"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(
            f"{folder}: no weights (expected pytorch_model.bin or model.safetensors next to "
            "config.json)"
        )
    return cfg


def _load_error(folder: Path, what: str, exc: Exception) -> CheckpointError:
    """One line for a failure inside ``from_pretrained`` (transformers' messages are long)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        why = f"it would import {found.group(1)}" if found else "it is not a plain tensor file"
        return CheckpointError(
            f"{folder}: refused to load the {what} weights ({why}; only weights_only-safe "
            "pickles and safetensors are read)"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return CheckpointError(
        f"{folder}: cannot load the {what} weights ({lines[0] if lines else type(exc).__name__})"
    )


def _from_pretrained(cls: Any, folder: Path, what: str) -> nn.Module:
    """``cls.from_pretrained`` offline, in float32 with eager attention; unfit weights refused."""
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # no tqdm bars and no load-report tables from a library
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(
            str(folder),
            local_files_only=True,
            dtype=torch.float32,
            attn_implementation="eager",
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below, in one line
        )
    except Exception as exc:  # pickle, safetensors, shape and config errors of transformers
        raise _load_error(folder, what, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar_was_on:
            hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(_IGNORABLE_MISSING)]
    mismatched = [
        f"{key} {list(ckpt)} vs {list(want)}" for key, ckpt, want in info.get("mismatched_keys", [])
    ]
    if missing or mismatched:
        raise CheckpointError(
            f"{folder}: the weights do not fit config.json ({len(missing)} missing, e.g. "
            f"{sorted(missing)[:3]}; {len(mismatched)} mis-shaped, e.g. {sorted(mismatched)[:2]})"
        )
    unexpected = list(info.get("unexpected_keys", []))
    if unexpected:
        _LOGGER.debug(
            "%s: ignoring %d unused weights, e.g. %s", folder, len(unexpected), unexpected[:3]
        )
    return model.float().eval()


def load_hubert(folder: str | Path) -> nn.Module:
    """The ``HubertModel`` of a local ``chinese-hubert-base`` folder, eval mode, float32.

    Args:
        folder: Holds config.json (model_type "hubert") and pytorch_model.bin or
            model.safetensors.

    Raises:
        CheckpointError: missing folder or files, another model type, or weights that do not fit.
    """
    from transformers import HubertModel

    folder = Path(folder)
    _read_config(folder, "hubert", "chinese-hubert-base")
    return _from_pretrained(HubertModel, folder, "HuBERT")


def load_bert(folder: str | Path) -> nn.Module:
    """The ``BertForMaskedLM`` of a local ``chinese-roberta-wwm-ext-large`` folder, float32.

    Args:
        folder: Holds config.json (model_type "bert"), the weights and tokenizer.json.

    Raises:
        CheckpointError: missing folder or files, another model type, or weights that do not fit.
    """
    from transformers import BertForMaskedLM

    folder = Path(folder)
    cfg = _read_config(folder, "bert", "chinese-roberta-wwm-ext-large")
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{folder}: no tokenizer.json (the runtime tokenizes with it; it ships with "
            "chinese-roberta-wwm-ext-large)"
        )
    if int(cfg.get("num_hidden_layers", 0)) < -BERT_LAYER - 1:
        raise CheckpointError(f"{folder}: BERT needs at least 2 layers for hidden_states[-3]")
    return _from_pretrained(BertForMaskedLM, folder, "BERT")


@torch.no_grad()
def hubert_features(model: nn.Module, wav16k: Tensor) -> Tensor:
    """Upstream's content features: raw 16 kHz waveform [B, N] → [B, 768, T50], no mask.

    Mirrors ``TTS.py::_set_prompt_semantic``: ``model(wav)["last_hidden_state"].transpose(1, 2)``
    (the caller appends upstream's 0.6 s of zeros before this).
    """
    return model(wav16k)["last_hidden_state"].transpose(1, 2)


@torch.no_grad()
def bert_hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
) -> Tensor:
    """``hidden_states[-3]`` of the masked-LM model: [B, T] ids → [B, T, hidden]."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        output_hidden_states=True,
    )
    return out.hidden_states[BERT_LAYER]
