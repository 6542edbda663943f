"""Model fixtures shared by the runner tests: tiny random-weight models built once per machine (orchestrator.fixtures
caches them on disk), and the real SmolLM2-135M."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import fixtures


def fixtures_root() -> Path:
    return fixtures.default_root()


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    return {arch: fixtures.build_tiny(arch, fixtures_root() / fixtures.fixture_name(arch))
            for arch in fixtures.ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return fixtures.build_smollm2()
