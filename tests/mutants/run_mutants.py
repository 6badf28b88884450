"""Hand-made mutants of the code that decides fidelity; each must make its tests fail.

    python tests/mutants/run_mutants.py [--only NAME]

Each mutant replaces one exact snippet in one file, runs the tests that should catch it, and
restores the file (also on Ctrl-C). The report lists killed and surviving mutants and the kill
rate. A surviving mutant is a test to write. Not part of the suite (minutes of runtime).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    before: str
    after: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "eos-on-raw-logits",
        "runtime/gpt/sampling.py",
        "(np.argmax(penalized, axis=-1) == eos)",
        "(np.argmax(used, axis=-1) == eos)",
        ("tests/test_sampling.py",),
    ),
    Mutant(
        "penalty-sign-swapped",
        "runtime/gpt/sampling.py",
        "np.where(out < 0, out * np.float32(penalty), out / np.float32(penalty))",
        "np.where(out < 0, out / np.float32(penalty), out * np.float32(penalty))",
        ("tests/test_sampling.py",),
    ),
    Mutant(
        "top-p-after-temperature-order",
        "runtime/gpt/sampling.py",
        "np.cumsum(_softmax(sorted_logits), axis=-1) > top_p",
        "np.cumsum(_softmax(sorted_logits), axis=-1) >= top_p",
        ("tests/test_sampling.py",),
    ),
    Mutant(
        "top-k-drops-ties",
        "runtime/gpt/sampling.py",
        "np.where(logits < kth, -np.inf, logits)",
        "np.where(logits <= kth, -np.inf, logits)",
        ("tests/test_sampling.py",),
    ),
    Mutant(
        "row-noise-shared-across-rows",
        "runtime/gpt/decode.py",
        "noise = live.rng.standard_exponential(width, dtype=np.float32)[None]",
        "noise = np.random.default_rng(0).standard_exponential(width, dtype=np.float32)[None]",
        ("tests/test_engine.py", "tests/test_runtime_e2e.py"),
    ),
    Mutant(
        "spectrogram-epsilon",
        "runtime/audio_features.py",
        "spec.imag * spec.imag + np.float32(SPEC_EPS))",
        "spec.imag * spec.imag + np.float32(1e-3))",
        ("tests/test_audio.py", "tests/test_sovits.py"),
    ),
    Mutant(
        "en-time-oh",
        "runtime/text/en_norm.py",
        'f"oh {_words(minutes)}"',
        'f"zero {_words(minutes)}"',
        ("tests/test_frontend_corpus.py",),
    ),
    Mutant(
        "en-negative",
        "runtime/text/en_norm.py",
        '"negative "',
        '"minus "',
        ("tests/test_frontend_corpus.py",),
    ),
    Mutant(
        "stream-no-crossfade-hold",
        "runtime/engine/stream.py",
        "hold = min(len(piece), round(self.overlap_length * self.samples_per_token))",
        "hold = 0",
        ("tests/test_engine.py",),
    ),
)


def run(mutant: Mutant) -> bool:
    """True when the mutant is killed (its tests fail)."""
    path = ROOT / mutant.path
    original = path.read_text(encoding="utf-8")
    if original.count(mutant.before) != 1:
        raise SystemExit(f"{mutant.name}: the snippet is not found exactly once in {mutant.path}")
    try:
        path.write_text(original.replace(mutant.before, mutant.after), encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return result.returncode != 0
    finally:
        path.write_text(original, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run one mutant by name")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only in (None, m.name)]
    killed = 0
    for mutant in chosen:
        dead = run(mutant)
        killed += dead
        print(f"{'killed  ' if dead else 'SURVIVED'} {mutant.name}", flush=True)
    print(f"kill rate: {killed}/{len(chosen)}")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
