"""The ``gsv`` command line: one small function per verb; heavy modules load inside the verb."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any

import click

from gsv_runtime.errors import GsvError, InputError

_VERSIONS = ["v1", "v2", "v2Pro", "v2ProPlus"]
# gsv bench makes random v3/v4/v5 voices too (gsv_bench.assets.RANDOM_VERSIONS).
_BENCH_VERSIONS = [*_VERSIONS, "v3", "v4", "v5dev", "v5turbo"]


class _Group(click.Group):
    """Turns every GsvError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except GsvError as exc:
            click.echo(f"error: {printable(str(exc))}", err=True)
            ctx.exit(1)
        except ImportError as exc:
            click.echo(f"error: {exc} (install the extra that provides it)", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Verbose logging.")
def main(debug: bool) -> None:
    """gsv-rt: export GPT-SoVITS voices and run them without torch."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)


@main.command("make-checkpoint")
@click.argument("version", type=click.Choice(_VERSIONS, case_sensitive=False))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to write gpt.ckpt, sovits.pth (and sv.ckpt for Pro versions) into.",
)
@click.option("--size", type=click.Choice(["tiny", "full"]), default="full", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fp32", is_flag=True, help="Store fp32 weights (upstream fine-tunes store fp16).")
def make_checkpoint_cmd(version: str, out_dir: Path, size: str, seed: int, fp32: bool) -> None:
    """Write random-weight checkpoints in upstream's exact file formats (for tests and demos)."""
    from gsv_models.testing import make_voice_checkpoints
    from gsv_models.version import ModelVersion

    paths = make_voice_checkpoints(
        ModelVersion.parse(version), out_dir, size=size, seed=seed, half=not fp32
    )
    for path in paths:
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@main.command("demo")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Working folder (checkpoints are cached there).",
)
@click.option(
    "--version", type=click.Choice(_VERSIONS, case_sensitive=False), default="v2", show_default=True
)
@click.option("--size", type=click.Choice(["tiny", "full"]), default="full", show_default=True)
@click.option("--verify/--no-verify", default=True, show_default=True)
def demo_cmd(out: Path, version: str, size: str, verify: bool) -> None:
    """Random checkpoints → export → speech on every installed backend, with RTF."""
    from gsv_export.demo import run_demo
    from gsv_export.logs import quiet_export

    with quiet_export(_export_log(out)) as progress:
        for line in run_demo(out, version, size, verify, progress=progress):
            progress(line)


def _export_log(out: Path) -> Path:
    """Where an export's library output (torch/ONNX/OpenVINO warnings) goes: beside ``out``."""
    return out.resolve().parent / f".{out.name}.export.log"


@main.command("inspect")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--forward/--no-forward",
    default=True,
    show_default=True,
    help="Also run a PyTorch forward pass of each model.",
)
@click.option(
    "--sovits-base",
    type=click.Path(path_type=Path),
    help="Inspect one SoVITS LoRA fine-tune merged into this pretrained model (as gsv export).",
)
def inspect_cmd(checkpoints: tuple[Path, ...], forward: bool, sovits_base: Path | None) -> None:
    """Load upstream checkpoints, report kind, version and parameters, and run a forward."""
    from gsv_models.inspect import describe

    if sovits_base is not None and len(checkpoints) != 1:
        raise InputError("--sovits-base goes with one checkpoint: the LoRA fine-tune it extends")

    for path in checkpoints:
        for line in describe(path, forward=forward, base=sovits_base):
            click.echo(line)


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v.strip()]


_FORMAT_OPTION = click.option(
    "--format",
    "formats",
    default="onnx,openvino",
    show_default=True,
    help="Comma-separated: onnx, openvino.",
)
_PRECISION_OPTION = click.option(
    "--precision",
    "precisions",
    default="fp32",
    show_default=True,
    help="Comma-separated: fp32, fp16, bf16, int8 (fp32 is always written).",
)
_VOICE_PRECISION_OPTION = click.option(
    "--precision",
    "precisions",
    default="fp32",
    show_default=True,
    help="Comma-separated: fp32, fp16, bf16, int8. Without fp32, graphs that have a lower "
    "precision carry no fp32 variant (a smaller edge bundle).",
)


