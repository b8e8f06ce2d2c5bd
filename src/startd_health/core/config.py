"""Configuration the HTCondor way.

Every knob is an HTCondor configuration variable named STARTD_HEALTH_<NAME>,
read with htcondor2.param (so config.d files, $(macros) and _CONDOR_ environment
overrides behave as for HTCondor's own tools) and overridable by a command-line
flag --<name>. Without any HTCondor configuration on the machine, the
_CONDOR_STARTD_HEALTH_<NAME> environment variables are still honoured and
everything else takes its built-in default, so the tool runs standalone.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

PREFIX = "STARTD_HEALTH_"
CONDOR_CONFIG_FILES = ("/etc/condor/condor_config", "/usr/local/etc/condor_config")


class ConfigError(Exception):
    """An invalid value; str() is the one line shown to the user."""


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "t", "y", "on"):
        return True
    if lowered in ("false", "no", "0", "f", "n", "off"):
        return False
    raise ValueError("expected true or false")


_SECONDS = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}

# Every number knob has a range: a value outside it is the usual one-line
# configuration error, never a run that overflows a timer (a deadline of
# 99999999999 s made threading raise OverflowError) or a budget so small that
# every check fails for a reason that names no knob (a 0 s launch budget).
MAX_SECONDS = 7 * 24 * 3600.0   # no period, budget or quarantine is longer than a week
MIN_BUDGET_SECONDS = 1.0        # a budget below this fails every check it bounds


class _Bounded:
    """A number knob's parser: convert, then check the range (shown in the error)."""

    minimum: Any
    maximum: Any

    def convert(self, text: str) -> Any:
        raise NotImplementedError

    def describe(self, value: Any) -> str:
        return str(value)

    def __call__(self, text: str) -> Any:
        value = self.convert(text)
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"out of range: expected {self.range_text}")
        return value

    @property
    def range_text(self) -> str:
        return f"{self.describe(self.minimum)} to {self.describe(self.maximum)}"


@dataclass(frozen=True)
class Seconds(_Bounded):
    """A duration (90, 90s, 5m, 1h) within [minimum, maximum]."""

    minimum: float = MIN_BUDGET_SECONDS
    maximum: float = MAX_SECONDS

    def convert(self, text: str) -> float:
        match = _SECONDS.match(text)
        if not match:
            raise ValueError("expected a duration in seconds (e.g. 90, 90s, 5m, 1h)")
        return float(match.group(1)) * _UNITS[match.group(2).lower()]

    def describe(self, value: float) -> str:
        return f"{value / 86400:g} days" if value >= 86400 and value % 86400 == 0 else f"{value:g} s"


@dataclass(frozen=True)
class Count(_Bounded):
    """A whole number within [minimum, maximum]."""

    minimum: int = 1
    maximum: int = 1000

    def convert(self, text: str) -> int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None


parse_seconds = Seconds(minimum=0.0)           # 0 allowed: the knob's "off"
parse_positive_seconds = Seconds()              # periods and budgets: at least MIN_BUDGET_SECONDS


def parse_list(text: str) -> Tuple[str, ...]:
    """HTCondor list syntax: items separated by commas and/or white space."""
    return tuple(item for item in re.split(r"[\s,]+", text.strip()) if item)


def parse_args(text: str) -> Tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"cannot split into arguments: {exc}") from None


def format_args(value: Tuple[str, ...]) -> str:
    return " ".join(shlex.quote(v) for v in value)


def parse_string(text: str) -> str:
    return text.strip()


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Knob:
    """One configuration variable: STARTD_HEALTH_<name>, flag --<name-in-lower-case>.

    This one declaration is all there is of a knob: the option, its --help
    line, `startd-health config` and the README's knob table come from it."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    format: Callable[[Any], str] = format_value
    # How the default reads when it is not a plain value (worked out at run
    # time, or empty meaning "none"): shown by --help and the README.
    default_text: str = ""
    # A default worked out from HTCondor's configuration when the knob is
    # not set: condor -> (value, source) or None (then `default` applies).
    derive: Optional[Callable[["CondorParams"], Optional[Tuple[Any, str]]]] = None
    # What an empty value stands for when it is used (e.g. the runtime the
    # probe would find), for `startd-health config` only; the probe works
    # it out itself each run. Config -> (value text, how it was found).
    resolve: Optional[Callable[["Config"], Tuple[str, str]]] = None
    # An optional Python package the knob's feature cannot work without,
    # checked when the knob is set to something (not at its default).
    needs: str = ""

    @property
    def param_name(self) -> str:
        return PREFIX + self.name

    @property
    def default_label(self) -> str:
        """The default as people read it: default_text, else the value ("none" when empty)."""
        if self.default_text:
            return self.default_text
        return self.format(self.default) if self.default not in ("", (), None) else "none"

    @property
    def flag(self) -> str:
        return "--" + self.name.lower().replace("_", "-")

    @property
    def dest(self) -> str:
        return "knob_" + self.name.lower()


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str


def condor_config_present(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether HTCondor would find a configuration here (as its tools look for one)."""
    if environ.get("CONDOR_CONFIG"):
        return True
    candidates = list(CONDOR_CONFIG_FILES)
    try:
        import pwd
        candidates.append(os.path.join(pwd.getpwnam("condor").pw_dir, "condor_config"))
    except (KeyError, ImportError):
        pass
    return any(os.path.exists(path) for path in candidates)


