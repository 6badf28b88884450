"""Parity checks of exported graphs against the PyTorch reference, collected into one report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from gsv_runtime.errors import GsvError


class ParityError(GsvError):
    """One or more exported graphs disagree with PyTorch beyond their tolerance."""


@dataclass(frozen=True)
class Check:
    """One measured comparison: what, how far off, against which bound."""

    name: str
    value: float
    limit: float
    higher_is_better: bool = False
    unit: str = ""

    @property
    def ok(self) -> bool:
        """Whether the value is within its limit."""
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def line(self) -> str:
        """``name: value (limit ≤ x) ok|FAIL`` for logs and the closing report."""
        op = "≥" if self.higher_is_better else "≤"
        status = "ok" if self.ok else "FAIL"
        return f"{self.name}: {self.value:.3g}{self.unit} (limit {op} {self.limit:g}) {status}"

    def to_dict(self) -> dict[str, object]:
        """For the manifest's ``parity`` section."""
        return {
            "name": self.name,
            "value": float(self.value),
            "limit": float(self.limit),
            "ok": bool(self.ok),
            "higher_is_better": self.higher_is_better,
        }


@dataclass
class ParityReport:
    """All checks of one export; :meth:`raise_if_failed` lists every failure at once."""

    checks: list[Check] = field(default_factory=list)

    def add(self, check: Check) -> Check:
        """Record a check and return it."""
        self.checks.append(check)
        return check

    def extend(self, other: ParityReport) -> None:
        """Append another report's checks."""
        self.checks.extend(other.checks)

    @property
    def failures(self) -> list[Check]:
        """Checks outside their limit."""
        return [c for c in self.checks if not c.ok]

    def raise_if_failed(self) -> None:
        """Raise one ParityError naming every failed check."""
        if self.failures:
            raise ParityError("parity check failed: " + "; ".join(c.line() for c in self.failures))


def relative_max_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    """max |expected − actual| / max |expected| (the scale floor avoids dividing by ~0)."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    scale = max(float(np.abs(expected).max()), 1e-6)
    return float(np.abs(expected - actual).max()) / scale


def compare_outputs(
    graph: str,
    backend: str,
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    limit: float,
) -> list[Check]:
    """One check per output: relative max difference (shape mismatch counts as infinite)."""
    return [
        Check(f"{graph}/{backend}/{name}", relative_max_diff(value, actual[name]), limit)
        for name, value in expected.items()
    ]


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-noise ratio of ``test`` against ``reference`` in dB (inf when identical)."""
    reference = np.asarray(reference, dtype=np.float64).ravel()
    test = np.asarray(test, dtype=np.float64).ravel()
    if reference.shape != test.shape:
        return float("-inf")
    noise = float(np.sum((reference - test) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-20) / noise)
