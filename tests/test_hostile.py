"""Hostile files and inputs: each gets the project's error (one line on the CLI) and nothing
outside the test's folder changes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from gsv_runtime.audio import load_reference
from gsv_runtime.bundle import Bundle
from gsv_runtime.cli import main
from gsv_runtime.engine import EngineConfig, SynthesisRequest
from gsv_runtime.errors import BundleError, CheckpointError, GsvError, InputError
from gsv_runtime.gpt.sampling import SamplingParams
from gsv_runtime.synthesizer import Synthesizer
from gsv_runtime.voice import Voice

NAN = float("nan")


@pytest.fixture
def bundle(tiny_bundle, tmp_path: Path) -> Path:
    """A private copy of the tiny v2 voice bundle (ONNX only, to stay small)."""
    src = tiny_bundle("v2")
    out = tmp_path / "voice"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("openvino", "voices"))
    manifest = json.loads((out / "bundle.json").read_text())
    for spec in manifest["graphs"].values():
        spec["variants"] = [v for v in spec["variants"] if v["format"] == "onnx"]
    manifest["graphs"] = {k: v for k, v in manifest["graphs"].items() if v["variants"]}
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k.startswith("onnx/")}
    support = (src / manifest["support"]["path"]).resolve()
    manifest["support"]["path"] = os.path.relpath(support, out)
    _write(out, manifest)
    return out


def _manifest(root: Path) -> dict:
    return json.loads((root / "bundle.json").read_text())


def _write(root: Path, manifest: dict) -> None:
    (root / "bundle.json").write_text(json.dumps(manifest))


def _snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")}


def _graph_path(manifest: dict, value: str) -> dict:
    manifest["graphs"]["sovits_decoder"]["variants"][0]["path"] = value
    return manifest


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "must stay inside"),
        ("../outside.onnx", "must stay inside"),
        ("onnx/%2e%2e/x.onnx", "not covered"),
    ],
)
def test_graph_paths_are_confined(bundle: Path, path: str, message: str) -> None:
    _write(bundle, _graph_path(_manifest(bundle), path))
    manifest = _manifest(bundle)
    if message != "not covered":
        manifest["files"][path] = {"sha256": "0" * 64, "size_bytes": 1}
    _write(bundle, manifest)
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle)


def test_symlink_escape_and_special_files(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x" * 10)
    link = bundle / "onnx" / "weights.data"  # the ONNX graphs' shared weights
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(BundleError, match="leads outside"):
        Bundle.load(bundle)
    link.unlink()
    link.symlink_to("/dev/zero")
    with pytest.raises(BundleError, match=r"outside|regular"):
        Bundle.load(bundle)
    link.unlink()
    os.mkfifo(link)
    with pytest.raises(BundleError, match="not a regular file"):
        Bundle.load(bundle)


def test_unlisted_graph_file_is_refused(bundle: Path) -> None:
    manifest = _manifest(bundle)
    del manifest["files"]["onnx/sovits_ref.onnx"]
    _write(bundle, manifest)
    with pytest.raises(BundleError, match="not covered by the manifest's hashes"):
        Bundle.load(bundle)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("audio", "sample_rate", 1e9),
        ("text", "bert_dim", 10**9),
        ("sampling", "repetition_penalty", NAN),
        ("sampling", "top_p", "high"),
        ("sampling", "temperature", -1),
    ],
)
def test_manifest_numbers_are_checked(bundle: Path, section: str, key: str, value) -> None:
    manifest = _manifest(bundle)
    manifest[section][key] = value
    _write(bundle, manifest)
    with pytest.raises(BundleError, match=key):
        Bundle.load(bundle)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"format": "gsv-bundle", "format_version": 1, "kind": "voice", "graphs": [], "files": {}}',
        '{"format": "gsv-bundle", "format_version": "1"}',
        "[1, 2]",
        "\xff\xfe",
    ],
)
def test_malformed_manifests_are_bundle_errors(bundle: Path, text: str) -> None:
    (bundle / "bundle.json").write_text(text, encoding="latin-1")
    with pytest.raises(BundleError):
        Bundle.load(bundle)
    result = CliRunner().invoke(main, ["info", str(bundle)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.output


def test_manifest_fuzz_only_bundle_errors(bundle: Path) -> None:
    """Random type swaps, deletions and odd values in the manifest: load succeeds or raises
    BundleError, never anything else (bounded: 150 mutants)."""
    base = _manifest(bundle)
    rng = np.random.default_rng(0)
    odd = [None, -1, 1e308, NAN, "", "../x", [], {}, [1], {"a": 1}, True, "/dev/zero"]

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, (*prefix, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from paths(v, (*prefix, i))

    every = [p for p in paths(base) if p]
    for _ in range(150):
        manifest = json.loads(json.dumps(base))
        where = every[rng.integers(len(every))]
        parent = manifest
        for k in where[:-1]:
            parent = parent[k]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = odd[rng.integers(len(odd))]
        _write(bundle, manifest)
        with contextlib.suppress(BundleError):
            Bundle.load(bundle)


def test_voice_add_never_follows_a_symlink_out(bundle: Path, tmp_path: Path, ref_wav) -> None:
    victim = tmp_path / "victim"
    (victim / "calm").mkdir(parents=True)
    (victim / "calm" / "keep.txt").write_text("precious")
    (bundle / "voices").symlink_to(victim, target_is_directory=True)
    before = _snapshot(victim)
    voice = Synthesizer.load(bundle, backend="onnxruntime").voice(ref_wav, "你好。", "zh")
    with pytest.raises(InputError, match="symbolic link"):
        voice.save(bundle, "calm")
    assert _snapshot(victim) == before


def _saved(bundle: Path, synth_voice: Voice) -> Path:
    return synth_voice.save(bundle, "calm")


@pytest.fixture
def saved_voice(bundle: Path, ref_wav) -> Path:
    synth = Synthesizer.load(bundle, backend="onnxruntime")
    return synth.voice(ref_wav, "你好。", "zh").save(bundle, "calm")


def test_voice_npz_bombs_and_bad_json(bundle: Path, saved_voice: Path) -> None:
    arrays = saved_voice / "arrays.npz"
    with zipfile.ZipFile(arrays, "w", zipfile.ZIP_DEFLATED) as z:
        big = np.zeros(17 << 20, np.float32)  # 68 MB of zeros, a few KB compressed
        for name in ("prompt_tokens", "prompt_phones", "prompt_bert", "ge"):
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, big)
    with pytest.raises(BundleError, match="inflates"):
        Voice.load(bundle, "calm")
    (saved_voice / "voice.json").write_text("[1, 2, 3]")
    with pytest.raises(BundleError, match="damaged voice"):
        Voice.load(bundle, "calm")


def test_voice_with_wrong_shapes(bundle: Path, saved_voice: Path) -> None:
    np.savez(
        saved_voice / "arrays.npz",
        prompt_tokens=np.zeros((2, 2), np.int64),
        prompt_phones=np.zeros(3, np.int64),
        prompt_bert=np.zeros((3, 8), np.float32),
        ge=np.full((1, 4, 1), np.nan, np.float32),
    )
    with pytest.raises(BundleError, match="1-D"):
        Voice.load(bundle, "calm")


@pytest.mark.parametrize(
    "option",
    [
        {"repetition_penalty": NAN},
        {"temperature": float("inf")},
        {"top_p": NAN},
        {"speed_factor": NAN},
        {"noise_scale": NAN},
        {"fragment_interval": float("inf")},
        {"top_k": 2.5},
    ],
)
def test_non_finite_options_are_refused(option: dict) -> None:
    with pytest.raises(InputError):
        SynthesisRequest.from_options("你好。", "zh", **option)


def test_cli_nan_option_is_one_line(bundle: Path, ref_wav) -> None:
    args = ["tts", "-m", str(bundle), "-r", str(ref_wav), "-p", "你好。", "-t", "你好。"]
    result = CliRunner().invoke(main, [*args, "-o", "-", "--repetition-penalty", "nan"])
    assert result.exit_code == 1
    assert "repetition_penalty must be a finite number" in result.output
    assert "Traceback" not in result.output


def test_sampling_params_reject_nan_directly() -> None:
    with pytest.raises(ValueError, match="finite"):
        SamplingParams(repetition_penalty=NAN).validate()


def test_hostile_reference_audio(tmp_path: Path) -> None:
    rate = 8000
    bad = tmp_path / "nan.wav"
    wav = np.sin(np.arange(4 * rate) / 10).astype(np.float32)
    wav[100] = np.nan
    sf.write(bad, wav, rate, subtype="FLOAT")
    with pytest.raises(InputError, match="NaN"):
        load_reference(bad)
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(61 * rate, np.int16), rate)
    with pytest.raises(InputError, match="at most 60 s"):
        load_reference(long)
    wide = tmp_path / "wide.wav"
    sf.write(wide, np.zeros((rate, 9), np.int16), rate)
    with pytest.raises(InputError, match="channels"):
        load_reference(wide)


def test_text_length_is_bounded(bundle: Path, saved_voice: Path) -> None:
    synth = Synthesizer(Bundle.load(bundle), engine=EngineConfig(max_text_chars=100))
    try:
        with pytest.raises(InputError, match="at most 100"):
            synth.synthesize("好" * 101, "zh", "calm")
        assert synth.synthesize("好" * 20, "zh", "calm", seed=0).seconds > 0
    finally:
        synth.close()


def test_info_escapes_control_characters(bundle: Path) -> None:
    manifest = _manifest(bundle)
    manifest["created_by"] = {"tool": "evil\x1b[2J\x1b]0;pwned\x07", "version": "1\r"}
    _write(bundle, manifest)
    result = CliRunner().invoke(main, ["info", str(bundle)])
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert result.exit_code == 0, result.output


def test_backend_failure_is_a_backend_error(bundle: Path) -> None:
    synth = Synthesizer.load(bundle, backend="onnxruntime")
    with pytest.raises(GsvError, match="failed running sovits_ref"):
        synth.sovits.runners["sovits_ref"].run(
            {"spec": np.zeros((1, 3, 5), np.float32), "spec_lengths": np.ones(1, np.int64)}
        )


def test_export_over_saved_voices_is_refused_unless_told(
    bundle: Path, saved_voice: Path, tiny_voice
):
    from gsv_export import export_bundle

    ckpts = tiny_voice("v2")
    before = _snapshot(bundle)
    with pytest.raises(BundleError, match="holds saved voices"):
        export_bundle(ckpts["gpt"], ckpts["sovits"], bundle, verify=False, progress=lambda _: None)
    assert _snapshot(bundle) == before
    export_bundle(
        ckpts["gpt"],
        ckpts["sovits"],
        bundle,
        formats=("onnx",),
        verify=False,
        voices="keep",
        progress=lambda _: None,
    )
    assert Voice.load(bundle, "calm").prompt_tokens.size > 0


def test_export_support_unknown_precision_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "export-support",
            "--hubert",
            str(tmp_path),
            "-o",
            str(tmp_path / "s"),
            "--precision",
            "fp8",
        ],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unknown precision ['fp8']" in result.output


def test_written_wav_is_a_normal_file(tmp_path: Path) -> None:
    from gsv_runtime.audio import write_wav

    old = os.umask(0o022)
    try:
        write_wav(tmp_path / "out.wav", np.zeros(100, np.int16), 32000)
    finally:
        os.umask(old)
    assert (tmp_path / "out.wav").stat().st_mode & 0o777 == 0o644


def _gpt_payload(tiny_voice) -> dict:
    import torch

    return torch.load(tiny_voice("v2")["gpt"], map_location="cpu", weights_only=False)


def test_checkpoint_declaring_a_huge_network_fails_before_building(tiny_voice, tmp_path) -> None:
    import time

    import torch

    from gsv_models.load import load_model

    payload = _gpt_payload(tiny_voice)
    payload["config"]["model"]["n_layer"] = 2000
    path = tmp_path / "huge.ckpt"
    torch.save(payload, path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)
    assert time.perf_counter() - start < 30


def test_repeating_tensor_views_are_refused(tiny_voice, tmp_path) -> None:
    import torch

    from gsv_models.checkpoint import load_checkpoint

    payload = _gpt_payload(tiny_voice)
    key = next(iter(payload["weight"]))
    payload["weight"][key] = torch.zeros(1).expand(1 << 17, 1 << 17)
    path = tmp_path / "view.ckpt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="repeating view"):
        load_checkpoint(path)


def test_rezipped_checkpoint_bomb_is_refused(tiny_voice, tmp_path) -> None:
    from gsv_models.checkpoint import load_checkpoint

    src = tiny_voice("v2")["gpt"]
    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        prefix = zin.infolist()[0].filename.split("/")[0]
        zout.writestr(f"{prefix}/padding", bytes(64 << 20))
    assert bomb.stat().st_size < 8 << 20
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_checkpoint(bomb)


def test_tokenizer_that_is_not_a_tokenizer(tiny_support: Path, tmp_path: Path) -> None:
    from gsv_runtime.support import SupportModels

    copy = tmp_path / "support"
    shutil.copytree(tiny_support, copy)
    tokenizer = copy / "tokenizer" / "tokenizer.json"
    manifest = _manifest(copy)
    tokenizer.write_text('{"not": "a tokenizer"}')
    entry = manifest["files"].get("tokenizer/tokenizer.json")
    if entry is not None:
        entry["size_bytes"] = tokenizer.stat().st_size
    _write(copy, manifest)
    with pytest.raises(BundleError, match="not a tokenizers JSON file"):
        SupportModels.load(copy).tokenizer  # noqa: B018


def test_g2pw_tables_that_are_not_utf8(tmp_path: Path) -> None:
    from gsv_runtime.text.zh_g2pw import _char_table, read_config

    table = tmp_path / "CHAR_bopomofo.txt"
    table.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="not a readable UTF-8 table"):
        _char_table(table)
    config = tmp_path / "config.py"
    config.write_bytes(b"x = '\xff'")
    with pytest.raises(InputError, match="not a readable g2pW config"):
        read_config(config)
