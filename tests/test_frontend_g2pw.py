"""g2pW polyphones: agreement with upstream's g2pW path on a stand-in G2PWModel, and the loader.

The real G2PWModel cannot be downloaded here. The stand-in (tables in tests/data/frontend/g2pw,
a seeded random ``g2pW.onnx`` from gsv_models.testing.g2pw_dir, the real BERT tokenizer) has the
real folder's formats; upstream's own g2pW code was run on the same folder to record
expected_g2pw.json (record_frontend.py with GSV_G2PW_DIR). Build the folder for recording with
``python tests/test_frontend_g2pw.py OUT_DIR``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from gsv_runtime.errors import InputError

DATA = Path(__file__).parent / "data" / "frontend"
TABLES = DATA / "g2pw"


def build_standin(out: Path) -> Path:
    """The recorded stand-in folder: committed tables + seeded graph + the real tokenizer."""
    from gsv_models.testing.g2pw_dir import write_g2pw_graph
    from gsv_models.testing.support_dirs import BERT_FIXTURE

    shutil.copytree(TABLES, out, dirs_exist_ok=True)
    shutil.copy(BERT_FIXTURE / "tokenizer.json", out / "tokenizer.json")
    write_g2pw_graph(out, seed=0)
    return out


if __name__ == "__main__":  # build the folder for record_frontend.py
    print(build_standin(Path(sys.argv[1])))
    sys.exit(0)

RECORDED = json.loads((DATA / "expected_g2pw.json").read_text("utf-8"))
pytest.importorskip("pypinyin")
pytest.importorskip("opencc")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("G2PWModel"))


def _corpus() -> dict[str, dict[str, str]]:
    from tests.test_frontend_corpus import CORPUS

    return {row["id"]: row for row in CORPUS}


def test_standin_is_the_recorded_one(standin: Path) -> None:
    """The folder tested is byte for byte the one upstream was run on."""
    import hashlib

    got = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(standin.iterdir())}
    assert got == RECORDED["meta"]["g2pw_files"], "stand-in changed: re-record expected_g2pw.json"


def test_covers_the_chinese_corpus() -> None:
    rows = _corpus()
    zh = [k for k in RECORDED["results"] if k.startswith("zh")]
    assert len(zh) == sum(1 for k in rows if k.startswith("zh"))
    assert all(k in rows for k in RECORDED["results"])


CASES = sorted(RECORDED["results"])


@pytest.mark.parametrize("row_id", CASES)
def test_matches_upstream_g2pw(row_id: str, standin: Path) -> None:
    """With g2pW on, phone ids, normalised text and word2ph equal upstream's."""
    from gsv_runtime.text import phonemize
    from tests.test_frontend_corpus import KNOWN, _comparable

    row = _corpus()[row_id]
    expected = RECORDED["results"][row_id]["v2"]
    try:
        result = phonemize(row["text"], row["lang"], "v2", split_method=row["method"], g2pw=standin)
        ours: list[dict[str, Any]] | None = [s.to_dict() for s in result.segments]
    except InputError:
        ours = None
    if "error" in expected:
        assert ours is None or all(s["phone_ids"] for s in ours)
        return
    got, want = _comparable(ours or []), _comparable(expected["segments"])
    if f"{row_id}/v2" in KNOWN:  # the same deliberate deviation as without g2pW
        assert got != want
        return
    assert got == want


def test_g2pw_changes_polyphones_and_says_so(standin: Path) -> None:
    """The stand-in's readings differ from pypinyin's somewhere; metadata names the source."""
    from gsv_runtime.text import phonemize

    text = "今天天气很好，我们还要重新行动。"
    with_g2pw = phonemize(text, "zh", "v2", g2pw=standin)
    plain = phonemize(text, "zh", "v2")
    assert with_g2pw.metadata["zh_polyphones"] == "g2pw"
    assert plain.metadata["zh_polyphones"] == "pypinyin"
    assert with_g2pw.phone_ids != plain.phone_ids
    # 天 is monophonic in the stand-in's table with a tone pypinyin does not give it
    first = with_g2pw.segments[0].pieces[0]
    assert first.phones[2:4] != plain.segments[0].pieces[0].phones[2:4]


def test_v1_ignores_g2pw(standin: Path) -> None:
    """Upstream's v1 Chinese frontend has no g2pW."""
    from gsv_runtime.text import phonemize

    text = "我们还要重新行动。"
    assert (
        phonemize(text, "zh", "v1", g2pw=standin).phone_ids == phonemize(text, "zh", "v1").phone_ids
    )


