"""The ``gsv`` command line: lean start-up, one-line errors, checkpoint verbs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from gsv_runtime.cli import main

_BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, _NoTorch())
    """
)


def test_help_works_without_torch() -> None:
    code = _BLOCK_TORCH + textwrap.dedent(
        """
        from click.testing import CliRunner
        from gsv_runtime.cli import main
        result = CliRunner().invoke(main, ["--help"])
        assert result.exit_code == 0, result.output
        assert "make-checkpoint" in result.output
        import gsv_runtime
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_installed_console_script_help() -> None:
    exe = Path(sys.executable).with_name("gsv")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "Usage: gsv" in out.stdout


def test_make_checkpoint_and_inspect(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["make-checkpoint", "v2Pro", "--size", "tiny", "-o", str(tmp_path)])
    assert made.exit_code == 0, made.output
    assert {p.name for p in tmp_path.iterdir()} == {"gpt.ckpt", "sovits.pth", "sv.ckpt"}
    shown = runner.invoke(
        main, ["inspect", *(str(tmp_path / n) for n in ("gpt.ckpt", "sovits.pth", "sv.ckpt"))]
    )
    assert shown.exit_code == 0, shown.output
    assert "SoVITS v2Pro" in shown.output and "GPT" in shown.output


def test_bad_checkpoint_gives_one_line_and_nonzero_exit(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("error: ") and "bad.pth" in result.output


def test_phonemize_prints_json() -> None:
    import json

    result = CliRunner().invoke(main, ["phonemize", "--lang", "zh", "你好，世界。"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["segments"][0]["phones"][:4] == ["n", "i2", "h", "ao3"]


def test_phonemize_bad_language_is_one_line() -> None:
    result = CliRunner().invoke(main, ["phonemize", "--lang", "xx", "hello"])
    assert result.exit_code == 1 and result.output.startswith("error: ")
    assert result.output.strip().count("\n") == 0


def test_voice_add_tts_and_info(tiny_bundle, ref_wav: Path, tmp_path: Path) -> None:
    import soundfile as sf

    bundle = str(tiny_bundle("v2"))
    runner = CliRunner()
    added = runner.invoke(
        main, ["voice", "add", bundle, "-r", str(ref_wav), "-p", "这是参考。", "--name", "cli"]
    )
    assert added.exit_code == 0, added.output
    assert "cli" in runner.invoke(main, ["voice", "list", bundle]).output
    out = tmp_path / "out.wav"
    spoken = runner.invoke(
        main,
        ["tts", "-m", bundle, "-v", "cli", "-t", "你好，世界。", "-o", str(out), "--seed", "1"],
    )
    assert spoken.exit_code == 0, spoken.output
    assert "RTF" in spoken.output
    data, sr = sf.read(out, dtype="int16")
    assert sr == 32000 and len(data) > 0.3 * sr
    info = runner.invoke(main, ["info", bundle, "--verify"])
    assert info.exit_code == 0, info.output
    assert "sha256 verified" in info.output and "t2s_step_gqa" in info.output
    assert "files: onnx/ " in info.output and "precision auto: gpt fp32" in info.output
    system = runner.invoke(main, ["info", "--system"])
    assert system.exit_code == 0, system.output
    assert "onnxruntime gpt: " in system.output and "openvino acoustic: " in system.output
    assert "openvino support: " in system.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "你好"], "give a saved voice"),
        (["-v", "nobody", "-t", "你好"], "no voice 'nobody'"),
        (["-v", "cli"], "give the text"),
        (["-v", "cli", "-t", "你好", "--lang", "xx"], "language"),
        (["-v", "cli", "-t", "你好", "--top-k", "0"], "top_k"),
        (["-v", "cli", "-t", "你好", "--backend", "nope"], "unknown backend"),
    ],
)
def test_tts_errors_are_one_line(tiny_bundle, ref_wav: Path, tmp_path: Path, args, message) -> None:
    bundle = str(tiny_bundle("v2"))
    runner = CliRunner()
    runner.invoke(
        main, ["voice", "add", bundle, "-r", str(ref_wav), "-p", "这是参考。", "--name", "cli"]
    )
    out = tmp_path / "out.wav"
    result = runner.invoke(main, ["tts", "-m", bundle, *args, "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.strip().count("\n") == 0
    assert not out.exists()


def test_tts_on_a_missing_or_altered_bundle(tiny_bundle, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle("v1"), copy)
    (copy / "onnx" / "t2s_step.onnx").write_bytes(b"tampered")
    result = CliRunner().invoke(
        main, ["tts", "-m", str(copy), "-v", "x", "-t", "hi", "-o", str(tmp_path / "o.wav")]
    )
    assert result.exit_code == 1 and "altered" in result.output
    result = CliRunner().invoke(main, ["info", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no such bundle directory" in result.output