class CondorParams:
    """Lookup of HTCondor configuration; empty when there is none (standalone).

    Read once, in a child process (core.condor_config: the bindings exit the
    process when the configuration is broken), through the Python bindings
    when they import, otherwise through `condor_config_val -dump -expand`.
    A configuration that exists but cannot be read is a ConfigError.
    """

    def __init__(self, use_condor: Optional[bool] = None) -> None:
        self.available = condor_config_present() if use_condor is None else use_condor
        self.via = ""
        self._params: Dict[str, str] = {}
        if self.available:
            from startd_health.core.condor_config import read_condor_config
            read = read_condor_config()
            if read.error:
                raise ConfigError(read.error)
            self.via = read.via
            self._params = read.params or {}
            self.available = read.params is not None

    def get(self, name: str) -> Optional[str]:
        # HTCondor's names are case-insensitive.
        return self._params.get(name.upper()) if self.available else None

    def names(self) -> Tuple[str, ...]:
        """Every variable that is set (upper case): for per-slot knobs such as SLOT<N>_EXECUTE."""
        return tuple(self._params) if self.available else ()


class Config:
    """The effective configuration: a value and its source for every knob."""

    def __init__(self, settings: Dict[str, Setting], condor: CondorParams) -> None:
        self._settings = settings
        self.condor = condor

    def __getitem__(self, name: str) -> Any:
        return self._settings[name].value

    def source(self, name: str) -> str:
        return self._settings[name].source

    def items(self) -> Iterable[Tuple[str, Setting]]:
        return self._settings.items()

    def items_values(self) -> Iterable[Tuple[str, Any]]:
        return ((name, setting.value) for name, setting in self._settings.items())


def load_config(
    knobs: Sequence[Knob],
    flag_values: Mapping[str, Optional[str]],
    condor: CondorParams,
    derived_defaults: Mapping[str, Callable[[CondorParams], Optional[Tuple[Any, str]]]] = {},
    environ: Mapping[str, str] = os.environ,
) -> Config:
    """Resolve every knob: flag > environment/HTCondor config > derived default > default.

    An empty (or blank) value at any level means the default, as in HTCondor.
    Raises ConfigError naming the knob, the bad value and where it came from.
    """
    settings: Dict[str, Setting] = {}
    for knob in knobs:
        raw: Optional[str] = None
        source = ""
        if flag_values.get(knob.name) is not None:
            raw, source = flag_values[knob.name], f"command line {knob.flag}"
        elif "_CONDOR_" + knob.param_name in environ:
            raw, source = environ["_CONDOR_" + knob.param_name], f"environment _CONDOR_{knob.param_name}"
        else:
            value = condor.get(knob.param_name)
            if value is not None:
                raw, source = value, f"HTCondor config {knob.param_name}"
        if raw is not None and raw.strip():
            try:
                settings[knob.name] = Setting(knob.parse(raw), source)
            except ValueError as exc:
                raise ConfigError(f"{knob.param_name} = {raw!r} ({source}): {exc}") from None
            continue
        # Empty is unset, as in HTCondor: the default, never "check nothing"
        # (an empty probe list once ran no probe and published a healthy node).
        derive = derived_defaults.get(knob.name)
        derived = derive(condor) if derive else None
        value, why = derived if derived is not None else (knob.default, "default")
        settings[knob.name] = Setting(value, f"{why}; {source} is empty" if raw is not None else why)
    return Config(settings, condor)


def effective(config: Config, knob: Knob) -> Tuple[str, str]:
    """(value as text, its source). A knob left empty whose value is worked
    out when it is used shows what it resolves to."""
    value, source = knob.format(config[knob.name]), config.source(knob.name)
    if not value and knob.resolve is not None and source.startswith("default"):
        value, how = knob.resolve(config)
        source = f"default: {how}"
    return value, source


def describe(config: Config, knobs: Sequence[Knob]) -> List[str]:
    """Lines for `startd-health config`: NAME = value    # source."""
    width = max(len(k.param_name) for k in knobs)
    return [f"{k.param_name:<{width}} = {value}    # {source}"
            for k in knobs for value, source in [effective(config, k)]]
