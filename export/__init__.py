"""gsv_export: upstream GPT-SoVITS checkpoints → self-describing ONNX / OpenVINO bundles.

The API mirrors the CLI one to one: :func:`export_bundle` is ``gsv export`` and
:func:`export_support_bundle` is ``gsv export-support``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsv_export.graph_io import (
    FORMATS,
    PRECISIONS,
    drop_reference_variants,
    share_onnx_weights,
)
from gsv_export.parity import ParityReport
from gsv_export.writer import check_voices, staging_dir, write_manifest
from gsv_runtime.bundle import Manifest
from gsv_runtime.errors import CheckpointError, InputError
from gsv_runtime.gpt.sampling import MAX_STEPS, SamplingParams

__all__ = ["export_bundle", "export_support_bundle"]

_LOGGER = logging.getLogger(__name__)

Progress = Callable[[str], None]
SEMANTIC_HZ = 25
CFM_VERSIONS = ("v3", "v4", "v5dev", "v5turbo")
NOISE_SCALE = 0.5


def _choices(values: Sequence[str], accepted: Sequence[str], what: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(v.strip().lower() for v in values if v.strip()))
    bad = [v for v in chosen if v not in accepted]
    if bad or not chosen:
        raise InputError(f"unknown {what} {bad or list(values)}; accepted: {', '.join(accepted)}")
    if what == "precision" and "fp32" not in chosen:
        chosen = ("fp32", *chosen)  # the reference variant every other one is checked against
    return chosen


def _report(report: ParityReport, progress: Progress) -> None:
    """The parity checks as one line per graph variant (worst value per metric), then every
    failed check in full."""
    from gsv_runtime.info import parity_table

    failed = report.failures
    progress(f"parity: {len(report.checks)} checks, {len(failed)} failed; worst per variant:")
    for line in parity_table([c.to_dict() for c in report.checks]):
        progress(line)
    for check in failed:
        progress("  " + check.line())


@contextmanager
def _stage(progress: Progress, label: str) -> Iterator[None]:
    start = time.perf_counter()
    progress(f"{label} ...")
    yield
    progress(f"{label} done in {time.perf_counter() - start:.1f} s")


def _source(ckpt: Any) -> dict[str, Any]:
    return {
        "file": ckpt.path.name,
        "sha256": ckpt.sha256,
        "size_bytes": ckpt.path.stat().st_size,
        "kind": ckpt.kind,
        "version": ckpt.version.value,
    }


def _s2(sovits: Any) -> Any:
    """The s2 hyperparameters of a SoVITS checkpoint (v3/v4 configs wrap them)."""
    return getattr(sovits.config, "sovits", sovits.config)


def _voice_sections(gpt: Any, sovits: Any, support: str | None) -> dict[str, dict[str, Any]]:
    t2s, s2, version = gpt.config, _s2(sovits), sovits.version
    defaults = SamplingParams()
    needs = ["hubert", "bert"] + (["sv"] if version.is_pro else [])
    return {
        "model": {
            "family": "gpt-sovits",
            "version": version.value,
            "symbols_version": version.symbols_version,
        },
        "source": {"gpt": _source(gpt), "sovits": _source(sovits)},
        "audio": {
            "sample_rate": s2.sampling_rate,
            "hop_length": s2.hop_length,
            "samples_per_token": s2.samples_per_token,
            "ref_sample_rate": s2.sampling_rate,
            "ssl_sample_rate": 16000,
            "spec": {"n_fft": s2.filter_length, "hop": s2.hop_length, "win": s2.win_length},
        },
        "text": {
            "symbols_version": version.symbols_version,
            "n_symbols": s2.n_symbols,
            "bert_dim": t2s.bert_dim,
        },
        "t2s": {
            "n_layer": t2s.n_layer,
            "n_head": t2s.n_head,
            "d_model": t2s.hidden_dim,
            "vocab_size": t2s.vocab_size,
            "phoneme_vocab_size": t2s.phoneme_vocab_size,
            "eos_id": t2s.eos,
            "semantic_hz": SEMANTIC_HZ,
            "max_tokens": MAX_STEPS,
        },
        "sampling": {
            "top_k": defaults.top_k,
            "top_p": defaults.top_p,
            "temperature": defaults.temperature,
            "repetition_penalty": defaults.repetition_penalty,
            "noise_scale": NOISE_SCALE,
            "noise": "exponential",
        },
        "support": {"path": support, "graphs": needs},
    }


def _is_cfm(ckpt: Any) -> bool:
    return ckpt.version.value in CFM_VERSIONS


def _check_pair(gpt: Any, sovits: Any, vocoder: Any) -> None:
    if _is_cfm(sovits) and vocoder is None:
        what = "BigVGAN model folder" if sovits.version.value == "v3" else "vocoder.pth"
        raise CheckpointError(
            f"{sovits.path.name}: a SoVITS {sovits.version.value} (CFM) voice needs its vocoder: "
            f"pass vocoder= (--vocoder), upstream's {what}"
        )
    if not _is_cfm(sovits) and vocoder is not None:
        raise CheckpointError(
            f"{sovits.path.name}: a SoVITS {sovits.version.value} voice has its own decoder; "
            "vocoder= is for v3/v4"
        )
    if gpt.version.symbols_version != sovits.version.symbols_version:
        raise CheckpointError(
            f"mismatched checkpoints: {gpt.path.name} is a GPT with "
            f"{gpt.config.phoneme_vocab_size} phone rows ({gpt.version.symbols_version} symbols) "
            f"but {sovits.path.name} is a SoVITS {sovits.version.value} with "
            f"{_s2(sovits).n_symbols} symbols ({sovits.version.symbols_version})"
        )


@dataclass
class _Acoustic:
    """The acoustic family's export, parity and manifest hooks (VITS decoder or CFM)."""

    label: str
    export: Callable[[Path, Sequence[str], Sequence[str]], dict[str, Any]]
    verify: Callable[[Path, dict[str, Any]], ParityReport]
    audio: Callable[[dict[str, Any]], dict[str, Any]]
    sources: dict[str, Any]


