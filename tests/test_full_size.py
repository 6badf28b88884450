"""Full-size random checkpoints of every version: upstream key/shape lists, strict load, forward.

The expected keys come from upstream's own classes (tests/data/record_upstream_keys.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsv_models.checkpoint import load_checkpoint, read_payload
from gsv_models.inspect import describe
from gsv_models.load import build_model
from gsv_models.testing import make_voice_checkpoints
from gsv_models.version import ModelVersion
from tests.conftest import VERSIONS

EXPECTED = json.loads((Path(__file__).parent / "data" / "upstream_keys.json").read_text())

# upstream process_ckpt.py comments: fine-tuned fp16 SoVITS files of v1 ≈ 82,942 KB, v2 ≈ 83,014 KB
UPSTREAM_SOVITS_KB = {"v1": 82_942, "v2": 83_014}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_voices(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, dict[str, Path]] = {}

    def get(version: str) -> dict[str, Path]:
        if version not in cache:
            out = tmp_path_factory.mktemp(f"full-{version}")
            paths = make_voice_checkpoints(ModelVersion.parse(version), out, size="full")
            cache[version] = {p.stem: p for p in paths}
        return cache[version]

    return get


def _shapes(weights: dict) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in weights.items()}


@pytest.mark.parametrize("version", VERSIONS)
def test_keys_and_shapes_are_upstreams(full_voices, version: str) -> None:
    paths = full_voices(version)
    symbols = ModelVersion.parse(version).symbols_version
    gpt, _ = read_payload(paths["gpt"])
    assert _shapes(gpt["weight"]) == EXPECTED[f"gpt_{symbols}"]
    sovits, _ = read_payload(paths["sovits"])
    assert _shapes(sovits["weight"]) == EXPECTED[f"sovits_{version}"]


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_strict_load_and_forward(full_voices, version: str) -> None:
    paths = full_voices(version)
    for kind, path in paths.items():
        ckpt = load_checkpoint(path, kind=kind)  # type: ignore[arg-type]
        build_model(ckpt)  # strict: raises on any missing or unexpected key
        if kind == "sovits":
            assert ckpt.version is ModelVersion.parse(version)
        lines = list(describe(path, forward=True))
        assert any("forward:" in line for line in lines), lines


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_sovits_file_size_is_upstreams(full_voices, version: str) -> None:
    size_kb = full_voices(version)["sovits"].stat().st_size / 1024
    assert abs(size_kb - UPSTREAM_SOVITS_KB[version]) / UPSTREAM_SOVITS_KB[version] < 0.002
