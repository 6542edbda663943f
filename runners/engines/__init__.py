"""Engine registry: every module in this package that defines an ``Engine`` subclass with a ``name`` is an engine.

Adding a runtime is adding one module; nothing here changes. Engine modules import their runtime library lazily
(inside methods), so every image can validate every job, even for engines it does not carry.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from runners.engines.base import Engine


@cache
def _registry() -> dict[str, type[Engine]]:
    found: dict[str, type[Engine]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in {"base", "hf_generate"}:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Engine) and getattr(obj, "name", None) \
                    and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return dict(sorted(found.items()))


def engine_class(name: str) -> type[Engine]:
    return _registry()[name]



def __getattr__(attr: str):
    if attr == "ENGINE_NAMES":
        return tuple(_registry())
    raise AttributeError(attr)