@main.command("export")
@click.option("--gpt", type=click.Path(path_type=Path), required=True, help="GPT .ckpt file.")
@click.option("--sovits", type=click.Path(path_type=Path), required=True, help="SoVITS .pth.")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Voice bundle directory to write.",
)
@_FORMAT_OPTION
@_VOICE_PRECISION_OPTION
@click.option(
    "--support",
    type=click.Path(path_type=Path),
    help="Support bundle (HuBERT/BERT/SV) this voice uses.",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check every graph against PyTorch before writing.",
)
@click.option(
    "--voices",
    type=click.Choice(["keep", "drop"]),
    help="Exporting over a bundle with saved voices: carry them over or discard them "
    "(without this option such an export is refused).",
)
@click.option(
    "--vocoder",
    type=click.Path(path_type=Path),
    help="v3/v4/v5 only: the BigVGAN model folder (v3) or gsv-v4-pretrained/vocoder.pth (v4, v5).",
)
@click.option(
    "--sovits-base",
    type=click.Path(path_type=Path),
    help="LoRA fine-tunes (v3/v4/v5) only: the pretrained s2Gv3.pth / s2Gv4.pth / "
    "s2Gv5dev.pth / s2Gv5turbo.pth they extend.",
)
def export_cmd(
    gpt: Path,
    sovits: Path,
    out: Path,
    formats: str,
    precisions: str,
    support: Path | None,
    verify: bool,
    voices: str | None,
    vocoder: Path | None,
    sovits_base: Path | None,
) -> None:
    """Export a voice (GPT + SoVITS checkpoints) to an ONNX/OpenVINO bundle."""
    from gsv_export import export_bundle
    from gsv_export.logs import quiet_export

    with quiet_export(_export_log(out)) as progress:
        export_bundle(
            gpt,
            sovits,
            out,
            formats=_csv(formats),
            precisions=_csv(precisions),
            verify=verify,
            support=str(support) if support else None,
            voices=voices or "refuse",
            vocoder=vocoder,
            sovits_base=sovits_base,
            progress=progress,
        )


@main.command("export-support")
@click.option(
    "--hubert", type=click.Path(path_type=Path), required=True, help="chinese-hubert-base folder."
)
@click.option(
    "--bert",
    type=click.Path(path_type=Path),
    help="chinese-roberta-wwm-ext-large folder (needed for Chinese text).",
)
@click.option(
    "--sv",
    type=click.Path(path_type=Path),
    help="ERes2NetV2 speaker checkpoint (v2Pro/v2ProPlus voices).",
)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@_FORMAT_OPTION
@_PRECISION_OPTION
@click.option("--verify/--no-verify", default=True, show_default=True)
def export_support_cmd(
    hubert: Path,
    bert: Path | None,
    sv: Path | None,
    out: Path,
    formats: str,
    precisions: str,
    verify: bool,
) -> None:
    """Export the models all voices share (HuBERT, BERT, speaker model) to a support bundle."""
    from gsv_export import export_support_bundle
    from gsv_export.logs import quiet_export

    with quiet_export(_export_log(out)) as progress:
        export_support_bundle(
            hubert,
            bert,
            out,
            sv=sv,
            formats=_csv(formats),
            precisions=_csv(precisions),
            verify=verify,
            progress=progress,
        )


_G2PW_OPTION = click.option(
    "--g2pw", type=click.Path(path_type=Path), help="Local G2PWModel folder (zh)."
)
_JA_USERDICT_OPTION = click.option(
    "--ja-userdict",
    type=click.Path(path_type=Path),
    help="Japanese MeCab user dictionary CSV (upstream's ja_userdic/userdict.csv).",
)


@main.command("info")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--verify", is_flag=True, help="Also check every file's sha256.")
@click.option(
    "--system", is_flag=True, help="Also show what --precision auto runs on this CPU and why."
)
@_G2PW_OPTION
@_JA_USERDICT_OPTION
def info_cmd(
    bundle: Path | None,
    verify: bool,
    system: bool,
    g2pw: Path | None,
    ja_userdict: Path | None,
) -> None:
    """Show this machine's backends and text frontend, and a bundle's manifest."""
    from gsv_runtime.info import (
        describe_bundle,
        describe_choices,
        describe_frontend,
        describe_machine,
    )

    for line in describe_machine():
        click.echo(line)
    if system:
        for line in describe_choices():
            click.echo(line)
    for line in describe_frontend(g2pw, ja_userdict):
        click.echo(line)
    if bundle is not None:
        for line in describe_bundle(bundle, verify_hashes=verify):
            click.echo(printable(line))


