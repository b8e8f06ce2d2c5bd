"""One module per probe. A module declares a core.model.Probe subclass with
a ``name``; the registry below finds it, so adding a probe means adding a
module (and its tests) and nothing else. Modules whose name starts with
``_`` are not probes (programs the probes run as children).

Probes made from configuration (site checks: one probe per configured
command) come from a module that defines ``dynamic_probes(lookup)`` and
``DYNAMIC_KNOBS`` (the knobs that say which probes exist, e.g.
STARTD_HEALTH_SITE_CHECKS). The command line calls ``configure(lookup)``
once it can read knobs (flags, _CONDOR_ environment, HTCondor's
configuration); from then on all_probes() has them too, in the same
order-by-name, with the same budgets, verdict and publishing as any probe.
A bad value is kept (configuration_error) for the command to report in
its own way (cron: a complete unhealthy ad).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from startd_health.core.model import Probe

_registry: Dict[str, Type[Probe]] = {}
_providers: List[ModuleType] = []
_dynamic: Dict[str, Type[Probe]] = {}
_dynamic_error: List[str] = []

# Knob NAME (without STARTD_HEALTH_) -> (raw value, where it came from), or None when unset.
Lookup = Callable[[str], Optional[Tuple[str, str]]]


def builtin_probes() -> Dict[str, Type[Probe]]:
    """The probe classes the modules declare, by name, in alphabetical order."""
    if not _registry:
        found: Dict[str, Type[Probe]] = {}
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            if callable(getattr(module, "dynamic_probes", None)):
                _providers.append(module)
            for value in vars(module).values():
                if (isinstance(value, type) and issubclass(value, Probe) and value is not Probe
                        and value.__module__ == module.__name__ and getattr(value, "name", None)):
                    found[value.name] = value
        _registry.update(sorted(found.items()))
    return dict(_registry)


def all_probes() -> Dict[str, Type[Probe]]:
    """Probe classes by name, in a stable (alphabetical) order: the modules'
    and, after configure(), those configuration declares."""
    found = builtin_probes()
    if not _dynamic:
        return found
    found.update(_dynamic)
    return dict(sorted(found.items()))


def dynamic_knobs() -> Tuple[Any, ...]:
    """The knobs (core.config.Knob) that say which dynamic probes exist."""
    builtin_probes()
    return tuple(k for module in _providers for k in getattr(module, "DYNAMIC_KNOBS", ()))


def configure(lookup: Lookup) -> None:
    """Learn the probes configuration declares (replacing any learnt before).
    A ConfigError is kept for configuration_error(), not raised: the caller
    decides how to report it, once its own output is set up."""
    from startd_health.core.config import ConfigError
    builtin = builtin_probes()
    _dynamic.clear()
    del _dynamic_error[:]
    try:
        for module in _providers:
            for name, cls in module.dynamic_probes(lookup).items():   # type: ignore[attr-defined]
                if name in builtin or name in _dynamic:
                    raise ConfigError(f"{module.__name__}: the configured probe {name} clashes with another probe")
                _dynamic[name] = cls
    except ConfigError as exc:
        _dynamic.clear()
        _dynamic_error.append(str(exc))


def configuration_error() -> str:
    """Why the dynamic probes could not be learnt ('' when they were, or none are configured)."""
    return _dynamic_error[0] if _dynamic_error else ""
