"""Agreement of the text frontend with upstream GPT-SoVITS on the recorded corpus.

tests/data/frontend/corpus.tsv holds the sentences; expected.json holds upstream's segments (norm
text, phone ids, per-language pieces with word2ph) recorded by record_frontend.py. Every row must
match exactly, except the deliberate deviations listed in known_differences.json (each with its
reason), which must still differ (so a stale entry is noticed).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from gsv_runtime.errors import InputError
from gsv_runtime.text.frontend import LANGUAGE_MODULES, SPLIT_MODULES

DATA = Path(__file__).parent / "data" / "frontend"


def _load_corpus() -> list[dict[str, str]]:
    spec = importlib.util.spec_from_file_location("record_frontend", DATA / "record_frontend.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.read_corpus(DATA / "corpus.tsv")


CORPUS = _load_corpus()
EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text("utf-8"))["results"]
KNOWN: dict[str, str] = json.loads((DATA / "known_differences.json").read_text("utf-8"))


def _missing_packages() -> list[str]:
    names = {n for deps in LANGUAGE_MODULES.values() for n in deps} | set(SPLIT_MODULES)
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def _comparable(segments: list[dict[str, Any]]) -> list[Any]:
    return [
        (
            s["norm_text"],
            s["phone_ids"],
            [(p["lang"], p["norm_text"], p["phone_ids"], p["word2ph"]) for p in s["pieces"]],
        )
        for s in segments
    ]


def _ours(row: dict[str, str], version: str) -> list[dict[str, Any]] | None:
    from gsv_runtime.text import phonemize

    try:
        result = phonemize(row["text"], row["lang"], version, split_method=row["method"])
    except InputError:
        return None
    return [s.to_dict() for s in result.segments]


CASES = [(row, v) for row in CORPUS for v in EXPECTED[row["id"]]]


def test_corpus_size() -> None:
    """The corpus covers every language with at least 50 sentences, plus mixed text."""
    groups: dict[str, int] = {}
    for row in CORPUS:
        group = row["id"].rstrip("0123456789")
        groups[group] = groups.get(group, 0) + 1
    assert len(CORPUS) >= 300
    for lang in ("zh", "en", "ja", "ko", "yue"):
        assert groups[lang] >= 50, (lang, groups)
    assert groups["mix"] >= 20
    assert set(EXPECTED) == {row["id"] for row in CORPUS}, "expected.json is stale: re-record"


@pytest.mark.skipif(
    bool(_missing_packages()), reason=f"frontend extras missing: {_missing_packages()}"
)
@pytest.mark.parametrize(("row", "version"), CASES, ids=[f"{row['id']}-{v}" for row, v in CASES])
def test_matches_upstream(row: dict[str, str], version: str) -> None:
    """Phone ids, normalised text and word2ph equal upstream's, segment by segment."""
    expected = EXPECTED[row["id"]][version]
    ours = _ours(row, version)
    if "error" in expected:
        # Upstream raised; we must not crash: nothing speakable → InputError, else some phones.
        assert ours is None or all(s["phone_ids"] for s in ours)
        return
    got = _comparable(ours or [])
    want = _comparable(expected["segments"])
    key = f"{row['id']}/{version}"
    if key in KNOWN:
        assert got != want, f"{key} now matches upstream: drop it from known_differences.json"
        return
    assert got == want
