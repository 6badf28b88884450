"""v3/v4/v5 LoRA fine-tunes: which weights upstream saves, and their offline merge into the base.

Upstream (``GPT_SoVITS/s2_train_v3_lora.py``, for v5 too since 3b95794) wraps ``net_g.cfm``
with peft ``LoraConfig(target_modules=["to_k", "to_q", "to_v", "to_out.0"], r=rank,
lora_alpha=rank)`` and saves every state-dict entry that is not a frozen parameter: the LoRA
factors, the trainable modules outside the CFM, and all buffers (the codebook and the rotary
frequencies). At inference (``TTS_infer_pack/TTS.py::init_vits_weights``) it loads the
pretrained base, loads the LoRA file over it and calls ``merge_and_unload()``, which for each
targeted Linear computes ``W + (B @ A) · alpha / r``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import torch

PEFT_PREFIX: Final = "cfm.base_model.model."
"""Where peft moves the CFM's keys; stripped to get the plain ``cfm.`` keys."""
LORA_TARGETS: Final = ("to_q", "to_k", "to_v", "to_out.0")
"""Module-name suffixes peft targets: every attention projection of every DiT block."""
LORA_ALPHA_OVER_RANK: Final = 1.0
"""Upstream trains with ``lora_alpha = r``, so the merge scale is 1 (files store only the rank)."""
TRAINED_PREFIXES: Final = ("ref_enc.", "bridge.", "wns1.", "linear_mel.")
"""Parameters outside the CFM that the LoRA trainer leaves trainable (``freeze_quantizer`` freezes
``ssl_proj``, ``quantizer`` and ``enc_p``)."""
BUFFER_KEYS: Final = (
    "quantizer.vq.layers.0._codebook.inited",
    "quantizer.vq.layers.0._codebook.cluster_size",
    "quantizer.vq.layers.0._codebook.embed",
    "quantizer.vq.layers.0._codebook.embed_avg",
    "cfm.estimator.rotary_embed.inv_freq",
)
"""Buffers, which the trainer saves because only frozen *parameters* are left out."""
_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.default\.weight$")


def is_lora_state(state: Mapping[str, object]) -> bool:
    """Whether the keys are those of a peft-wrapped CFM (a LoRA file)."""
    return any(k.startswith(PEFT_PREFIX) for k in state)


def _targeted(module: str) -> bool:
    return module.startswith("cfm.estimator.transformer_blocks.") and module.endswith(
        tuple("." + t for t in LORA_TARGETS)
    )


def split_lora_state(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A LoRA file's weights → ``(plain weights, {module: (A, B)})`` under plain ``cfm.`` keys.

    Raises:
        ValueError: a factor of an untargeted module, or an A without its B (or vice versa).
    """
    plain: dict[str, torch.Tensor] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = "cfm." + key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        name = name.replace(".base_layer.", ".")  # a wrapped layer's own weights, if saved
        match = _FACTOR.match(name)
        if match is None:
            plain[name] = value
            continue
        module = match["module"]
        if not _targeted(module):
            raise ValueError(f"LoRA factor for {module}, which upstream's LoRA does not target")
        factors.setdefault(module, {})[match["which"]] = value
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA factors of {module} are incomplete (have {sorted(ab)})")
        pairs[module] = (ab["A"], ab["B"])
    return plain, pairs


def merge_lora(
    base: Mapping[str, torch.Tensor],
    lora: Mapping[str, torch.Tensor],
    rank: int,
) -> dict[str, torch.Tensor]:
    """The fine-tuned state: ``base`` overlaid with the LoRA file's weights, factors merged.

    Both states use upstream key names (weight-normed pairs as stored) in fp32; the result has
    exactly ``base``'s keys. Every targeted Linear of the DiT must have its factors.

    Raises:
        ValueError: a LoRA weight the base lacks or of another shape, missing or mis-shaped
            factors, or a rank that disagrees with the factors.
    """
    plain, pairs = split_lora_state(lora)
    unknown = sorted(set(plain) - set(base))
    if unknown:
        raise ValueError(f"{len(unknown)} LoRA weights are not in the base, e.g. {unknown[:3]}")
    for key, value in plain.items():
        if value.shape != base[key].shape:
            raise ValueError(
                f"LoRA weight {key} is {list(value.shape)}, the base's {list(base[key].shape)}"
            )
    targets = sorted({k.rpartition(".")[0] for k in base if _targeted(k.rpartition(".")[0])})
    missing = sorted(set(targets) - set(pairs))
    if missing:
        raise ValueError(f"{len(missing)} targeted layers lack LoRA factors, e.g. {missing[:3]}")
    merged = {**base, **plain}
    for module, (a, b) in pairs.items():
        weight = base[module + ".weight"]
        out_f, in_f = weight.shape
        if a.shape != (rank, in_f) or b.shape != (out_f, rank):
            raise ValueError(
                f"LoRA factors of {module} are A {list(a.shape)}, B {list(b.shape)}; expected "
                f"A [{rank}, {in_f}], B [{out_f}, {rank}] for rank {rank}"
            )
        merged[module + ".weight"] = weight + (b @ a) * LORA_ALPHA_OVER_RANK
    return merged


def _peft_key(key: str) -> str:
    return PEFT_PREFIX + key[len("cfm.") :] if key.startswith("cfm.") else key


def lora_file_state(
    state: Mapping[str, torch.Tensor], factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """What upstream's LoRA trainer saves from a fine-tuned ``state`` (upstream keys) + factors.

    Entries keep ``state``'s order; each targeted layer's ``lora_A``/``lora_B`` take the place
    of its (frozen, unsaved) weight.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module = key.rpartition(".")[0]
        if key.startswith(TRAINED_PREFIXES) or key in BUFFER_KEYS:
            out[_peft_key(key)] = value
        elif module in factors and key == module + ".weight":
            a, b = factors[module]
            out[_peft_key(module) + ".lora_A.default.weight"] = a
            out[_peft_key(module) + ".lora_B.default.weight"] = b
    return out
