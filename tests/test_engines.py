"""The engine interface itself: optional phases are declared, and every declaration matches what the engine does."""

from __future__ import annotations

import pytest

from runners.engines import ENGINE_NAMES, engine_class
from runners.engines.base import Engine


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_optional_phases_are_declared_exactly(name):
    cls = engine_class(name)
    assert cls.optional_phases <= {"prepare", "compile"}, cls.optional_phases
    for phase in ("prepare", "compile"):
        overrides = getattr(cls, phase) is not getattr(Engine, phase)
        assert overrides == (phase in cls.optional_phases), f"{name}: {phase} overridden={overrides}, declared=" \
                                                            f"{phase in cls.optional_phases}"
