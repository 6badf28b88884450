"""Read and write upstream GPT-SoVITS checkpoints (.ckpt GPT, .pth SoVITS, ERes2NetV2 .ckpt) safely.

Upstream writes every checkpoint with ``torch.save`` (a zip holding a pickle). Pickles can run
code, so we only load through torch's ``weights_only`` unpickler, which accepts tensors and plain
containers; the one extra class allowed is upstream's ``utils.HParams`` config wrapper, which is
rebuilt as an inert attribute bag and turned into plain dicts. Mirrors the on-disk format of
upstream ``GPT_SoVITS/process_ckpt.py`` (``savee``/``my_save2``/``load_sovits_new``) and
``GPT_SoVITS/AR/models/t2s_lightning_module.py`` (``model.`` key prefix).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import types
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from gsv_models.config import SoVITSConfig, T2SConfig
from gsv_models.sovits import (
    fold_weight_norm_state,
    unfold_weight_norm_state,
    weight_norm_prefixes,
)
from gsv_models.version import HEADER_VERSIONS, VERSION_HEADERS, ModelVersion
from gsv_runtime.bundle import sha256_file
from gsv_runtime.errors import CheckpointError, first_line

if TYPE_CHECKING:
    from gsv_models.sovits_v3 import SoVITSV3Config

Kind = Literal["gpt", "sovits", "sv"]

_GPT_PREFIX = "model."
_GPT_MARKER = _GPT_PREFIX + "ar_predict_layer.weight"
_SOVITS_MARKER = "enc_p.encoder_text.attn_layers.0.conv_q.weight"
_SOVITS_V3_MARKER_PREFIX = "cfm."
_SV_MARKER = "conv1.weight"
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class _HParamsStandIn:
    """Inert stand-in for upstream's ``utils.HParams``: an attribute bag, nothing executes."""