def printable(text: str) -> str:
    """``text`` with control characters escaped, so strings from a manifest cannot drive the
    terminal (escape sequences, carriage returns)."""
    return "".join(
        c if c.isprintable() or c == "\t" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


_RUNTIME_OPTIONS = [
    click.option(
        "--backend",
        default="auto",
        show_default=True,
        help="auto (per stage, the fastest installed for this CPU), onnxruntime, openvino, or "
        "per stage: gpt=onnxruntime,acoustic=openvino.",
    ),
    click.option(
        "--device",
        default="cpu",
        show_default=True,
        help="cpu, cuda[:N] (onnxruntime) or an OpenVINO device (GPU, NPU).",
    ),
    click.option("--threads", type=int, help="Intra-op threads per graph (default: all cores)."),
    click.option(
        "--precision",
        default="auto",
        show_default=True,
        help="Graph variant: auto (per stage, the fastest the bundle holds for this CPU), fp32, "
        "fp16, bf16 (OpenVINO), int8, or per stage: gpt=int8,acoustic=bf16.",
    ),
    click.option(
        "--support",
        type=click.Path(path_type=Path),
        help="Support bundle (default: the one the voice bundle names).",
    ),
    _G2PW_OPTION,
    _JA_USERDICT_OPTION,
]


_RUNTIME_KEYS = ("backend", "device", "threads", "precision", "support", "g2pw", "ja_userdict")


def _runtime_options(func):  # type: ignore[no-untyped-def]
    """Add the runtime options; the command gets them together as ``runtime`` (a dict)."""

    @functools.wraps(func)
    def collect(**kwargs: Any) -> Any:
        runtime = {key: kwargs.pop(key) for key in _RUNTIME_KEYS}
        return func(runtime=runtime, **kwargs)

    for option in reversed(_RUNTIME_OPTIONS):
        collect = option(collect)
    return collect


def _synthesizer(bundle: Path, runtime: dict[str, Any], warm_up: tuple[str, str] | None = None):  # type: ignore[no-untyped-def]
    """Load the voice with the runtime options; ``warm_up`` (text, language) is prepared
    meanwhile (see :class:`~gsv_runtime.engine.model.VoiceModel`)."""
    from gsv_runtime.synthesizer import Synthesizer

    if runtime["ja_userdict"] is not None:
        from gsv_runtime.text import load_ja_user_dictionary

        load_ja_user_dictionary(runtime["ja_userdict"])
    return Synthesizer.load(
        bundle,
        runtime["backend"],
        runtime["device"],
        runtime["threads"],
        runtime["precision"],
        runtime["support"],
        runtime["g2pw"],
        warm_up=warm_up,
    )


@main.group("voice")
def voice_group() -> None:
    """Manage the voices (prepared references) saved in a voice bundle."""


@voice_group.command("add")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "-r",
    "--ref",
    "ref_audio",
    type=click.Path(path_type=Path),
    required=True,
    help="Reference audio (3–10 s; wav, flac, ogg, mp3).",
)
@click.option("-p", "--prompt-text", default="", help="What the reference says.")
@click.option("--prompt-lang", default="zh", show_default=True)
@click.option("--name", help="Voice name (default: the reference file's name).")
@click.option(
    "--aux-ref",
    "aux_refs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="More references of the same speaker (ge averaged).",
)
@click.option("--any-length", is_flag=True, help="Accept references outside 3–10 s.")
@_runtime_options
def voice_add_cmd(
    bundle: Path,
    ref_audio: Path,
    prompt_text: str,
    prompt_lang: str,
    name: str | None,
    aux_refs: tuple[Path, ...],
    any_length: bool,
    runtime: dict[str, Any],
) -> None:
    """Prepare a reference once and store it in BUNDLE (no HuBERT or audio needed later)."""
    synth = _synthesizer(bundle, runtime, (prompt_text, prompt_lang) if prompt_text else None)
    voice = synth.voice(
        ref_audio,
        prompt_text,
        prompt_lang,
        aux_ref_audio_paths=aux_refs,
        check_duration=not any_length,
    )
    folder = voice.save(bundle, name or ref_audio.stem)
    click.echo(
        f"saved voice {folder.name} ({len(voice.prompt_tokens)} prompt tokens, "
        f"{len(voice.prompt_phones)} prompt phones, {voice.ge.shape[0]} reference(s))"
    )


@voice_group.command("list")
@click.argument("bundle", type=click.Path(path_type=Path))
def voice_list_cmd(bundle: Path) -> None:
    """List the voices saved in BUNDLE."""
    from gsv_runtime.voice import saved_voices

    for name in saved_voices(bundle):
        click.echo(name)


def _read_text(text: str | None, text_file: Path | None) -> str:
    if (text is None) == (text_file is None):
        raise InputError("give the text with -t TEXT or -f FILE (- for standard input)")
    if text_file is None:
        return str(text)
    if str(text_file) == "-":
        return click.get_text_stream("stdin").read()
    try:
        return text_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{text_file}: cannot read text ({exc})") from None


