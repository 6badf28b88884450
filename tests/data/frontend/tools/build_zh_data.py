"""Rebuild runtime/text/data/zh_polyphonic.txt.xz from an upstream GPT-SoVITS checkout.

Usage: GSV_UPSTREAM_DIR=/path/to/GPT-SoVITS python tests/data/frontend/tools/build_zh_data.py

Upstream's g2pW path overrides predicted readings word by word (``correct_pronunciation``) from
``text/g2pw/polyphonic.rep`` then ``polyphonic-fix.rep`` (later entries win). Each line there is
``word: ['pin1', 'yin1']``; we store ``word<TAB>pin1 yin1`` in the same order, xz-compressed.
"""

from __future__ import annotations

import ast
import lzma
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
OUT = ROOT / "runtime" / "text" / "data" / "zh_polyphonic.txt.xz"


def read_rep(path: Path) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in path.read_text("utf-8").splitlines():
        if not line.strip():
            continue
        key, value = line.split(":")
        readings = ast.literal_eval(value.strip())
        if not all(isinstance(r, str) and " " not in r for r in readings):
            raise ValueError(f"{path}: unexpected readings in {line!r}")
        entries[key.strip()] = readings
    return entries


def main() -> None:
    g2pw = Path(os.environ["GSV_UPSTREAM_DIR"]) / "GPT_SoVITS" / "text" / "g2pw"
    merged = read_rep(g2pw / "polyphonic.rep")
    merged.update(read_rep(g2pw / "polyphonic-fix.rep"))
    text = "".join(f"{word}\t{' '.join(readings)}\n" for word, readings in merged.items())
    OUT.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    print(f"{OUT}: {len(merged)} entries, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