# Ours when we write upstream-format files: pickled under upstream's name "utils.HParams".
class HParams:
    """Attribute-access config as upstream's ``GPT_SoVITS/utils.py`` HParams (for writing files)."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, HParams(**value) if isinstance(value, dict) else value)


@dataclass
class Checkpoint:
    """A loaded checkpoint: fp32 tensors under our key names, plus what upstream stored."""

    path: Path
    kind: Kind
    version: ModelVersion
    """GPT: the symbol generation (v1 or v2); SoVITS: the model version; SV: always v2Pro."""
    config: T2SConfig | SoVITSConfig | SoVITSV3Config | None
    state_dict: dict[str, torch.Tensor]
    raw_config: dict[str, Any]
    info: str | None
    header: bytes
    sha256: str
    lora_rank: int | None = None
    """LoRA fine-tunes (v3/v4/v5): the rank of the factors merged into ``state_dict``."""
    base: Path | None = None
    """LoRA fine-tunes (v3/v4/v5): the full model the factors were merged into."""
    base_sha256: str = ""


MAX_INFLATION = 2
"""A checkpoint's zip may inflate to at most this × its size (+16 MiB); torch stores tensors
uncompressed, so real files are ≈ 1×."""
MAX_TENSOR_ELEMENTS = 1 << 31


def read_payload(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Unpickle a checkpoint safely; return the top-level dict and the 2-byte header.

    Raises:
        CheckpointError: missing, empty, truncated, corrupt or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path}: file is empty")
    header = data[:2]
    if header in HEADER_VERSIONS:
        data = b"PK" + data[2:]
    elif header != b"PK":
        raise CheckpointError(
            f"{path}: not a GPT-SoVITS checkpoint (starts with {header!r}, expected a torch zip "
            f"file or one of upstream's version tags {sorted(h.decode() for h in HEADER_VERSIONS)})"
        )
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(f"{path}: truncated or corrupt (the zip directory is unreadable)")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        inflated = sum(info.file_size for info in archive.infolist())
    if inflated > MAX_INFLATION * len(data) + (16 << 20):
        raise CheckpointError(
            f"{path}: its archive inflates to {inflated >> 20} MiB from {len(data) >> 20} MiB "
            "(torch stores weights uncompressed; refusing a zip bomb)"
        )
    try:
        with torch.serialization.safe_globals([(_HParamsStandIn, "utils.HParams")]):
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        message = str(exc)
        unsafe = _UNSAFE_GLOBAL.search(message)
        if unsafe:
            raise CheckpointError(
                f"{path}: refused to load: the pickle references {unsafe.group(1)}, which is not a "
                "tensor, container or config (a checkpoint may run code when unpickled)"
            ) from None
        raise CheckpointError(f"{path}: truncated or corrupt ({first_line(exc)})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict at the top level, found {type(payload)}")
    return payload, header


def _plain(value: Any) -> Any:
    """HParams stand-ins (nested) → plain dicts; other values unchanged."""
    if isinstance(value, _HParamsStandIn):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def detect_kind(payload: Mapping[str, Any]) -> Kind | None:
    """GPT, SoVITS or speaker model, judged from the tensor keys only."""
    weights = payload.get("weight")
    if isinstance(weights, Mapping):
        if _GPT_MARKER in weights:
            return "gpt"
        if _SOVITS_MARKER in weights or any(
            k.startswith(_SOVITS_V3_MARKER_PREFIX) for k in weights
        ):
            return "sovits"
    if _SV_MARKER in payload and "layer4.0.conv1.weight" in payload:
        return "sv"
    return None


def _to_fp32(state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: weight {key!r} is not a tensor")
        # a view may repeat a small storage (zero strides): copying it would allocate the
        # whole shape, so every weight must own as many bytes as it has elements
        if value.numel() > MAX_TENSOR_ELEMENTS or (
            value.numel() * value.element_size() > value.untyped_storage().nbytes()
        ):
            raise CheckpointError(
                f"{path}: weight {key!r} of shape {list(value.shape)} is larger than the data "
                "stored for it (a repeating view)"
            )
        out[key] = value.float() if value.is_floating_point() else value
    return out


def _gpt_version(state: Mapping[str, torch.Tensor], cfg: T2SConfig, path: Path) -> ModelVersion:
    rows = state["ar_text_embedding.word_embeddings.weight"].shape[0]
    if rows != cfg.phoneme_vocab_size:
        raise CheckpointError(
            f"{path}: config says phoneme_vocab_size {cfg.phoneme_vocab_size} but the text "
            f"embedding has {rows} rows"
        )
    if rows >= 732:
        return ModelVersion.V2
    if rows >= 322:
        return ModelVersion.V1
    raise CheckpointError(f"{path}: unknown GPT version: text embedding has {rows} rows (<322)")


def _load_gpt(path: Path, payload: Mapping[str, Any], header: bytes) -> Checkpoint:
    raw = _plain(payload.get("config"))
    if not isinstance(raw, dict) or "model" not in raw:
        raise CheckpointError(f"{path}: GPT checkpoint has no config['model'] section")
    try:
        cfg = T2SConfig.from_upstream(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: GPT config is incomplete (missing {exc})") from None
    # upstream's own strict load tolerates the training-metric states some files may carry
    state = {
        k[len(_GPT_PREFIX) :]: v
        for k, v in _to_fp32(payload["weight"], path).items()
        if k.startswith(_GPT_PREFIX) and not k.startswith(_GPT_PREFIX + "ar_accuracy_metric.")
    }
    version = _gpt_version(state, cfg, path)
    cfg = replace(cfg, bert_dim=state["bert_proj.weight"].shape[1])
    return Checkpoint(path, "gpt", version, cfg, state, raw, payload.get("info"), header, "")


def _sovits_version(state: Mapping[str, torch.Tensor], header: bytes, path: Path) -> ModelVersion:
    """Version from the header tag and the tensor shapes, which must agree."""
    rows = state["enc_p.text_embedding.weight"].shape[0]
    if "sv_emb.weight" in state:
        first_kernel = state["dec.ups.0.weight_v"].shape[-1]
        width = state["dec.conv_pre.weight"].shape[0]
        shaped = (
            ModelVersion.V2PROPLUS if (width, first_kernel) == (768, 20) else ModelVersion.V2PRO
        )
    elif rows == 322:
        shaped = ModelVersion.V1
    else:
        shaped = ModelVersion.V2
    tagged = HEADER_VERSIONS.get(header)
    if tagged is not None and tagged.is_pro != shaped.is_pro:
        raise CheckpointError(
            f"{path}: header tag {header.decode()} says {tagged.value} but the weights are "
            f"{shaped.value}"
        )
    version = tagged if tagged is not None and tagged.is_pro else shaped
    if version.is_pro and rows != 732:
        raise CheckpointError(f"{path}: {version.value} needs 732 symbols, found {rows}")
    if rows not in (322, 732):
        raise CheckpointError(f"{path}: unknown SoVITS version: {rows} text symbols")
    return version


def _load_sovits(path: Path, payload: Mapping[str, Any], header: bytes) -> Checkpoint:
    raw = _plain(payload.get("config"))
    if not isinstance(raw, dict) or "model" not in raw or "data" not in raw:
        raise CheckpointError(f"{path}: SoVITS checkpoint has no config with 'data' and 'model'")
    state = {
        k: v for k, v in _to_fp32(payload["weight"], path).items() if not k.startswith("enc_q.")
    }
    version = _sovits_version(state, header, path)
    try:
        cfg = SoVITSConfig.from_upstream(
            raw, version, state["enc_p.text_embedding.weight"].shape[0]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: SoVITS config is incomplete (missing {exc})") from None
    # upstream hard-codes these widths instead of storing them; a shrunk test model changes them
    cfg = replace(
        cfg,
        ssl_dim=state["ssl_proj.weight"].shape[0],
        mrte_hidden=state["enc_p.mrte.c_pre.weight"].shape[0],
        codebook_size=state["quantizer.vq.layers.0._codebook.embed"].shape[0],
        sv_dim=state["sv_emb.weight"].shape[1] if version.is_pro else cfg.sv_dim,
    )
    gin = state["ref_enc.fc.fc.weight"].shape[0]
    if gin != cfg.gin_channels:
        raise CheckpointError(
            f"{path}: config gin_channels {cfg.gin_channels} disagrees with the weights ({gin})"
        )
    try:
        state = fold_weight_norm_state(state, weight_norm_prefixes(cfg))
    except KeyError as exc:
        raise CheckpointError(f"{path}: weight-norm pairs missing ({exc.args[0]})") from None
    return Checkpoint(path, "sovits", version, cfg, state, raw, payload.get("info"), header, "")


def _load_sv(path: Path, payload: Mapping[str, Any], header: bytes) -> Checkpoint:
    state = _to_fp32(payload, path)
    return Checkpoint(path, "sv", ModelVersion.V2PRO, None, state, {}, None, header, "")


_LOADERS = {"gpt": _load_gpt, "sovits": _load_sovits, "sv": _load_sv}
_KIND_NAMES = {"gpt": "GPT (.ckpt)", "sovits": "SoVITS (.pth)", "sv": "ERes2NetV2 speaker model"}


def load_checkpoint(
    path: str | Path, kind: Kind | None = None, base: str | Path | None = None
) -> Checkpoint:
    """Load a GPT, SoVITS or speaker checkpoint; check its kind (if given) and detect its version.

    Args:
        path: the checkpoint file.
        kind: the expected kind; a file of another kind is refused. None accepts any kind.
        base: for a v3/v4/v5 SoVITS LoRA fine-tune, upstream's pretrained full model it was
            trained from (``s2Gv3.pth``, ``s2Gv4.pth``, ``s2Gv5dev.pth``, ``s2Gv5turbo.pth``);
            the factors are merged into it.

    Raises:
        CheckpointError: unreadable, unsafe, wrong-kind or unknown-version file.
    """
    path = Path(path)
    payload, header = read_payload(path)
    found = detect_kind(payload)
    if found is None:
        raise CheckpointError(f"{path}: not a GPT-SoVITS GPT, SoVITS or speaker checkpoint")
    if kind is not None and found != kind:
        raise CheckpointError(
            f"{path}: expected a {_KIND_NAMES[kind]} checkpoint, but this is a {_KIND_NAMES[found]}"
        )
    if found == "sovits" and any(k.startswith(_SOVITS_V3_MARKER_PREFIX) for k in payload["weight"]):
        from gsv_models.checkpoint_v3 import load_sovits_v3  # imports this module

        ckpt = load_sovits_v3(path, payload, header, base)
    elif base is not None:
        raise CheckpointError(f"{path}: base= applies to v3/v4/v5 SoVITS LoRA fine-tunes only")
    else:
        ckpt = _LOADERS[found](path, payload, header)
    ckpt.sha256 = sha256_file(path)
    return ckpt


@contextlib.contextmanager
def _upstream_hparams_module() -> Iterator[None]:
    """Let pickle find our HParams under upstream's name ``utils.HParams`` while saving."""
    existing = sys.modules.get("utils")
    module = types.ModuleType("utils")
    module.HParams = HParams  # type: ignore[attr-defined]
    original = (HParams.__module__, HParams.__qualname__)
    HParams.__module__, HParams.__qualname__ = "utils", "HParams"
    sys.modules["utils"] = module
    try:
        yield
    finally:
        HParams.__module__, HParams.__qualname__ = original
        if existing is None:
            del sys.modules["utils"]
        else:
            sys.modules["utils"] = existing


