"""What a benchmark runs on: a voice bundle, its support bundle, a voice, and the checkpoints.

``--random VERSION`` makes full-size random-weight checkpoints (upstream's architecture and
file formats; no real weights can be downloaded here), exports them with both formats and the
requested precisions, and caches everything under the cache folder so later runs start at once.
Random weights make the *timings* representative: the graphs, shapes and operator counts are
those of a real voice, only the audio is noise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from gsv_runtime.bundle import MANIFEST_NAME, Bundle
from gsv_runtime.errors import BundleError, InputError

_LOGGER = logging.getLogger(__name__)

Progress = Callable[[str], None]

DEFAULT_CACHE: Final = Path.home() / ".cache" / "gsv-rt" / "bench"
VOICE_NAME: Final = "bench"
REF_SECONDS: Final = 5.0
REF_PROMPT: Final = ("This is a short reference clip for the benchmark.", "en")
CFM_VERSIONS: Final = ("v3", "v4", "v5dev", "v5turbo")
RANDOM_VERSIONS: Final = ("v1", "v2", "v2Pro", "v2ProPlus", *CFM_VERSIONS)
"""Flow-matching (DiT + vocoder) versions: their GPT is v2's, the SoVITS a CFM, plus a vocoder."""


@dataclass(frozen=True)
class Assets:
    """Paths a benchmark point needs (JSON-serialisable for the worker processes)."""

    voice_dir: str
    """Voice bundle directory."""
    voice_root: str
    """Folder whose ``voices/<voice_name>`` holds the prepared voice."""
    voice_name: str
    support_dir: str | None = None
    """Support bundle (HuBERT/BERT/SV); needed for Chinese text and for voice preparation."""
    gpt: str | None = None
    """GPT checkpoint for the torch baseline (None: no baseline)."""
    sovits: str | None = None
    vocoder: str | None = None
    """v3/v4: upstream's vocoder (BigVGAN folder / ``vocoder.pth``) for the torch baseline."""
    ref_wav: str | None = None
    """Reference clip for the voice-preparation timing."""
    prompt_text: str = ""
    prompt_lang: str = "en"
    random: str | None = None
    """Model version when the weights are random stand-ins."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Assets:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    def has_bert(self) -> bool:
        """Whether the support bundle holds a BERT graph."""
        if self.support_dir is None:
            return False
        try:
            return "bert" in Bundle.load(self.support_dir).manifest.graphs
        except BundleError:
            return False

    def describe(self) -> dict[str, Any]:
        """Bundle identity recorded with every result: path, version and hashes."""
        bundle = Bundle.load(self.voice_dir)
        m = bundle.manifest
        manifest = Path(self.voice_dir) / MANIFEST_NAME
        return {
            "path": _home_relative(self.voice_dir),
            "version": m.model.get("version"),
            "random_weights": self.random is not None,
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "gpt_sha256": m.source.get("gpt", {}).get("sha256"),
            "sovits_sha256": m.source.get("sovits", {}).get("sha256"),
            "support": _home_relative(self.support_dir) if self.support_dir else None,
            "t2s": dict(m.t2s),
            "sample_rate": m.audio.get("sample_rate"),
        }


def _home_relative(path: str) -> str:
    """``~/...`` for paths under the home folder (results get shared and committed)."""
    p, home = Path(path).resolve(), Path.home().resolve()
    return f"~/{p.relative_to(home)}" if p.is_relative_to(home) else str(p)


def synthetic_reference(path: Path, seconds: float = REF_SECONDS, rate: int = 32000) -> Path:
    """A voiced-like clip (a vibrato tone with harmonics and a little noise), written once."""
    if path.is_file():
        return path
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    f0 = 160 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wav = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6))
    wav = wav * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2)
    wav = wav + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.8 * wav / np.abs(wav).max()).astype(np.float32), rate)
    return path


def _variants(bundle_dir: Path) -> set[str]:
    try:
        bundle = Bundle.load(bundle_dir)
    except BundleError:
        return set()
    return {v.precision for s in bundle.manifest.graphs.values() for v in s.variants}


def _timed(progress: Progress, label: str, log: Path) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def run() -> Iterator[None]:
        progress(f"{label} (one-time, cached; log: {log})")
        start = time.perf_counter()
        from gsv_export.logs import quiet_fds

        with quiet_fds(log):
            yield
        progress(f"{label}: done in {time.perf_counter() - start:.0f} s")

    return run()


SUPPORT_PRECISIONS: Final = ("fp32", "int8")
"""Precisions of the random support bundles: fp32 and the int8 that ``auto`` runs on CPUs with
int8 dot products (onnxruntime) or BF16 units (OpenVINO)."""


def _support_ready(path: Path) -> bool:
    """A support bundle is there and holds every precision of :data:`SUPPORT_PRECISIONS` that
    its HuBERT has (an older cache exported only fp32)."""
    if not (path / MANIFEST_NAME).is_file():
        return False
    held = {v.precision for v in Bundle.load(path).manifest.graphs["hubert"].variants}
    return held >= set(SUPPORT_PRECISIONS)


def _random_support(cache: Path, with_bert: bool, progress: Progress) -> Path:
    """Full-size random HuBERT + SV (+ BERT) stand-ins exported to a support bundle."""
    from gsv_export.support import export_support_graphs
    from gsv_export.writer import staging_dir, write_manifest
    from gsv_models.testing import make_checkpoint
    from gsv_models.testing.support_dirs import make_bert_dir, make_hubert_dir

    full, lean = cache / "support-hubert-bert-sv", cache / "support-hubert-sv"
    if _support_ready(full):
        return full
    out = full if with_bert else lean
    if _support_ready(out):
        return out
    what = "HuBERT, SV" + (" and BERT (≈1.5–3 min, 4 GB)" if with_bert else " (≈30 s, 1 GB)")
    with _timed(progress, f"exporting random full-size {what}", cache / "export.log"):
        src = cache / "src"
        hubert = src / "hubert"
        if not (hubert / "config.json").is_file():
            make_hubert_dir(hubert, size="full")
        sv = src / "sv.ckpt"
        if not sv.is_file():
            make_checkpoint("v2Pro", "sv", sv, size="full")
        bert = None
        if with_bert:
            bert = src / "bert"
            if not (bert / "config.json").is_file():
                make_bert_dir(bert, size="full")
        with staging_dir(out) as work:
            graphs, info = export_support_graphs(
                hubert, bert, sv, work, ("onnx", "openvino"), SUPPORT_PRECISIONS
            )
            write_manifest(
                work,
                "support",
                graphs,
                model={"family": "gpt-sovits-support", "notes": ["random weights (benchmark)"]},
                source=info["source"],
                audio=info["audio"],
                text=info["text"],
            )
    return out


def _vocoder_path(version: str, ckpt: Path) -> Path:
    """Where a random CFM voice's vocoder lives: BigVGAN's folder (v3), else v4's
    ``vocoder.pth`` (v4, v5)."""
    return ckpt / ("bigvgan" if version == "v3" else "vocoder.pth")


def _random_checkpoints(version: str, ckpt: Path) -> tuple[Path, Path, Path | None]:
    """Full-size random GPT + SoVITS (+ the vocoder of v3/v4/v5) in upstream's formats, once."""
    from gsv_models.testing import make_checkpoint, make_voice_checkpoints
    from gsv_models.version import ModelVersion

    gpt, sovits = ckpt / "gpt.ckpt", ckpt / "sovits.pth"
    if version not in CFM_VERSIONS:
        if not (gpt.is_file() and sovits.is_file()):
            make_voice_checkpoints(ModelVersion.parse(version), ckpt, size="full", seed=0)
        return gpt, sovits, None
    from gsv_models.testing.bigvgan_init import make_bigvgan_dir
    from gsv_models.testing.cfm_init import make_v3_checkpoint, make_v4_vocoder

    v3 = version == "v3"
    vocoder = _vocoder_path(version, ckpt)
    if not gpt.is_file():  # v3/v4/v5 voices use v2's GPT
        make_checkpoint("v2", "gpt", gpt, size="full", seed=0)
    if not sovits.is_file():
        make_v3_checkpoint(version, sovits, size="full", seed=1)
    if not (vocoder / "config.json" if v3 else vocoder).is_file():
        if v3:
            make_bigvgan_dir(vocoder, size="full", seed=2)
        else:
            make_v4_vocoder(vocoder, size="full", seed=2)
    return gpt, sovits, vocoder


