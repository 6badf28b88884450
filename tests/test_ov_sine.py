"""The OpenVINO Sin rewrite: no Sin left in converted IR, the same function to f32 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from gsv_export.graph_io import GraphDecl, export_onnx, tensor, to_openvino
from gsv_export.ov_sine import replace_sine


def _run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x)[0]


def test_polynomial_sine_matches_sin_over_a_wide_range() -> None:
    x = ops.parameter([-1], np.float32, name="x")
    model = ov.Model([ops.sin(x)], [x])
    assert replace_sine(model) == 1
    assert "Sin" not in {n.get_type_name() for n in model.get_ordered_ops()}
    grid = np.linspace(-3000.0, 3000.0, 400_001, dtype=np.float32)
    edges = np.float32([0.0, np.pi / 2, -np.pi / 2, np.pi, 1e-30, -7.5e-3])
    values = np.concatenate([grid, edges])
    error = np.abs(_run(model, values) - np.sin(values.astype(np.float64)))
    assert error.max() < 3e-7  # ≈ 2 ulp of 1.0 in f32


def test_squared_sine_is_one_reduction_and_a_polynomial() -> None:
    """``Sin`` then ``Power 2`` becomes one ``sin²`` within the f32 conditioning of its
    argument: the reduction ``y/π`` rounds once, so the error grows as |y|·2⁻²³."""
    x = ops.parameter([-1], np.float32, name="x")
    model = ov.Model([ops.power(ops.sin(x), ops.constant(np.float32(2.0)))], [x])
    assert replace_sine(model) == 1
    types = {n.get_type_name() for n in model.get_ordered_ops()}
    assert not types & {"Sin", "Power", "FloorMod"}
    grid = np.linspace(-3000.0, 3000.0, 400_001, dtype=np.float32)
    edges = np.float32([0.0, np.pi / 2, -np.pi / 2, np.pi, 1e-30, -7.5e-3])
    values = np.concatenate([grid, edges])
    exact = np.sin(values.astype(np.float64)) ** 2
    error = np.abs(_run(model, values) - exact)
    assert (error <= 3e-7 + 1.2e-7 * np.abs(values)).all()


class _Snake(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sin(3.0 * x).pow(2)


def test_converted_ir_has_no_sin_and_keeps_the_graph_output(tmp_path: Path) -> None:
    decl = GraphDecl("snake", {"x": tensor("float32", "n")}, {"y": tensor("float32", "n")})
    x = torch.linspace(-40, 40, 10_001)
    onnx_path = export_onnx(_Snake(), (x,), decl, tmp_path / "snake.onnx")
    xml = to_openvino(onnx_path, tmp_path / "snake.xml")
    model = ov.Core().read_model(xml)
    assert "Sin" not in {n.get_type_name() for n in model.get_ordered_ops()}
    got = _run(model, x.numpy())
    np.testing.assert_allclose(got, _Snake()(x).numpy(), rtol=1e-6, atol=2e-6)