def _cast(state: Mapping[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    return {
        k: (v.half() if half and v.is_floating_point() else v).contiguous()
        for k, v in state.items()
    }


def save_gpt(
    path: str | Path,
    cfg: T2SConfig,
    state: Mapping[str, torch.Tensor],
    half: bool = True,
    info: str = "GPT-e15",
) -> None:
    """Write a GPT ``.ckpt`` as upstream's s1 training does (``model.`` prefix, fp16 by default)."""
    weights = {_GPT_PREFIX + k: v for k, v in _cast(state, half).items()}
    torch.save({"weight": weights, "config": cfg.to_upstream(), "info": info}, Path(path))


def save_sovits(
    path: str | Path,
    cfg: SoVITSConfig,
    state: Mapping[str, torch.Tensor],
    half: bool = True,
    config_as_hparams: bool = True,
    info: str = "8epoch_1000iteration",
) -> None:
    """Write a SoVITS ``.pth`` as upstream's ``process_ckpt.savee`` does.

    The config is pickled as upstream's ``utils.HParams`` (as fine-tuned files carry it) or as a
    plain dict; v2Pro/v2ProPlus files get their 2-byte version tag in place of ``PK``.
    """
    weights = _cast(unfold_weight_norm_state(state, weight_norm_prefixes(cfg)), half)
    config: Any = cfg.to_upstream()
    buf = io.BytesIO()
    if config_as_hparams:
        with _upstream_hparams_module():
            torch.save({"weight": weights, "config": HParams(**config), "info": info}, buf)
    else:
        torch.save({"weight": weights, "config": config, "info": info}, buf)
    data = buf.getvalue()
    tag = VERSION_HEADERS.get(cfg.version)
    Path(path).write_bytes(tag + data[2:] if tag else data)


def check_weights_fit(
    where: str | Path, network: str, expected: Mapping[str, Any], state: Mapping[str, Any]
) -> None:
    """Every key of ``expected`` present in ``state`` with its shape, and nothing extra (upstream
    loads strictly too). Called with a network laid out on the ``meta`` device, so a config that
    declares a huge network fails before anything is allocated.

    Raises:
        CheckpointError: names the counts and the first few offending keys.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit the {network} ({len(missing)} missing, e.g. "
            f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    shaped = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if shaped:
        k = shaped[0]
        raise CheckpointError(
            f"{where}: {len(shaped)} weights have the wrong shape, e.g. {k} is "
            f"{list(state[k].shape)}, expected {list(expected[k].shape)}"
        )