def test_repeated_and_long_sentences(standin: Path) -> None:
    """Several polyphones in one sentence share a row; a >510-token sentence is windowed."""
    from gsv_runtime.text.zh_g2pw import load_g2pw

    g2pw = load_g2pw(standin)
    long = "长" + "天" * 600 + "行"
    same = ["还要重新行动", "还要重新行动"]
    out = g2pw.predict([long, *same, "长"])
    assert [len(r) for r in out] == [602, 6, 6, 1]
    assert out[1] == out[2]
    assert all(r and r[-1] in "12345" for r in out[0])


def test_punctuation_passes_through(standin: Path) -> None:
    from gsv_runtime.text.zh_g2pw import load_g2pw

    out = load_g2pw(standin).predict(["行,"])
    assert out[0][1] == ","


def test_config_is_never_executed(tmp_path: Path, standin: Path) -> None:
    """config.py is parsed for literals; code in it does not run."""
    from gsv_runtime.text.zh_g2pw import G2PW

    folder = tmp_path / "G2PWModel"
    shutil.copytree(standin, folder)
    marker = tmp_path / "ran"
    (folder / "config.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\nuse_mask = True\n",
        encoding="utf-8",
    )
    G2PW(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("g2pW.onnx", "missing g2pW.onnx"),
        ("POLYPHONIC_CHARS.txt", "missing POLYPHONIC_CHARS.txt"),
        ("tokenizer.json", "tokenizer.json"),
    ],
)
def test_incomplete_folder(tmp_path: Path, standin: Path, remove: str, message: str) -> None:
    from gsv_runtime.text.zh_g2pw import G2PW

    folder = tmp_path / "G2PWModel"
    shutil.copytree(standin, folder)
    (folder / remove).unlink()
    with pytest.raises(InputError, match=message):
        G2PW(folder)


def test_bad_folder_and_tables(tmp_path: Path, standin: Path) -> None:
    from gsv_runtime.text.zh_g2pw import G2PW

    with pytest.raises(InputError, match="no such G2PWModel folder"):
        G2PW(tmp_path / "nowhere")
    folder = tmp_path / "G2PWModel"
    shutil.copytree(standin, folder)
    (folder / "MONOPHONIC_CHARS.txt").write_text("天天 ㄊㄧㄢ1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"MONOPHONIC_CHARS\.txt:1"):
        G2PW(folder)
    shutil.copy(standin / "MONOPHONIC_CHARS.txt", folder)
    (folder / "g2pW.onnx").write_bytes(b"not onnx")
    with pytest.raises(InputError, match="cannot load the g2pW graph"):
        G2PW(folder)


def test_tokenizer_elsewhere(tmp_path: Path, standin: Path) -> None:
    """The tokenizer may live outside the folder (upstream's bert_path)."""
    from gsv_runtime.text.zh_g2pw import G2PW

    folder = tmp_path / "G2PWModel"
    shutil.copytree(standin, folder)
    (folder / "tokenizer.json").unlink()
    g2pw = G2PW(folder, tokenizer=standin)
    assert g2pw.predict(["行"])[0][0][-1] in "12345"


def test_cli_phonemize_with_g2pw(standin: Path) -> None:
    from click.testing import CliRunner

    from gsv_runtime.cli import main

    result = CliRunner().invoke(
        main, ["phonemize", "--lang", "zh", "--g2pw", str(standin), "我们还要重新行动。"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["metadata"]["zh_polyphones"] == "g2pw"
    bad = CliRunner().invoke(
        main, ["phonemize", "--lang", "zh", "--g2pw", "/nonexistent", "你好。"]
    )
    assert bad.exit_code != 0 and "G2PWModel" in bad.output


def test_info_states_the_polyphone_source(standin: Path) -> None:
    """`gsv info` says which polyphone path Chinese text takes."""
    from click.testing import CliRunner

    from gsv_runtime.cli import main

    plain = CliRunner().invoke(main, ["info"])
    assert plain.exit_code == 0 and "zh polyphones: pypinyin" in plain.output
    with_g2pw = CliRunner().invoke(main, ["info", "--g2pw", str(standin)])
    assert with_g2pw.exit_code == 0 and "zh polyphones: g2pW from" in with_g2pw.output