def _random_voice(
    cache: Path, version: str, precisions: Sequence[str], support: Path, progress: Progress
) -> tuple[Path, Path, Path, Path | None]:
    from gsv_export import export_bundle

    ckpt = cache / version / "checkpoints"
    voice = cache / version / "voice"
    have = _variants(voice)
    wanted = set(precisions) | {"fp32"}
    if "auto" in wanted:  # what auto may pick on any CPU
        wanted = (wanted - {"auto"}) | {"bf16", "int8"}
    if wanted <= have:
        gpt, sovits = ckpt / "gpt.ckpt", ckpt / "sovits.pth"
        vocoder = _vocoder_path(version, ckpt) if version in CFM_VERSIONS else None
        return voice, gpt, sovits, vocoder
    log = cache / "export.log"
    precs = sorted(wanted | have, key=["fp32", "fp16", "bf16", "int8"].index)
    with _timed(progress, f"exporting random full-size {version} voice ({', '.join(precs)})", log):
        gpt, sovits, vocoder = _random_checkpoints(version, ckpt)
        export_bundle(
            gpt,
            sovits,
            voice,
            formats=("onnx", "openvino"),
            precisions=precs,
            verify=False,
            support=str(support),
            voices="drop",
            vocoder=vocoder,
            progress=_LOGGER.info,
        )
    return voice, gpt, sovits, vocoder


