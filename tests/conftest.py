"""Shared fixtures: tiny random checkpoints per version, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

VERSIONS = ["v1", "v2", "v2Pro", "v2ProPlus"]


@pytest.fixture(scope="session")
def tiny_voice(tmp_path_factory: pytest.TempPathFactory):
    """Return a function version → {"gpt": path, "sovits": path[, "sv": path]} (cached)."""
    from gsv_models.testing import make_voice_checkpoints
    from gsv_models.version import ModelVersion

    cache: dict[str, dict[str, Path]] = {}

    def get(version: str) -> dict[str, Path]:
        if version not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{version}")
            paths = make_voice_checkpoints(ModelVersion.parse(version), out, size="tiny", seed=0)
            cache[version] = {p.stem: p for p in paths}
        return cache[version]

    return get
