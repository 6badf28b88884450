"""Read and write v3/v4/v5 SoVITS checkpoints: full files, and LoRA fine-tunes merged into a base.

On-disk format of upstream ``GPT_SoVITS/process_ckpt.py::savee``: a dict ``weight`` (fp16),
``config`` (the s2 hyperparameters, pickled as ``utils.HParams``), ``info`` and, for LoRA files,
``lora_rank``. Full files (``s2_train_v3.py``, the pretrained ``s2Gv3.pth``/``s2Gv4.pth``) keep
torch's ``PK`` header; LoRA files replace it with ``03`` (v3) or ``04`` (v4). v5 files carry
``07`` (v5dev) or ``08`` (v5turbo) whether full (the pretrained files; fine-tunes at upstream
ac846f5) or LoRA (fine-tunes from 3b95794 on); their peft-wrapped weights tell the two apart. v3
and v4 weights have the same shapes, so the version comes from the header tag, else the md5
upstream knows for its pretrained files, else the config's ``model.version``, else a DiT without
the step embedding means v5dev and anything else v3 (upstream's fallbacks).
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import torch

from gsv_models.checkpoint import (
    Checkpoint,
    HParams,
    _cast,
    _plain,
    _to_fp32,
    _upstream_hparams_module,
    read_payload,
)
from gsv_models.config import SoVITSConfig
from gsv_models.dit import DiTConfig, default_inv_freq
from gsv_models.lora import is_lora_state, merge_lora
from gsv_models.sovits import fold_weight_norm_state
from gsv_models.sovits_v3 import (
    FEATURE_UPSAMPLE,
    UPSTREAM_ONLY_PREFIXES,
    SoVITSV3Config,
    v3_weight_norm_prefixes,
)
from gsv_models.version import (
    HEADER_VERSIONS,
    LORA_HEADERS,
    LORA_TAGS,
    PRETRAINED_SOVITS_MD5,
    VERSION_HEADERS,
    ModelVersion,
)
from gsv_runtime.bundle import sha256_file
from gsv_runtime.errors import CheckpointError

MD5_PREFIX_BYTES: Final = 8192
_DIT: Final = "cfm.estimator."
_INV_FREQ: Final = _DIT + "rotary_embed.inv_freq"
_STEP_EMBED: Final = _DIT + "d_embed.time_mlp.0.weight"
_BASE_FILES: Final[dict[ModelVersion, str]] = {
    ModelVersion.V3: "GPT_SoVITS/pretrained_models/s2Gv3.pth",
    ModelVersion.V4: "GPT_SoVITS/pretrained_models/gsv-v4-pretrained/s2Gv4.pth",
    ModelVersion.V5DEV: "GPT_SoVITS/pretrained_models/gsv-v5-pretrained/s2Gv5dev.pth",
    ModelVersion.V5TURBO: "GPT_SoVITS/pretrained_models/gsv-v5-pretrained/s2Gv5turbo.pth",
}


def is_cfm_state(state: Mapping[str, Any]) -> bool:
    """Whether SoVITS weights belong to a v3/v4 (CFM) model, plain or peft-wrapped."""
    return any(k.startswith("cfm.") for k in state)


def _version(
    path: Path, header: bytes, raw: Mapping[str, Any], state: Mapping[str, Any]
) -> ModelVersion:
    tagged = HEADER_VERSIONS.get(header)
    declared = raw.get("model", {}).get("version") if isinstance(raw, Mapping) else None
    if tagged is not None:
        if tagged not in FEATURE_UPSAMPLE:
            raise CheckpointError(
                f"{path}: header tag {header.decode()} says {tagged.value} but the weights are "
                "a v3/v4 CFM model"
            )
        if declared in FEATURE_UPSAMPLE and declared != tagged.value:
            raise CheckpointError(
                f"{path}: header tag {header.decode()} says {tagged.value} but the config says "
                f"{declared}"
            )
        return tagged
    with path.open("rb") as f:
        known = PRETRAINED_SOVITS_MD5.get(hashlib.md5(f.read(MD5_PREFIX_BYTES)).hexdigest())
    if known is not None:
        return known
    if declared in FEATURE_UPSAMPLE:
        return ModelVersion(declared)
    return ModelVersion.V3 if _STEP_EMBED in state else ModelVersion.V5DEV


def _base_state(base: Path, version: ModelVersion) -> dict[str, torch.Tensor]:
    """fp32 weights of a full v3/v4 base file, which must be of ``version``."""
    payload, header = read_payload(base)
    weights = payload.get("weight")
    if not isinstance(weights, Mapping) or not is_cfm_state(weights):
        raise CheckpointError(f"{base}: not a v3/v4 SoVITS checkpoint (no cfm.* weights)")
    if header in LORA_HEADERS or is_lora_state(weights):
        raise CheckpointError(f"{base}: is itself a LoRA fine-tune, not a full base model")
    found = _version(base, header, _plain(payload.get("config")) or {}, weights)
    if found is not version:
        raise CheckpointError(
            f"{base}: the base is a {found.value} model but the LoRA fine-tune is {version.value}"
        )
    return _to_fp32(weights, base)


def _merged_state(
    path: Path,
    weights: dict[str, torch.Tensor],
    payload: Mapping[str, Any],
    version: ModelVersion,
    base: Path | None,
) -> tuple[dict[str, torch.Tensor], int]:
    rank = payload.get("lora_rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise CheckpointError(f"{path}: LoRA file has no valid lora_rank (found {rank!r})")
    if base is None:
        raise CheckpointError(
            f"{path}: a {version.value} LoRA fine-tune (rank {rank}) holds only its changes; "
            f"pass the model it extends (base=, gsv export --sovits-base): upstream's pretrained "
            f"{_BASE_FILES[version]}"
        )
    try:
        return merge_lora(_base_state(base, version), weights, rank), rank
    except ValueError as exc:
        raise CheckpointError(f"{path}: does not fit its base {base.name} ({exc})") from None


def _count(state: Mapping[str, Any], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def _dit_config(state: Mapping[str, torch.Tensor]) -> DiTConfig:
    """The DiT shape, read off the weights (upstream hard-codes it; test models shrink it)."""
    out_w = state[_DIT + "proj_out.weight"]
    mel, dim = out_w.shape
    text_dim = state[_DIT + "input_embed.proj.weight"].shape[1] - 2 * mel
    inner = state[_DIT + "transformer_blocks.0.attn.to_q.weight"].shape[0]
    dim_head = 2 * state[_INV_FREQ].shape[0] if _INV_FREQ in state else DiTConfig.dim_head
    if inner % dim_head:
        raise ValueError(f"attention width {inner} is not a multiple of dim_head {dim_head}")
    hidden = state[_DIT + "text_embed.text_blocks.0.pwconv1.weight"].shape[0]
    ff = state[_DIT + "transformer_blocks.0.ff.ff.0.0.weight"].shape[0]
    return DiTConfig(
        dim=dim,
        depth=_count(state, _DIT + "transformer_blocks."),
        heads=inner // dim_head,
        dim_head=dim_head,
        ff_mult=ff // dim,
        mel_dim=mel,
        text_dim=text_dim,
        conv_layers=_count(state, _DIT + "text_embed.text_blocks."),
        conv_mult=hidden // text_dim,
        freq_dim=state[_DIT + "time_embed.time_mlp.0.weight"].shape[1],
        step_embedding=_STEP_EMBED in state,
    )


def _config(raw: Mapping[str, Any], version: ModelVersion, state: Mapping) -> SoVITSV3Config:
    sovits = SoVITSConfig.from_upstream(raw, version, state["enc_p.text_embedding.weight"].shape[0])
    # upstream hard-codes these widths instead of storing them; a shrunk test model changes them
    sovits = replace(
        sovits,
        ssl_dim=state["ssl_proj.weight"].shape[0],
        mrte_hidden=state["enc_p.mrte.c_pre.weight"].shape[0],
        codebook_size=state["quantizer.vq.layers.0._codebook.embed"].shape[0],
    )
    return SoVITSV3Config(
        sovits=sovits,
        feature_dim=state["bridge.0.weight"].shape[0],
        wn_kernel=state["wns1.enc.in_layers.0.weight_v"].shape[-1],
        wn_layers=_count(state, "wns1.enc.in_layers."),
        dit=_dit_config(state),
    )


def load_sovits_v3(
    path: Path, payload: Mapping[str, Any], header: bytes, base: str | Path | None
) -> Checkpoint:
    """A v3/v4 SoVITS checkpoint; a LoRA fine-tune is merged into ``base`` (its full model).

    Raises:
        CheckpointError: incomplete config, LoRA without (or with a mismatched) base, a base
            given for a full file, or weights that disagree with the config.
    """
    raw = _plain(payload.get("config"))
    if not isinstance(raw, dict) or "model" not in raw or "data" not in raw:
        raise CheckpointError(f"{path}: SoVITS checkpoint has no config with 'data' and 'model'")
    weights = _to_fp32(payload["weight"], path)
    lora = is_lora_state(weights)
    if (header in LORA_HEADERS and not lora) or (lora and header not in LORA_TAGS.values()):
        what = "LoRA weights" if lora else "full weights"
        raise CheckpointError(f"{path}: header {header!r} does not match its {what}")
    version = _version(path, header, raw, weights)
    base = Path(base) if base is not None else None
    rank = None
    if lora:
        weights, rank = _merged_state(path, weights, payload, version, base)
    elif base is not None:
        raise CheckpointError(f"{path}: is a full {version.value} model; base= is for LoRA files")
    state = {k: v for k, v in weights.items() if not k.startswith(UPSTREAM_ONLY_PREFIXES)}
    if _INV_FREQ not in state:  # x-transformers versions that do not store it
        state[_INV_FREQ] = default_inv_freq(DiTConfig.dim_head)
    try:
        cfg = _config(raw, version, state)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: SoVITS config or weights incomplete ({exc})") from None
    if cfg.dit.step_embedding == version.is_v5:
        has = "has" if cfg.dit.step_embedding else "lacks"
        raise CheckpointError(
            f"{path}: a {version.value} model whose DiT {has} the step embedding (d_embed); "
            "v3/v4 DiTs have one, v5 DiTs none"
        )
    gin = state["ref_enc.fc.fc.weight"].shape[0]
    if gin != cfg.sovits.gin_channels:
        raise CheckpointError(
            f"{path}: config gin_channels {cfg.sovits.gin_channels} disagrees with the weights "
            f"({gin})"
        )
    try:
        state = fold_weight_norm_state(state, v3_weight_norm_prefixes(cfg))
    except KeyError as exc:
        raise CheckpointError(f"{path}: weight-norm pairs missing ({exc.args[0]})") from None
    except Exception as exc:  # a config the network cannot be laid out from
        raise CheckpointError(f"{path}: config does not describe a network ({exc})") from None
    ckpt = Checkpoint(path, "sovits", version, cfg, state, raw, payload.get("info"), header, "")
    ckpt.lora_rank = rank
    if base is not None:
        ckpt.base, ckpt.base_sha256 = base, sha256_file(base)
    return ckpt


def save_sovits_v3(
    path: str | Path,
    cfg: SoVITSV3Config,
    weights: Mapping[str, torch.Tensor],
    lora_rank: int | None = None,
    half: bool = True,
    info: str = "8epoch_1000iteration",
) -> None:
    """Write tensors under upstream keys as ``process_ckpt.savee`` does for v3/v4/v5.

    ``weights`` is a full upstream state dict, or with ``lora_rank`` what
    :func:`gsv_models.lora.lora_file_state` selects; LoRA files get the ``03``/``04``/``07``/``08``
    tag of their version (upstream 3b95794), full v5 files ``07``/``08`` too (ac846f5 and the
    pretrained files).
    """
    config: dict[str, Any] = cfg.sovits.to_upstream()
    if lora_rank is not None:
        config["train"]["lora_rank"] = lora_rank
    payload: OrderedDict[str, Any] = OrderedDict(weight=_cast(weights, half))
    buf = io.BytesIO()
    with _upstream_hparams_module():
        payload["config"] = HParams(**config)
        payload["info"] = info
        if lora_rank is not None:
            payload["lora_rank"] = lora_rank
        torch.save(payload, buf)
    data = buf.getvalue()
    tag = LORA_TAGS[cfg.version] if lora_rank is not None else VERSION_HEADERS.get(cfg.version)
    Path(path).write_bytes(tag + data[2:] if tag else data)