@main.command("tts")
@click.option(
    "-m",
    "--model",
    "bundle",
    type=click.Path(path_type=Path),
    required=True,
    help="Voice bundle directory.",
)
@click.option("-v", "--voice", "voice_name", help="A voice saved with `gsv voice add`.")
@click.option(
    "-r",
    "--ref",
    "ref_audio",
    type=click.Path(path_type=Path),
    help="Reference audio (instead of a saved voice).",
)
@click.option("-p", "--prompt-text", default="", help="What the reference says.")
@click.option("--prompt-lang", default="zh", show_default=True)
@click.option("-t", "--text", help="Text to speak.")
@click.option(
    "-f",
    "--file",
    "text_file",
    type=click.Path(path_type=Path),
    help="UTF-8 text file to speak (- for standard input).",
)
@click.option(
    "--lang",
    default="zh",
    show_default=True,
    help="zh, en, ja, ko, yue, auto, auto_yue, all_zh, all_ja, all_ko, all_yue.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output WAV (- for standard output).",
)
@click.option("--seed", type=int, default=-1, show_default=True, help="-1: random.")
@click.option("--top-k", type=int)
@click.option("--top-p", type=float)
@click.option("--temperature", type=float)
@click.option("--repetition-penalty", type=float)
@click.option("--noise-scale", type=float)
@click.option("--speed", "speed_factor", type=float, default=1.0, show_default=True)
@click.option(
    "--sample-steps",
    type=int,
    help="v3/v4/v5: Euler steps of the flow (default: the bundle's, 32; v5turbo 4; v5 takes "
    "4, 8, 16, 32).",
)
@click.option(
    "--cfg-rate",
    type=float,
    help="v3/v4/v5: classifier-free guidance of the flow (default: the bundle's, 0; v5dev 1.3; "
    "v5 takes [0, 2]).",
)
@click.option(
    "--parallel-infer",
    is_flag=True,
    help="v3/v4: upstream's parallel chunking (api_v2's default) instead of the sequential one "
    "(v5 always chunks as upstream's synthesize_v5_mel).",
)
@click.option("--split", "text_split_method", default="cut1", show_default=True, help="cut0–cut5.")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--fragment-interval", type=float, default=0.3, show_default=True)
@click.option("--ref-free", is_flag=True, help="Ignore the prompt text and tokens.")
@click.option("--aux-ref", "aux_refs", multiple=True, type=click.Path(path_type=Path))
@click.option("--any-length", is_flag=True, help="Accept references outside 3–10 s.")
@click.option(
    "--per-line",
    is_flag=True,
    help="Each line of -f FILE is one utterance (a .jsonl file: objects with text and "
    "optional lang, out, options); -o is then a folder with one WAV per line. All lines run "
    "through the engine together.",
)
@click.option(
    "--stream",
    type=click.Choice(["segment", "token"]),
    default="segment",
    show_default=True,
    help="Chunking of the audio: per text segment, or token windows as they decode.",
)
@_runtime_options
def tts_cmd(
    bundle: Path,
    voice_name: str | None,
    ref_audio: Path | None,
    prompt_text: str,
    prompt_lang: str,
    text: str | None,
    text_file: Path | None,
    lang: str,
    out: Path,
    aux_refs: tuple[Path, ...],
    any_length: bool,
    per_line: bool,
    runtime: dict[str, Any],
    **options: Any,
) -> None:
    """Speak text with a voice bundle and write a WAV file (or one per line: --per-line)."""
    import time

    import numpy as np

    from gsv_runtime.audio import write_wav

    if (voice_name is None) == (ref_audio is None):
        raise InputError("give a saved voice (-v NAME) or a reference (-r ref.wav -p TEXT)")
    content = _read_text(text, text_file)
    options = {k: v for k, v in options.items() if v is not None}
    stream = options.pop("stream")
    voice_args = {
        "ref_audio": ref_audio,
        "prompt_text": prompt_text,
        "prompt_lang": prompt_lang,
        "check_duration": not any_length,
        "aux_ref_audio_paths": aux_refs,
    }
    lines = _batch_lines(content, text_file, lang, options, voice_args) if per_line else None
    start = time.perf_counter()
    first = lines[0][1] if lines else {"text": content, "lang": lang}
    synth = _synthesizer(bundle, runtime, (first["text"], first["lang"]))
    loaded = time.perf_counter()
    if lines is not None:
        _tts_batch(synth, lines, voice_name, out, start, loaded)
        return
    report: dict[str, Any] = {}
    chunks = synth.stream(
        content, lang, voice_name, report=report, stream=stream, **voice_args, **options
    )
    err = click.get_text_stream("stderr")
    with click.progressbar(
        chunks, length=report["segments"], label="synthesizing", file=err
    ) as bar:
        samples = [chunk.samples for chunk in bar]
    audio = np.concatenate(samples)
    write_wav(out, audio, synth.sample_rate)
    wall = time.perf_counter() - loaded
    seconds = len(audio) / synth.sample_rate
    click.echo(
        f"{out}: {seconds:.2f} s of audio in {wall:.2f} s, RTF {wall / seconds:.3f} "
        f"(load {loaded - start:.2f} s; {synth.backend} {synth.runtime.device})",
        err=True,
    )


