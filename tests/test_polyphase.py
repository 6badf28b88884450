"""The polyphase export form of ConvTranspose1d computes the same map as the original."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gsv_export.polyphase import PolyphaseConvTranspose1d, polyphase_upsampling


@pytest.mark.parametrize(
    ("stride", "kernel", "padding", "bias"),
    [(10, 16, 3, True), (8, 16, 4, True), (2, 4, 1, False), (2, 2, 0, True), (5, 11, 3, True)],
)
def test_same_outputs_as_the_transposed_conv(
    stride: int, kernel: int, padding: int, bias: bool
) -> None:
    torch.manual_seed(stride * kernel)
    up = nn.ConvTranspose1d(6, 4, kernel, stride, padding=padding, bias=bias).eval()
    poly = PolyphaseConvTranspose1d(up).eval()
    for frames in (1, 7, 33):
        x = torch.randn(2, 6, frames)
        with torch.no_grad():
            expected, actual = up(x), poly(x)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_swaps_and_restores_nested_modules() -> None:
    up = nn.ConvTranspose1d(4, 4, 16, 8, padding=4)
    grouped = nn.ConvTranspose1d(4, 4, 4, 2, padding=1, groups=2)  # not rewritten
    model = nn.Sequential(nn.ModuleList([up]), grouped)
    x = torch.randn(1, 4, 5)
    with torch.no_grad():
        before = model[1](model[0][0](x))
        with polyphase_upsampling(model):
            assert isinstance(model[0][0], PolyphaseConvTranspose1d)
            assert model[1] is grouped
            during = model[1](model[0][0](x))
    assert model[0][0] is up
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-6)
