"""OpenVINO IR pass: ``Sin`` as range reduction plus a polynomial, in ops the CPU plugin JITs.

OpenVINO's CPU plugin has no vectorised kernel for ``Sin``: it runs a scalar reference
(``ref_any_f32``) and reorders the blocked layouts around it. BigVGAN (v3's vocoder) takes a
sine in every SnakeBeta activation, at up to 24 kHz × 1536 channels, so the reference kernel
was 43 % of its time under the bf16 hint. Rewritten as ``r = x − k·π`` (``k = round(x/π)``,
π split in three constants) and ``sin r ≈ r·P(r²)`` (Taylor to r¹³ on |r| ≤ π/2, error below
1e-9 there) with the sign ``(−1)^k``, the same function runs in fused element-wise kernels.
Measured on the 2-core EPYC, full-size BigVGAN, 2 s of audio, 2 threads: bf16 hint 2.15 →
0.82 s, f32 2.28 → 1.85 s, outputs unchanged (vs torch: f32 112.2 dB, bf16 35.4 → 35.5 dB).
onnxruntime runs ``Sin`` vectorised (the polynomial was slower there: 2.31 → 2.84 s), so
only the IR changes.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np


def _split_pi(parts: int, bits: int) -> tuple[float, ...]:
    """π as a sum of floats with ``bits`` significant bits each (Cody–Waite): ``k·part`` is
    exact in f32 for |k| < 2^(24 − bits), so the reduction loses nothing for |x| < 2^12·π."""
    out, rest = [], math.pi
    for _ in range(parts - 1):
        exponent = math.floor(math.log2(rest))
        step = 2.0 ** (exponent - bits + 1)
        out.append(math.floor(rest / step) * step)
        rest -= out[-1]
    return (*out, rest)


_PI_PARTS: Final = _split_pi(3, 12)
_TAYLOR: Final = tuple((-1) ** n / math.factorial(2 * n + 1) for n in range(7))
"""sin r = r·(1 − r²/3! + r⁴/5! − … + r¹²/13!)."""


def _sine(x: Any) -> Any:
    """The polynomial sine of an f32 output ``x`` (opset 13 nodes)."""
    import openvino.opset13 as ops

    def const(value: float) -> Any:
        return ops.constant(np.float32(value))

    k = ops.round(ops.multiply(x, const(1 / math.pi)), "half_to_even")
    r = x
    for part in _PI_PARTS:
        r = ops.subtract(r, ops.multiply(k, const(part)))
    r2 = ops.multiply(r, r)
    poly = const(_TAYLOR[-1])
    for coefficient in reversed(_TAYLOR[:-1]):
        poly = ops.add(ops.multiply(poly, r2), const(coefficient))
    # (−1)^k = 1 − 2·(k mod 2); floor-mod keeps it right for negative k
    sign = ops.subtract(const(1.0), ops.multiply(const(2.0), ops.floor_mod(k, const(2.0))))
    return ops.multiply(ops.multiply(r, poly), sign)


def replace_sine(model: Any) -> int:
    """Replace every f32 ``Sin`` of an ``ov.Model`` in place; returns how many."""
    import openvino as ov

    count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Sin" or node.get_output_element_type(0) != ov.Type.f32:
            continue
        node.output(0).replace(_sine(node.input_value(0)).output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count