def _batch_lines(
    content: str,
    source: Path | None,
    lang: str,
    options: dict[str, Any],
    voice_args: dict[str, Any],
) -> list[tuple[str, dict[str, Any]]]:
    """``--per-line``: one request per non-empty line (plain text, or a JSON object with
    ``text`` and optionally ``lang``, ``out`` and options), all checked before any runs.

    Returns ``(file name, request keyword arguments)`` per line.
    """
    import json

    from gsv_runtime.engine import SynthesisRequest

    jsonl = source is not None and source.suffix.lower() in (".jsonl", ".ndjson")
    out: list[tuple[str, dict[str, Any]]] = []
    names: set[str] = set()
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        item: dict[str, Any] = {"text": line.strip()}
        if jsonl:
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise InputError(f"line {number}: not JSON ({exc})") from None
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise InputError(f'line {number}: expected an object with a "text" string')
        name = str(item.pop("out", f"{len(out) + 1:04d}.wav"))
        if Path(name).name != name or not name.endswith(".wav") or name in names:
            raise InputError(f"line {number}: out must be a unique plain file name *.wav: {name!r}")
        names.add(name)
        kwargs = {**voice_args, **options, "lang": lang, **item}
        try:
            SynthesisRequest.from_options(**{**kwargs, "voice": None})
        except (InputError, TypeError) as exc:
            raise InputError(f"line {number}: {exc}") from None
        out.append((name, kwargs))
    if not out:
        raise InputError("the text file has no non-empty line")
    return out


def _tts_batch(
    synth: Any,
    lines: list[tuple[str, dict[str, Any]]],
    voice_name: str | None,
    out_dir: Path,
    start: float,
    loaded: float,
) -> None:
    """Run every line through the engine at once; write each WAV as it finishes."""
    import time

    from gsv_runtime.audio import write_wav
    from gsv_runtime.engine import SynthesisRequest

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: with --per-line, -o names a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    voice = synth.saved_voice(voice_name) if voice_name else None
    requests = []
    for _, kwargs in lines:
        args = dict(kwargs)
        text, lang = args.pop("text"), args.pop("lang")
        requests.append(SynthesisRequest.from_options(text, lang, voice, **args))
    failed = 0
    seconds = 0.0
    err = click.get_text_stream("stderr")
    results = synth.synthesize_many(requests, ordered=False)
    with click.progressbar(results, length=len(requests), label="synthesizing", file=err) as bar:
        for index, result in bar:
            name = lines[index][0]
            if isinstance(result, Exception):
                failed += 1
                click.echo(f"\nerror: {name}: {result}", err=True)
                continue
            write_wav(out_dir / name, result.samples, result.sample_rate)
            seconds += result.seconds
    wall = time.perf_counter() - loaded
    click.echo(
        f"{out_dir}: {len(requests) - failed} files, {seconds:.2f} s of audio in {wall:.2f} s, "
        f"RTF {wall / max(seconds, 1e-9):.3f} (load {loaded - start:.2f} s)",
        err=True,
    )
    if failed:
        raise InputError(f"{failed} of {len(requests)} lines failed")


@main.command("serve")
@click.option(
    "--voices",
    "voices_file",
    type=click.Path(path_type=Path),
    help="voices.toml: named voices (bundle, saved voice or reference, default options).",
)
@click.option(
    "-m",
    "--model",
    "bundles",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Voice bundle to serve with all its saved voices (repeatable).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=9880, show_default=True)