def _acoustic(ckpt: Any, model: Any, vocoder: Any) -> _Acoustic:
    if not _is_cfm(ckpt):
        from gsv_export.sovits import export_sovits_graphs, verify_sovits

        return _Acoustic(
            "SoVITS",
            lambda work, fmts, precs: export_sovits_graphs(model, work, fmts, precs),
            lambda work, graphs: verify_sovits(work, graphs, model, ckpt.version),
            lambda audio: audio,
            {},
        )
    from gsv_export.cfm import cfm_audio_section, export_cfm_graphs, load_vocoder, verify_cfm
    from gsv_runtime.bundle import sha256_file

    voc = load_vocoder(ckpt.version, vocoder)
    voc_path = Path(vocoder)
    weights = voc_path / "bigvgan_generator.pt" if voc_path.is_dir() else voc_path
    sources = {
        "vocoder": {
            "file": voc_path.name,
            "sha256": sha256_file(weights),
            "size_bytes": weights.stat().st_size,
        }
    }
    if ckpt.base is not None:
        base = Path(ckpt.base)
        sources["sovits_base"] = {
            "file": base.name,
            "sha256": ckpt.base_sha256,
            "size_bytes": base.stat().st_size,
        }
    return _Acoustic(
        "CFM",
        lambda work, fmts, precs: export_cfm_graphs(model, voc, work, fmts, precs),
        lambda work, graphs: verify_cfm(work, graphs, model, voc),
        lambda audio: cfm_audio_section(model, voc),
        sources,
    )