def prepare_voice(assets: Assets, progress: Progress) -> None:
    """Make and save the benchmark voice from the reference once (onnxruntime, fp32)."""
    from gsv_runtime.synthesizer import Synthesizer
    from gsv_runtime.voice import saved_voices

    if assets.voice_name in saved_voices(assets.voice_root):
        return
    if assets.ref_wav is None:
        raise InputError("no voice to benchmark: give a saved voice name or a reference clip")
    progress(f"preparing voice {assets.voice_name!r} from {assets.ref_wav}")
    synth = Synthesizer.load(assets.voice_dir, backend="onnxruntime", support=assets.support_dir)
    voice = synth.voice(assets.ref_wav, assets.prompt_text, assets.prompt_lang)
    voice.save(assets.voice_root, assets.voice_name)


def random_assets(
    version: str,
    cache_dir: str | Path | None = None,
    precisions: Sequence[str] = ("fp32",),
    with_bert: bool = False,
    progress: Progress = _LOGGER.info,
) -> Assets:
    """Full-size random checkpoints, their bundles and a prepared voice (cached).

    The first call exports (on 2 cores: voice ≈ 35 s for fp32, ≈ 100 s for all precisions;
    HuBERT + SV ≈ 30 s; with BERT ≈ 70–150 s and ≈ 3 GB, only when Chinese text is
    benchmarked). Needs the ``export`` extra (torch, onnx, openvino); later calls only read the
    cache.

    Raises:
        InputError: an unknown version.
        ImportError: the export extra is missing and nothing is cached yet.
    """
    if version not in RANDOM_VERSIONS:
        raise InputError(f"unknown version {version!r}; accepted: {', '.join(RANDOM_VERSIONS)}")
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    support = _random_support(cache, with_bert, progress)
    voice_dir, gpt, sovits, vocoder = _random_voice(cache, version, precisions, support, progress)
    ref = synthetic_reference(cache / "reference.wav")
    assets = Assets(
        voice_dir=str(voice_dir),
        voice_root=str(voice_dir),
        voice_name=VOICE_NAME,
        support_dir=str(support),
        gpt=str(gpt),
        sovits=str(sovits),
        vocoder=str(vocoder) if vocoder else None,
        ref_wav=str(ref),
        prompt_text=REF_PROMPT[0],
        prompt_lang=REF_PROMPT[1],
        random=version,
    )
    prepare_voice(assets, progress)
    return assets


def bundle_assets(
    bundle: str | Path,
    *,
    voice: str | None = None,
    ref_wav: str | Path | None = None,
    prompt_text: str = "",
    prompt_lang: str = "zh",
    support: str | Path | None = None,
    gpt: str | Path | None = None,
    sovits: str | Path | None = None,
    vocoder: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress = _LOGGER.info,
) -> Assets:
    """Assets of an existing voice bundle: a saved voice, or one prepared from ``ref_wav``.

    A voice prepared here is saved under the cache folder, never inside the bundle.

    Raises:
        BundleError: unreadable bundle or unknown saved voice.
        InputError: neither a saved voice nor a reference clip.
    """
    root = Path(bundle)
    manifest = Bundle.load(root).manifest
    if support is None and manifest.support.get("path"):
        candidate = (root / str(manifest.support["path"])).resolve()
        support = candidate if candidate.is_dir() else None
    digest = hashlib.sha256((root / MANIFEST_NAME).read_bytes()).hexdigest()[:12]
    if voice is not None:
        voice_root, name = root, voice
    else:
        voice_root = (Path(cache_dir) if cache_dir else DEFAULT_CACHE) / "voices" / digest
        name = VOICE_NAME
    assets = Assets(
        voice_dir=str(root),
        voice_root=str(voice_root),
        voice_name=name,
        support_dir=str(support) if support else None,
        gpt=str(gpt) if gpt else None,
        sovits=str(sovits) if sovits else None,
        vocoder=str(vocoder) if vocoder else None,
        ref_wav=str(ref_wav) if ref_wav else None,
        prompt_text=prompt_text,
        prompt_lang=prompt_lang,
    )
    if voice is None:
        prepare_voice(assets, progress)
    return assets
