"""The ``gsv`` command line: lean start-up, one-line errors, checkpoint verbs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
