"""One module per probe. A module declares a core.model.Probe subclass with
a ``name``; the registry below finds it, so adding a probe means adding a
module (and its tests) and nothing else. Modules whose name starts with
``_`` are not probes (programs the probes run as children)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Type

from startd_health.core.model import Probe

_registry: Dict[str, Type[Probe]] = {}


def all_probes() -> Dict[str, Type[Probe]]:
    """Probe classes by name, in a stable (alphabetical) order."""
    if not _registry:
        found: Dict[str, Type[Probe]] = {}
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for value in vars(module).values():
                if (isinstance(value, type) and issubclass(value, Probe) and value is not Probe
                        and value.__module__ == module.__name__ and getattr(value, "name", None)):
                    found[value.name] = value
        _registry.update(sorted(found.items()))
    return dict(_registry)
