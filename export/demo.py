"""The README's main job: random upstream checkpoints → bundles → speech on every backend.

Nothing is downloaded: the checkpoints and the HuBERT stand-in are random weights written in the
upstream formats, so the audio is noise-like, but every step a user runs is real: upstream-format
checkpoints, export with parity checks, reference preparation, GPT decoding and SoVITS.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

DEMO_TEXT = "The quick brown fox jumps over the lazy dog."
PROMPT_TEXT = "This is the reference voice."


def _reference_clip(path: Path, seconds: float = 4.5, rate: int = 32000) -> Path:
    """A synthetic, speech-like reference: a gliding harmonic tone with syllable-rate envelope."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    noise = 0.01 * np.random.default_rng(0).standard_normal(len(t))
    sf.write(path, (0.2 * voiced * envelope + noise).astype(np.float32), rate)
    return path


def run_demo(
    out: Path,
    version: str = "v2",
    size: str = "full",
    verify: bool = True,
    progress: Callable[[str], None] = print,
) -> Iterator[str]:
    """Make, export and run a random voice; yield one summary line per backend (warm RTF).

    Checkpoints are cached in ``out/checkpoints``; bundles are exported afresh every run.
    """
    from gsv_export import export_bundle, export_support_bundle
    from gsv_models.testing import make_checkpoint, make_voice_checkpoints
    from gsv_models.testing.support_dirs import make_hubert_dir
    from gsv_models.version import ModelVersion
    from gsv_runtime.audio import write_wav
    from gsv_runtime.backends import available_backends
    from gsv_runtime.synthesizer import Synthesizer

    model_version = ModelVersion.parse(version)
    ckpt_dir = out / "checkpoints" / f"{version}-{size}"
    if not (ckpt_dir / "sovits.pth").exists():
        progress(f"making random {size} {version} checkpoints in {ckpt_dir}")
        make_voice_checkpoints(model_version, ckpt_dir, size=size)  # type: ignore[arg-type]
    hubert = out / "checkpoints" / f"hubert-{size}"
    if not (hubert / "config.json").exists():
        progress(f"making a random {size} HuBERT in {hubert}")
        make_hubert_dir(hubert, size=size)  # type: ignore[arg-type]
    sv = None
    if model_version.is_pro:
        sv = ckpt_dir / "sv.ckpt"
        if not sv.exists():
            make_checkpoint(model_version, "sv", sv, size=size)  # type: ignore[arg-type]
    start = time.perf_counter()
    # English text needs no BERT, so the support bundle holds HuBERT (and SV for Pro) only
    export_support_bundle(hubert, None, out / "support", sv=sv, verify=verify, progress=progress)
    export_bundle(
        ckpt_dir / "gpt.ckpt",
        ckpt_dir / "sovits.pth",
        out / "voice",
        support=str(out / "support"),
        verify=verify,
        progress=progress,
    )
    progress(f"export took {time.perf_counter() - start:.1f} s")
    ref = _reference_clip(out / "reference.wav")
    for backend in available_backends():
        t0 = time.perf_counter()
        synth = Synthesizer.load(out / "voice", backend=backend)
        voice = synth.voice(ref, PROMPT_TEXT, "en")
        t1 = time.perf_counter()
        synth.synthesize(DEMO_TEXT, "en", voice, seed=0)  # first run: allocations, caches
        cold = time.perf_counter() - t1
        t2 = time.perf_counter()
        result = synth.synthesize(DEMO_TEXT, "en", voice, seed=0)
        wall = time.perf_counter() - t2
        tokens = sum(s["tokens"] for s in result.metadata["segments"])
        write_wav(out / f"demo-{backend}.wav", result.samples, result.sample_rate)
        yield (
            f"{backend}: {result.seconds:.2f} s of audio in {wall:.2f} s, RTF "
            f"{wall / result.seconds:.3f} ({tokens} tokens, GPT {result.timings['t2s']:.2f} s, "
            f"SoVITS {result.timings['sovits']:.2f} s; first run {cold:.2f} s; "
            f"load + reference {t1 - t0:.2f} s) "
            f"→ {out / f'demo-{backend}.wav'}"
        )