def export_bundle(
    gpt: str | os.PathLike[str],
    sovits: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    formats: Sequence[str] = FORMATS,
    precisions: Sequence[str] = ("fp32",),
    verify: bool = True,
    support: str | None = None,
    voices: str = "refuse",
    vocoder: str | os.PathLike[str] | None = None,
    sovits_base: str | os.PathLike[str] | None = None,
    progress: Progress = _LOGGER.info,
) -> Manifest:
    """Export one voice (a GPT ``.ckpt`` and a SoVITS ``.pth``) to a bundle directory.

    Args:
        gpt: upstream GPT checkpoint.
        sovits: upstream SoVITS checkpoint of the same symbol generation.
        out: bundle directory to create (an existing bundle there is replaced).
        formats: any of ``onnx``, ``openvino``.
        precisions: any of ``fp32``, ``fp16``, ``bf16``, ``int8``. fp32 is always exported (the
            reference the others are checked against) but kept only when listed, wherever a
            graph has a lower precision (see ``drop_reference_variants``).
        verify: run the parity checks against PyTorch and refuse to write on failure.
        support: path of the support bundle (HuBERT/BERT/SV) this voice uses, recorded
            relative to ``out`` for the runtime to find.
        voices: an existing bundle's saved voices: ``keep`` (carried over), ``drop``, or
            ``refuse`` to export over them (the default).
        vocoder: v3/v4/v5 only: upstream's vocoder, the BigVGAN model folder (v3) or
            ``gsv-v4-pretrained/vocoder.pth`` (v4, v5).
        sovits_base: LoRA fine-tunes (v3/v4/v5) only: the full pretrained SoVITS they were
            trained from (``s2Gv3.pth``, ``s2Gv4.pth``, ``s2Gv5dev.pth``, ``s2Gv5turbo.pth``);
            the LoRA factors are merged into it.
        progress: called with one line per stage.

    Returns:
        The manifest written.

    Raises:
        CheckpointError, InputError, BundleError, ParityError: nothing is left at ``out``.
    """
    from gsv_export.gpt import export_gpt_graphs, verify_gpt
    from gsv_models.load import load_model

    fmts = _choices(formats, FORMATS, "format")
    precs = _choices(precisions, PRECISIONS, "precision")
    out_path = Path(out)
    check_voices(out_path, voices)  # before loading anything
    with _stage(progress, "loading checkpoints"):
        gpt_ckpt, gpt_model = load_model(gpt, "gpt")
        sovits_ckpt, sovits_model = load_model(sovits, "sovits", base=sovits_base)
        _check_pair(gpt_ckpt, sovits_ckpt, vocoder)
        acoustic = _acoustic(sovits_ckpt, sovits_model, vocoder)
    with staging_dir(out_path, voices) as work:
        with _stage(progress, "exporting GPT graphs"):
            graphs = export_gpt_graphs(gpt_model, work, fmts, precs)
        with _stage(progress, f"exporting {acoustic.label} graphs"):
            graphs.update(acoustic.export(work, fmts, precs))
        share_onnx_weights(work, graphs)  # before the parity check, which reads the final files
        report = ParityReport()
        if verify:
            with _stage(progress, "checking parity against PyTorch"):
                report.extend(verify_gpt(work, graphs, gpt_model))
                report.extend(acoustic.verify(work, graphs))
            _report(report, progress)
            report.raise_if_failed()
        if support is not None:
            support = os.path.relpath(Path(support).resolve(), out_path.resolve())
        sections = _voice_sections(gpt_ckpt, sovits_ckpt, support)
        sections["audio"] = acoustic.audio(sections["audio"])
        sections["source"].update(acoustic.sources)
        sections["parity"] = {"checks": [c.to_dict() for c in report.checks]}
        if "fp32" not in {p.strip().lower() for p in precisions}:
            graphs = drop_reference_variants(work, graphs)
            share_onnx_weights(work, graphs)  # compact: the dropped graphs' weights go too
        manifest = write_manifest(work, "voice", graphs, **sections)
    progress(f"wrote {out_path}")
    return manifest


def export_support_bundle(
    hubert: str | os.PathLike[str],
    bert: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    sv: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = FORMATS,
    precisions: Sequence[str] = ("fp32",),
    verify: bool = True,
    progress: Progress = _LOGGER.info,
) -> Manifest:
    """Export the models all voices share (HuBERT, BERT, and the SV model for v2Pro/ProPlus).

    Raises:
        CheckpointError, InputError, BundleError, ParityError: nothing is left at ``out``.
    """
    from gsv_export.support import (
        check_choices,
        export_support_graphs,
        load_support_modules,
        verify_support,
    )

    fmts = _choices(formats, FORMATS, "format")
    precs = _choices(precisions, PRECISIONS, "precision")
    check_choices(fmts, precs)  # before the (slow) model loading
    names = ["HuBERT"] + (["BERT"] if bert else []) + (["the speaker model"] if sv else [])
    with _stage(progress, "loading " + ", ".join(names)):
        modules = load_support_modules(hubert, bert, sv)
    with staging_dir(Path(out)) as work:
        with _stage(progress, "exporting support graphs"):
            graphs, info = export_support_graphs(
                hubert, bert, sv, work, fmts, precs, modules=modules
            )
        report = ParityReport()
        if verify:
            with _stage(progress, "checking parity against PyTorch"):
                report.extend(verify_support(work, graphs, modules))
            _report(report, progress)
            report.raise_if_failed()
        manifest = write_manifest(
            work,
            "support",
            graphs,
            model={"family": "gpt-sovits-support", "notes": info.get("notes", [])},
            source=info["source"],
            audio=info["audio"],
            text=info["text"],
            parity={"checks": [c.to_dict() for c in report.checks]},
        )
    progress(f"wrote {out}")
    return manifest
