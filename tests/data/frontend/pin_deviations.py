"""Pin the project's own output on the corpus rows where it deliberately differs from upstream
(known_differences.json) and where upstream raises, so a regression in a fix fails CI.

Run from the repository root after reviewing a change to one of these rows:
    python tests/data/frontend/pin_deviations.py
It writes pinned.json beside this file: per "<row id>/<version>", the segments as the corpus
test compares them (norm text, phone ids, pieces), or {"error": "InputError"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.test_frontend_corpus import CORPUS, EXPECTED, KNOWN, _comparable, _ours  # noqa: E402


def pins() -> dict[str, object]:
    out: dict[str, object] = {}
    for row in CORPUS:
        for version, expected in EXPECTED[row["id"]].items():
            key = f"{row['id']}/{version}"
            if key not in KNOWN and "error" not in expected:
                continue
            ours = _ours(row, version)
            out[key] = {"error": "InputError"} if ours is None else {"segments": _comparable(ours)}
    return out


if __name__ == "__main__":
    data = json.dumps(pins(), ensure_ascii=False, indent=1, sort_keys=True)
    (HERE / "pinned.json").write_text(data + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'pinned.json'}")
