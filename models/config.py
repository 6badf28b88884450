"""Hyperparameters of the GPT (T2S) and SoVITS networks, read from upstream checkpoint configs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gsv_models.version import ModelVersion


@dataclass(frozen=True)
class T2SConfig:
    """GPT decoder shape; upstream keeps it in ``ckpt["config"]["model"]`` (s1longer*.yaml)."""

    vocab_size: int = 1025
    """Semantic vocabulary including EOS (1024 codes + EOS)."""
    phoneme_vocab_size: int = 732
    """Rows of the phone embedding: 512 for v1 checkpoints (only 322 used), 732 for v2+."""
    embedding_dim: int = 512
    hidden_dim: int = 512
    n_head: int = 16
    n_layer: int = 24
    eos: int = 1024
    max_sec: int = 54
    """Upstream's early-stop bound is 50 Hz × max_sec tokens (above the 1500-step cap)."""
    bert_dim: int = 1024
    """Width of the BERT features (RoBERTa-large: 1024); not stored upstream, read off
    ``bert_proj``, so shrunk test models can pair with a shrunk BERT."""

    @classmethod
    def from_upstream(cls, config: Mapping[str, Any]) -> T2SConfig:
        """Build from a GPT checkpoint's ``config`` dict (keys ``model`` and ``data``)."""
        model = config["model"]
        return cls(
            vocab_size=int(model["vocab_size"]),
            phoneme_vocab_size=int(model["phoneme_vocab_size"]),
            embedding_dim=int(model["embedding_dim"]),
            hidden_dim=int(model["hidden_dim"]),
            n_head=int(model["head"]),
            n_layer=int(model["n_layer"]),
            eos=int(model["EOS"]),
            max_sec=int(config.get("data", {}).get("max_sec", 54)),
        )

    def to_upstream(self) -> dict[str, Any]:
        """The ``config`` dict upstream's s1 training writes into a ``.ckpt``."""
        return {
            "data": {"max_sec": self.max_sec, "pad_val": self.eos},
            "model": {
                "vocab_size": self.vocab_size,
                "phoneme_vocab_size": self.phoneme_vocab_size,
                "embedding_dim": self.embedding_dim,
                "hidden_dim": self.hidden_dim,
                "head": self.n_head,
                "linear_units": 4 * self.hidden_dim,
                "n_layer": self.n_layer,
                "dropout": 0,
                "EOS": self.eos,
                "random_bert": 0,
            },
            "inference": {"top_k": 15},
        }


@dataclass(frozen=True)
class SoVITSConfig:
    """SynthesizerTrn shape (v1/v2/v2Pro/v2ProPlus); upstream keeps it in configs/s2*.json."""

    version: ModelVersion = ModelVersion.V2
    n_symbols: int = 732
    """Rows of ``enc_p.text_embedding``: 322 (v1 symbols) or 732 (v2 symbols)."""
    sampling_rate: int = 32000
    filter_length: int = 2048
    hop_length: int = 640
    win_length: int = 2048
    segment_size: int = 20480
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (10, 8, 2, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 2, 2)
    gin_channels: int = 512
    ssl_dim: int = 768
    codebook_size: int = 1024
    mrte_hidden: int = 512
    """MRTE width; also the width of ``ge_to512`` on v2Pro/ProPlus."""
    sv_dim: int = 20480
    """ERes2NetV2 forward3 embedding size fed to ``sv_emb`` (v2Pro/ProPlus)."""

    @property
    def spec_channels(self) -> int:
        """Linear-spectrogram bins, ``filter_length // 2 + 1``."""
        return self.filter_length // 2 + 1

    @property
    def ref_channels(self) -> int:
        """Spectrogram bins the reference encoder reads: all for v1, the first 704 otherwise."""
        return self.spec_channels if self.version is ModelVersion.V1 else 704

    @property
    def samples_per_token(self) -> int:
        """Waveform samples per 25 Hz semantic token (2 frames of ``hop_length``)."""
        return 2 * self.hop_length

    @classmethod
    def from_upstream(
        cls, hps: Mapping[str, Any], version: ModelVersion, n_symbols: int
    ) -> SoVITSConfig:
        """Build from a SoVITS checkpoint's config (``data``/``model``/``train`` sections)."""
        data, model = hps["data"], hps["model"]
        train = hps.get("train", {})
        return cls(
            version=version,
            n_symbols=n_symbols,
            sampling_rate=int(data["sampling_rate"]),
            filter_length=int(data["filter_length"]),
            hop_length=int(data["hop_length"]),
            win_length=int(data["win_length"]),
            segment_size=int(train.get("segment_size", 20480)),
            inter_channels=int(model["inter_channels"]),
            hidden_channels=int(model["hidden_channels"]),
            filter_channels=int(model["filter_channels"]),
            n_heads=int(model["n_heads"]),
            n_layers=int(model["n_layers"]),
            kernel_size=int(model["kernel_size"]),
            resblock=str(model["resblock"]),
            resblock_kernel_sizes=tuple(int(k) for k in model["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(
                tuple(int(d) for d in ds) for ds in model["resblock_dilation_sizes"]
            ),
            upsample_rates=tuple(int(r) for r in model["upsample_rates"]),
            upsample_initial_channel=int(model["upsample_initial_channel"]),
            upsample_kernel_sizes=tuple(int(k) for k in model["upsample_kernel_sizes"]),
            gin_channels=int(model["gin_channels"]),
        )

    def to_upstream(self) -> dict[str, Any]:
        """The config dict upstream's s2 training writes (as plain dicts; HParams is a wrapper)."""
        d = asdict(self)
        return {
            "train": {"segment_size": self.segment_size, "fp16_run": True},
            "data": {
                "max_wav_value": 32768.0,
                "sampling_rate": self.sampling_rate,
                "filter_length": self.filter_length,
                "hop_length": self.hop_length,
                "win_length": self.win_length,
                "n_mel_channels": 128,
                "mel_fmin": 0.0,
                "mel_fmax": None,
                "add_blank": True,
                "n_speakers": 300,
                "cleaned_text": True,
            },
            "model": {
                **{
                    k: d[k]
                    for k in (
                        "inter_channels",
                        "hidden_channels",
                        "filter_channels",
                        "n_heads",
                        "n_layers",
                        "kernel_size",
                        "resblock",
                        "upsample_initial_channel",
                        "gin_channels",
                    )
                },
                "p_dropout": 0.1 if not self.version.is_pro else 0.0,
                "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
                "resblock_dilation_sizes": [list(x) for x in self.resblock_dilation_sizes],
                "upsample_rates": list(self.upsample_rates),
                "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
                "n_layers_q": 3,
                "use_spectral_norm": False,
                "semantic_frame_rate": "25hz",
                "freeze_quantizer": True,
                "version": self.version.value,
            },
            "s2_ckpt_dir": "logs/s2",
            "content_module": "cnhubert",
        }
