"""jieba's dictionary index: the same segmentation and tags as jieba's own loading, built once,
read-only, and jieba's own loading wherever no index can be had."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

posseg = pytest.importorskip("jieba.posseg")
import jieba  # noqa: E402

from gsv_runtime.text import zh  # noqa: E402
from gsv_runtime.text.zh_dict import DictionaryIndex, build_index  # noqa: E402

SENTENCES = (
    "今天天气很好，我们去公园散步吧。",
    "中华人民共和国成立于一九四九年十月一日。",
    "他说：“这个问题很难回答，需要仔细研究一下。”",
    "小明硕士毕业于中国科学院计算所，后在日本京都大学深造",
    "一百二十三点四五公斤的西瓜卖了五块钱",
    "不要不要不要！你一个人一个人地走吧。",
)


@pytest.fixture(scope="module")
def stock() -> posseg.POSTokenizer:
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    return posseg.POSTokenizer(tokenizer)


def test_indexed_jieba_cuts_and_tags_as_jieba(
    stock: posseg.POSTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GSV_CACHE_DIR", str(tmp_path))
    indexed = zh._Jieba()
    (index,) = tmp_path.glob("jieba-*.sqlite")
    assert not isinstance(indexed.tokenizer.FREQ, dict)  # served from the index
    assert indexed.tokenizer.total == stock.tokenizer.total
    assert len(indexed.tokenizer.FREQ) == len(stock.tokenizer.FREQ)
    assert len(indexed.pos.word_tag_tab) == len(stock.word_tag_tab)
    for sentence in SENTENCES:
        assert [tuple(p) for p in indexed.pos.lcut(sentence)] == [
            tuple(p) for p in stock.lcut(sentence)
        ]
        assert indexed.tokenizer.lcut_for_search(sentence) == stock.tokenizer.lcut_for_search(
            sentence
        )
    built = index.stat().st_mtime_ns
    again = zh._Jieba()  # opens the index, does not rebuild it
    assert index.stat().st_mtime_ns == built
    assert again.pos.lcut(SENTENCES[0]) == indexed.pos.lcut(SENTENCES[0])


def test_without_a_usable_cache_folder_jieba_loads_its_own_dictionary(
    stock: posseg.POSTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GSV_CACHE_DIR", "off")
    assert isinstance(zh._Jieba().tokenizer.FREQ, dict)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("GSV_CACHE_DIR", str(blocked))
    jb = zh._Jieba()
    assert isinstance(jb.tokenizer.FREQ, dict)
    assert jb.pos.lcut(SENTENCES[0]) == stock.lcut(SENTENCES[0])


def test_index_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "jieba-x.sqlite"
    build_index(path, {"天": 5, "天气": 3, "天气预": 0}, 8, {"天": "n", "天气": "n"})
    index = DictionaryIndex.open(path)
    assert (index.freq["天气预"], index.total, index.tags.get("天气预", "x")) == (0, 8, "x")
    assert "天气" in index.freq and "雨" not in index.freq and len(index.tags) == 2
    with pytest.raises(sqlite3.ProgrammingError):  # a bad entry fails the build half-way
        build_index(tmp_path / "jieba-y.sqlite", {"天": 5, "x": object()}, 5, {})  # type: ignore[dict-item]
    assert sorted(os.listdir(tmp_path)) == ["jieba-x.sqlite"]