@click.option("--api-key", envvar="GSV_API_KEY", help="Require 'Authorization: Bearer KEY'.")
@click.option(
    "--allow-dir",
    "allow_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder client-named paths (ref_audio_path, weights) may come from (repeatable); "
    "without it clients can name no path.",
)
@click.option("--max-queued", type=int, default=64, show_default=True, help="Queue bound.")
@click.option("--max-rows", type=int, help="Live GPT rows per model (default: from memory).")
@click.option("--backend", default="auto", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, help="Intra-op threads per graph.")
@click.option("--precision", default="auto", show_default=True)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Serve on Ray Serve: engine replicas behind the same routes (extra gsv-rt[ray]).",
)
@click.option("--ray-address", help="Join this Ray cluster (default: start one on this machine).")
@click.option("--replicas", type=int, default=1, show_default=True, help="Engine replicas (--ray).")
@click.option("--max-replicas", type=int, help="Autoscale up to this many replicas (--ray).")
@click.option("--replica-cpus", type=float, default=1.0, show_default=True, help="CPUs/replica.")
@click.option("--replica-gpus", type=float, default=0.0, show_default=True, help="GPUs/replica.")
@click.option(
    "--voices-per-replica",
    type=int,
    default=4,
    show_default=True,
    help="Bundles a replica keeps loaded (least recently used unloaded first).",
)
def serve_cmd(
    voices_file: Path | None,
    bundles: tuple[Path, ...],
    host: str,
    port: int,
    api_key: str | None,
    allow_dirs: tuple[Path, ...],
    max_queued: int,
    max_rows: int | None,
    backend: str,
    device: str,
    threads: int | None,
    precision: str,
    use_ray: bool,
    ray_address: str | None,
    replicas: int,
    max_replicas: int | None,
    replica_cpus: float,
    replica_gpus: float,
    voices_per_replica: int,
) -> None:
    """Serve voices over HTTP: upstream api_v2 (/tts) and OpenAI (/v1/audio/speech)."""
    from gsv_runtime.config import RuntimeConfig
    from gsv_runtime.engine import Engine, EngineConfig
    from gsv_runtime.server import ServerSettings, create_app, load_catalog, make_server

    if voices_file is None and not bundles:
        raise InputError("give --voices voices.toml or -m BUNDLE")
    for folder in allow_dirs:
        if not folder.is_dir():
            raise InputError(f"--allow-dir {folder}: no such folder")
    runtime = RuntimeConfig(backend=backend, device=device, threads=threads, precision=precision)
    if use_ray:
        from gsv_runtime.server.ray_serve import (
            GatewaySetup,
            RayServeOptions,
            build_app,
            run_local,
        )

        options = RayServeOptions(
            replicas=replicas,
            max_replicas=max_replicas,
            replica_cpus=replica_cpus,
            replica_gpus=replica_gpus,
            voices_per_replica=voices_per_replica,
            max_queued_requests=max_queued,
        )
        setup = GatewaySetup(
            voices_file,
            tuple(bundles),
            ServerSettings(allow_dirs=tuple(allow_dirs), api_key=api_key),
            options.retries,
        )
        engine_config = EngineConfig(max_queued=max_queued, max_rows=max_rows)
        app = build_app(setup, runtime, engine_config, options)
        click.echo(f"serving on Ray Serve, {replicas} replica(s), http://{host}:{port}", err=True)
        run_local(app, host, port, ray_address)
        return
    catalog = load_catalog(voices_file, list(bundles), runtime)
    engine = Engine(dict(catalog.models), EngineConfig(max_queued=max_queued, max_rows=max_rows))
    settings = ServerSettings(allow_dirs=tuple(allow_dirs), api_key=api_key)
    server = make_server(create_app(engine, catalog, settings), host, port)
    click.echo(
        f"serving {len(catalog.voices)} voice(s) of {len(catalog.models)} model(s) on "
        f"http://{host}:{port}",
        err=True,
    )
    try:
        server.run()
    finally:
        engine.close()


@main.command("phonemize")
@click.argument("text")
@click.option(
    "--lang",
    default="zh",
    show_default=True,
    help="zh, en, ja, ko, yue, auto, auto_yue, all_zh, all_ja, all_ko, all_yue.",
)
@click.option(
    "--version",
    "symbols_version",
    type=click.Choice(["v1", "v2"]),
    default="v2",
    show_default=True,
    help="Symbol table (v1 models use v1).",
)
@click.option(
    "--split",
    "split_method",
    default="cut5",
    show_default=True,
    help="Text split method cut0–cut5.",
)
@_G2PW_OPTION
@click.option(
    "--g2pw-tokenizer",
    type=click.Path(path_type=Path),
    help="chinese-roberta-wwm-ext-large tokenizer.json (or its folder) for --g2pw; default: "
    "tokenizer.json inside the G2PWModel folder.",
)
@_JA_USERDICT_OPTION
def phonemize_cmd(
    text: str,
    lang: str,
    symbols_version: str,
    split_method: str,
    g2pw: Path | None,
    g2pw_tokenizer: Path | None,
    ja_userdict: Path | None,
) -> None:
    """Print the segments, normalised text, phones, ids and word2ph of TEXT as JSON."""
    import json

    from gsv_runtime.text import load_g2pw, load_ja_user_dictionary, phonemize

    if ja_userdict is not None:
        load_ja_user_dictionary(ja_userdict)
    predictor = load_g2pw(g2pw, g2pw_tokenizer) if g2pw is not None else None
    result = phonemize(text, lang, symbols_version, split_method=split_method, g2pw=predictor)
    click.echo(json.dumps(result.to_json(), ensure_ascii=False, indent=2))


