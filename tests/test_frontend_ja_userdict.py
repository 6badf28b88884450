"""Japanese user dictionary: agreement with upstream when both load the same MeCab CSV.

Upstream compiles ``text/ja_userdic/userdict.csv`` at import and OpenJTalk uses it for every
Japanese run. expected_ja_userdict.json holds upstream's output for the ja and mixed rows with
the small test dictionary tests/data/frontend/ja_userdict.csv (record_frontend.py with
GSV_JA_USERDICT). The dictionary is process-wide, so each test restores the default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gsv_runtime.errors import InputError

pytest.importorskip("pyopenjtalk")
DATA = Path(__file__).parent / "data" / "frontend"
USERDICT = DATA / "ja_userdict.csv"
RECORDED = json.loads((DATA / "expected_ja_userdict.json").read_text("utf-8"))


@pytest.fixture
def userdict() -> Iterator[Path]:
    from gsv_runtime.text.ja import load_user_dictionary, unload_user_dictionary

    load_user_dictionary(USERDICT)
    yield USERDICT
    unload_user_dictionary()


def test_recorded_with_this_dictionary() -> None:
    digest = hashlib.sha256(USERDICT.read_bytes()).hexdigest()
    assert RECORDED["meta"]["ja_userdict_sha256"] == digest


def test_matches_upstream_with_userdict(userdict: Path) -> None:
    """Every ja/mixed row equals upstream's with the dictionary (known deviations excepted)."""
    from gsv_runtime.text import phonemize
    from tests.test_frontend_corpus import CORPUS, EXPECTED, KNOWN, _comparable

    rows = {row["id"]: row for row in CORPUS}
    changed = 0
    for row_id, versions in RECORDED["results"].items():
        row = rows[row_id]
        for version, expected in versions.items():
            if "error" in expected:
                continue
            try:
                result = phonemize(row["text"], row["lang"], version, split_method=row["method"])
                ours: list[dict[str, Any]] = [s.to_dict() for s in result.segments]
            except InputError:
                ours = []
            got, want = _comparable(ours), _comparable(expected["segments"])
            if f"{row_id}/{version}" in KNOWN:
                assert got != want, row_id
            else:
                assert got == want, (row_id, version)
            changed += want != _comparable(EXPECTED[row_id][version].get("segments", []))
    assert changed >= 4, "the test dictionary should change some rows"


def test_metadata_and_unload(userdict: Path) -> None:
    from gsv_runtime.text import phonemize
    from gsv_runtime.text.ja import unload_user_dictionary

    with_dict = phonemize("今日は東京へ行きます。", "ja")
    assert with_dict.metadata["ja_user_dictionary"] == str(USERDICT)
    unload_user_dictionary()
    plain = phonemize("今日は東京へ行きます。", "ja")
    assert plain.metadata["ja_user_dictionary"] is None
    assert plain.phone_ids != with_dict.phone_ids


def test_bad_dictionary(tmp_path: Path) -> None:
    from gsv_runtime.text.ja import load_user_dictionary, user_dictionary

    with pytest.raises(InputError, match="cannot read"):
        load_user_dictionary(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("ａｂｃ,エービーシー\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.csv:1: not a MeCab dictionary row"):
        load_user_dictionary(bad)
    assert user_dictionary() is None


def test_cli_phonemize_keeps_json_clean() -> None:
    """MeCab's compiler prints progress; stdout must still be one JSON document."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "gsv_runtime.cli", "phonemize", "--lang", "ja",
         "--ja-userdict", str(USERDICT), "今日は東京へ行きます。"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    assert json.loads(out.stdout)["metadata"]["ja_user_dictionary"] == str(USERDICT)
