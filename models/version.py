"""Model versions of upstream GPT-SoVITS and how a checkpoint announces its version."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class ModelVersion(StrEnum):
    """Upstream model generations; the value is upstream's own spelling."""

    V1 = "v1"
    V2 = "v2"
    V2PRO = "v2Pro"
    V2PROPLUS = "v2ProPlus"
    V3 = "v3"
    V4 = "v4"
    V5DEV = "v5dev"
    V5TURBO = "v5turbo"

    @property
    def symbols_version(self) -> str:
        """Symbol table of the text front end: v1 (322 symbols) or v2 (732)."""
        return "v1" if self is ModelVersion.V1 else "v2"

    @property
    def is_pro(self) -> bool:
        """v2Pro/v2ProPlus condition the synthesizer on a speaker-verification embedding."""
        return self in (ModelVersion.V2PRO, ModelVersion.V2PROPLUS)

    @property
    def is_v5(self) -> bool:
        """v5dev/v5turbo: v4's SoVITS and vocoder, a DiT without the step embedding and
        upstream's ``CFMV5`` sampler (fixed step counts, guidance that keeps the text)."""
        return self in (ModelVersion.V5DEV, ModelVersion.V5TURBO)

    @classmethod
    def parse(cls, name: str) -> ModelVersion:
        """Case-insensitive lookup by upstream name (``"v2pro"`` → ``V2PRO``)."""
        for member in cls:
            if member.value.lower() == name.lower():
                return member
        accepted = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown model version {name!r}; accepted: {accepted}")


# GPT-SoVITS process_ckpt.py replaces torch.save's leading b"PK" with a 2-byte tag.
HEADER_VERSIONS: Final[dict[bytes, ModelVersion]] = {
    b"00": ModelVersion.V1,
    b"01": ModelVersion.V2,
    b"02": ModelVersion.V3,
    b"03": ModelVersion.V3,  # v3 LoRA
    b"04": ModelVersion.V4,  # v4 LoRA
    b"05": ModelVersion.V2PRO,
    b"06": ModelVersion.V2PROPLUS,
    b"07": ModelVersion.V5DEV,  # full files at upstream ac846f5, LoRA fine-tunes at 3b95794
    b"08": ModelVersion.V5TURBO,
}
VERSION_HEADERS: Final[dict[ModelVersion, bytes]] = {
    ModelVersion.V2PRO: b"05",
    ModelVersion.V2PROPLUS: b"06",
    ModelVersion.V5DEV: b"07",
    ModelVersion.V5TURBO: b"08",
}
"""Tags upstream writes for full (non-LoRA) checkpoints; v1/v2 keep the plain b"PK"."""
LORA_TAGS: Final[dict[ModelVersion, bytes]] = {
    ModelVersion.V3: b"03",
    ModelVersion.V4: b"04",
    ModelVersion.V5DEV: b"07",
    ModelVersion.V5TURBO: b"08",
}
"""The tag upstream's ``savee`` writes on a LoRA fine-tune of each version."""
LORA_HEADERS: Final[frozenset[bytes]] = frozenset(LORA_TAGS.values()) - set(
    VERSION_HEADERS.values()
)
"""Tags only LoRA fine-tunes carry (v3's ``03``, v4's ``04``). v5's ``07``/``08`` tag both kinds:
upstream's full files (the pretrained ones, and fine-tunes at ac846f5) and its LoRA fine-tunes
(from 3b95794 on), told apart by their peft-wrapped weights."""
PRETRAINED_SOVITS_MD5: Final[dict[str, ModelVersion]] = {
    "43797be674a37c1c83ee81081941ed0f": ModelVersion.V3,  # s2Gv3.pth
    "4f26b9476d0c5033e04162c486074374": ModelVersion.V4,  # gsv-v4-pretrained/s2Gv4.pth
}
"""md5 of the first 8 KiB of upstream's pretrained v3/v4 SoVITS files (``process_ckpt.py``).
Their header is the plain ``PK`` and v3/v4 weights have the same shapes, so upstream tells them
apart this way."""