@main.group("bench", invoke_without_command=True)
@click.option("--bundle", type=click.Path(path_type=Path), help="Voice bundle to measure.")
@click.option(
    "--random",
    type=click.Choice(_BENCH_VERSIONS),
    help="Make full-size random checkpoints of VERSION and export them (cached; needs the "
    "export extra the first time).",
)
@click.option("--quick", is_flag=True, help="The quick preset: under a minute once cached.")
@click.option("--preset", type=click.Choice(["quick", "standard", "gpu"]), help="Named sweep.")
@click.option("--voice", help="Saved voice of the bundle (else one is prepared from --ref).")
@click.option("--ref", type=click.Path(path_type=Path), help="Reference clip (3-10 s).")
@click.option("--prompt-text", help="Transcript of --ref.")
@click.option("--prompt-lang", default="zh", show_default=True)
@click.option("--support", type=click.Path(path_type=Path), help="Support bundle.")
@click.option("--gpt", type=click.Path(path_type=Path), help="GPT .ckpt for the torch baseline.")
@click.option("--sovits", type=click.Path(path_type=Path), help="SoVITS .pth for the baseline.")
@click.option("--text", "text_file", type=click.Path(path_type=Path), help="One request per line.")
@click.option("--langs", help="Built-in texts: comma-separated en, zh, ja, ko.")
@click.option("--sentences", type=int, help="Use the first N sentences of each built-in text.")
@click.option("--fixed-length", type=int, help="Decode N tokens per sentence (EOS masked).")
@click.option(
    "--engines",
    help="Comma-separated: torch, onnxruntime, openvino, auto (the runtime's backend per stage).",
)
@click.option("--devices", help="Comma-separated: cpu, gpu.")
@click.option("--precisions", help="Comma-separated: fp32, fp16, bf16, int8, auto.")
@click.option("--threads", help="Comma-separated thread counts (0 = all cores).")
@click.option("--batch", help="Comma-separated GPT batch sizes.")
@click.option("--concurrency", help="Comma-separated numbers of requests in flight.")
@click.option("--sample-steps", help="v3/v4/v5: comma-separated flow-matching steps (e.g. 4,8,32).")
@click.option(
    "--vocoder",
    type=click.Path(path_type=Path),
    help="v3/v4/v5 --bundle: upstream's vocoder (BigVGAN folder or vocoder.pth) for the torch "
    "baseline.",
)
@click.option("--warmup", type=int, help="Untimed requests per engine.")
@click.option("--repeats", type=int, help="Timed passes over the texts.")
@click.option("--seed", type=int)
@click.option("--isolate/--no-isolate", default=None, help="One process per configuration.")
@click.option("--reference/--no-reference", default=None, help="Time voice preparation.")
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), default=Path("gsv-bench"), show_default=True
)
@click.option("--fresh", is_flag=True, help="Start results.jsonl afresh instead of appending.")
@click.option("--label", help="Machine name in merged reports.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Default ~/.cache/gsv-rt/bench.")
@click.option("--charts/--no-charts", default=True, show_default=True)
@click.pass_context
def bench_cmd(ctx: click.Context, **options: object) -> None:
    """Measure RTF, TTFA, stages and memory per backend/device/precision/threads/batch."""
    if ctx.invoked_subcommand is not None:
        return
    from gsv_bench.cli import run_cli

    run_cli(options)


@bench_cmd.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), default=Path("gsv-bench"), show_default=True
)
@click.option("--charts/--no-charts", default=True, show_default=True)
def bench_report_cmd(files: tuple[Path, ...], out: Path, charts: bool) -> None:
    """Merge results.jsonl files (e.g. a CPU and a GPU machine) into report.md and charts."""
    from gsv_bench.cli import report_cli

    report_cli(files, out, charts)


