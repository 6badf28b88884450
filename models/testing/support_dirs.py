"""Random-weight stand-ins of the two Hugging Face support folders (HuBERT and BERT), for tests.

The real folders (``chinese-hubert-base``, ``chinese-roberta-wwm-ext-large``) cannot be
downloaded here. These writers reproduce their on-disk layout from the real configuration and
tokenizer files in ``gsv_models/testing/fixtures`` (or any folder holding them):

* ``config.json`` (the real one; "tiny" shrinks the width and depth only),
* ``pytorch_model.bin``: a plain ``torch.save`` state dict in **fp16**, with the key names that
  transformers 4.30 wrote (``encoder.pos_conv_embed.conv.weight_g``/``weight_v``,
  ``bert.embeddings.position_ids``), exactly like the files GPT-SoVITS ships. This exercises the
  same loading path as the real folders (``torch.load(weights_only=True)`` plus transformers'
  legacy key renaming); ``weights="safetensors"`` writes ``model.safetensors`` instead,
* ``preprocessor_config.json`` (HuBERT) and ``tokenizer.json`` (BERT), copied verbatim.

"tiny" keeps everything the export and runtime depend on: the HuBERT conv front-end (kernels and
strides, so 16 kHz in → 50 Hz out, hop 320), the positional conv (kernel 128, grouped; 4
groups of 16 channels instead of 16 of 48: OpenVINO's AMX bf16 kernel computes grouped
convolutions of 4–12 channels per group wrongly, e.g. 64 channels in 16 groups, cosine 0.002 to
f32, while 16 and 48 per group are right), the BERT vocabulary (21,128, so the real tokenizer
fits), 512 positions and more than two layers (so ``hidden_states[-3]`` is a real intermediate
layer).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Final, Literal

import torch

Size = Literal["tiny", "full"]
WeightsFormat = Literal["bin", "safetensors"]

FIXTURES: Final = Path(__file__).with_name("fixtures")
HUBERT_FIXTURE: Final = FIXTURES / "chinese-hubert-base"
BERT_FIXTURE: Final = FIXTURES / "chinese-roberta-wwm-ext-large"

_TINY_HUBERT: Final[dict[str, Any]] = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "conv_dim": [32] * 7,
    "num_conv_pos_embedding_groups": 4,
    "classifier_proj_size": 16,
}
_TINY_BERT: Final[dict[str, Any]] = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
}


def _config(fixture: Path, size: Size, tiny: dict[str, Any]) -> dict[str, Any]:
    cfg = json.loads((fixture / "config.json").read_text(encoding="utf-8"))
    if size == "tiny":
        cfg.update(tiny)
    elif size != "full":
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    return cfg


@torch.no_grad()
def _randomize_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter with well-scaled random values (activations stay O(1)).

    Matrices and kernels: normal with std 1/sqrt(fan_in); embeddings: std 0.5; norm scales around
    1 and biases small, so no LayerNorm/GroupNorm sees a constant input and outputs depend on
    the input everywhere. Weight-normed convolutions are handled by their effective weight.
    """
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            original = module.parametrizations.weight  # weight norm: original0 = g, original1 = v
            v = original.original1
            fan_in = v[0].numel()
            v.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            dims = [d for d in range(v.dim()) if v.shape[d] != original.original0.shape[d]]
            original.original0.copy_(v.norm(dim=dims, keepdim=True))
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0.0, 0.02, generator=generator)
    for name, param in model.named_parameters():
        if ".parametrizations." in name:  # weight-norm pairs, set above
            continue
        leaf = name.rsplit(".", 1)[-1]
        if "embeddings" in name and param.dim() == 2:
            param.normal_(0.0, 0.5, generator=generator)
        elif param.dim() >= 2:
            param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()), generator=generator)
        elif leaf == "weight":  # LayerNorm / GroupNorm scales
            param.uniform_(0.8, 1.2, generator=generator)
        else:  # biases, masked_spec_embed
            param.normal_(0.0, 0.02, generator=generator)


def _legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key names as transformers 4.x saved them (weight norm as ``weight_g``/``weight_v``)."""
    renamed = {}
    for key, value in state.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        renamed[key] = value
    return renamed


def _write_weights(
    out: Path, state: dict[str, torch.Tensor], weights: WeightsFormat, half: bool
) -> Path:
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous().clone()
        for k, v in state.items()
    }
    if weights == "bin":
        path = out / "pytorch_model.bin"
        torch.save(state, path)
    elif weights == "safetensors":
        from safetensors.torch import save_file

        path = out / "model.safetensors"
        save_file(state, str(path), metadata={"format": "pt"})
    else:
        raise ValueError(f"weights must be 'bin' or 'safetensors', got {weights!r}")
    return path


def _prepare(out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def make_hubert_dir(
    out: str | Path,
    size: Size = "tiny",
    seed: int = 0,
    weights: WeightsFormat = "bin",
    half: bool = True,
    fixture: str | Path = HUBERT_FIXTURE,
) -> Path:
    """Write a ``chinese-hubert-base``-like folder with random weights and return it.

    Args:
        out: The folder to create (or fill).
        size: "full" = the real architecture (95 M parameters); "tiny" = 2 narrow layers.
        seed: Seed of the weights.
        weights: "bin" (pytorch_model.bin, like the real folder) or "safetensors".
        half: Store fp16 weights, as the real file does.
        fixture: Folder with the real config.json and preprocessor_config.json.
    """
    from transformers import HubertConfig, HubertModel

    fixture = Path(fixture)
    out = _prepare(out)
    cfg = _config(fixture, size, _TINY_HUBERT)
    with torch.random.fork_rng(devices=[]):
        model = HubertModel(HubertConfig(**cfg))
    _randomize_(model, torch.Generator().manual_seed(seed))
    _write_weights(out, _legacy_keys(model.state_dict()), weights, half)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(fixture / "preprocessor_config.json", out / "preprocessor_config.json")
    return out


def make_bert_dir(
    out: str | Path,
    size: Size = "tiny",
    seed: int = 0,
    weights: WeightsFormat = "bin",
    half: bool = True,
    fixture: str | Path = BERT_FIXTURE,
) -> Path:
    """Write a ``chinese-roberta-wwm-ext-large``-like folder with random weights and return it.

    Args:
        out: The folder to create (or fill).
        size: "full" = the real architecture (24 layers, 1024 wide, 325 M parameters);
            "tiny" = 4 layers, 64 wide, same vocabulary and positions.
        seed: Seed of the weights.
        weights: "bin" (pytorch_model.bin, like the real folder) or "safetensors".
        half: Store fp16 weights, as the real file does.
        fixture: Folder with the real config.json and tokenizer.json.
    """
    from transformers import BertConfig, BertForMaskedLM

    fixture = Path(fixture)
    out = _prepare(out)
    cfg = _config(fixture, size, _TINY_BERT)
    with torch.random.fork_rng(devices=[]):
        model = BertForMaskedLM(BertConfig(**cfg))
    _randomize_(model, torch.Generator().manual_seed(seed))
    model.tie_weights()
    state = model.state_dict()
    # transformers 4.30 kept position_ids as a persistent buffer and did not save the tied decoder
    state.pop("cls.predictions.decoder.weight", None)
    state.pop("cls.predictions.decoder.bias", None)
    state["bert.embeddings.position_ids"] = torch.arange(cfg["max_position_embeddings"])[None]
    _write_weights(out, state, weights, half)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(fixture / "tokenizer.json", out / "tokenizer.json")
    return out