@bench_cmd.command("serving")
@click.option("--bundle", type=click.Path(path_type=Path), help="Voice bundle to measure.")
@click.option("--voice", help="Saved voice of --bundle.")
@click.option(
    "--random",
    type=click.Choice(_VERSIONS),
    help="Full-size random checkpoints of VERSION, exported and cached (as for gsv bench).",
)
@click.option("--backends", default="onnxruntime,openvino", show_default=True)
@click.option("--precision", default="fp32", show_default=True)
@click.option("--concurrency", default="1,2,4,8,16,32", show_default=True)
@click.option("--modes", default="engine,sessions", show_default=True)
@click.option("--tokens", type=int, default=50, show_default=True, help="Tokens per request.")
@click.option("--stream", type=click.Choice(["segment", "token"]), default="segment")
@click.option("--acoustic-batch", type=int, default=1, show_default=True)
@click.option("--gpt-threads", type=int, help="GPT stage threads (default: all cores).")
@click.option("--acoustic-threads", type=int, help="Acoustic stage threads (default: all).")
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), default=Path("gsv-bench"), show_default=True
)
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Default ~/.cache/gsv-rt/bench.")
@click.option("--charts/--no-charts", default=True, show_default=True)
def bench_serving_cmd(
    bundle: Path | None,
    voice: str | None,
    random: str | None,
    backends: str,
    precision: str,
    concurrency: str,
    modes: str,
    tokens: int,
    stream: str,
    acoustic_batch: int,
    gpt_threads: int | None,
    acoustic_threads: int | None,
    out: Path,
    cache_dir: Path | None,
    charts: bool,
) -> None:
    """Throughput against concurrency: the engine's continuous batching vs N sessions."""
    from gsv_bench.serving import run_serving, write_serving
    from gsv_runtime.engine import StageThreads

    if (bundle is None) == (random is None):
        raise InputError("give --bundle DIR --voice NAME, or --random VERSION")
    if random is not None:
        from gsv_bench.assets import random_assets
        from gsv_runtime.variants import PRECISIONS, parse_precision

        stored = set(parse_precision(precision).values())
        wanted = tuple(p for p in PRECISIONS if p in stored or ("auto" in stored and p != "fp16"))
        assets = random_assets(random, cache_dir, precisions=wanted, progress=click.echo)
        voice_dir, voice_root, name = assets.voice_dir, assets.voice_root, assets.voice_name
    else:
        if voice is None:
            raise InputError("--bundle needs --voice (a voice saved with gsv voice add)")
        voice_dir = voice_root = str(bundle)
        name = voice
    try:
        counts = [int(n) for n in concurrency.split(",")]
    except ValueError:
        raise InputError(f"--concurrency takes comma-separated integers: {concurrency}") from None
    threads = StageThreads(gpt_threads, acoustic_threads, 1)
    records = []
    for backend in backends.split(","):
        records += run_serving(
            voice_dir,
            voice_root,
            name,
            backend=backend.strip(),
            precision=precision,
            concurrency=counts,
            modes=modes.split(","),
            tokens=tokens,
            threads=threads,
            stream=stream,
            acoustic_batch=acoustic_batch,
            progress=click.echo,
        )
    write_serving(records, out, charts)
    click.echo(f"wrote {out / 'serving.jsonl'}, serving.md" + (", serving.png" if charts else ""))


@bench_cmd.command("load")
@click.option("--url", default="http://127.0.0.1:9880", show_default=True, help="gsv serve URL.")
@click.option("--voice", required=True, help="A voice the server offers.")
@click.option("--concurrency", default="1,8,32", show_default=True)
@click.option(
    "--requests",
    "per_client",
    type=int,
    default=2,
    show_default=True,
    help="Requests per client at each level (the run is bounded).",
)
@click.option("--lang", default="en", show_default=True)
@click.option("--text", default="The morning train was late again, and everyone checked the time.")
@click.option(
    "--streaming-mode",
    type=click.IntRange(0, 3),
    default=1,
    show_default=True,
    help="api_v2 streaming_mode: 0 whole file, 1 per segment, 2/3 token windows.",
)
def bench_load_cmd(
    url: str,
    voice: str,
    concurrency: str,
    per_client: int,
    lang: str,
    text: str,
    streaming_mode: int,
) -> None:
    """A bounded load run against a local gsv server: req/s, p50/p95/p99, TTFB, errors."""
    from gsv_bench.load import load_table, run_load

    try:
        levels = [int(n) for n in concurrency.split(",")]
    except ValueError:
        raise InputError(f"--concurrency takes comma-separated integers: {concurrency}") from None
    rows = run_load(url, voice, levels, per_client, text, lang, streaming_mode)
    click.echo(load_table(rows))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
