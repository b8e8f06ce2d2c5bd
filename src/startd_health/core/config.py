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


def parse_seconds(text: str) -> float:
    match = _SECONDS.match(text)
    if not match:
        raise ValueError("expected a duration in seconds (e.g. 90, 90s, 5m, 1h)")
    value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2).lower()]
    return value


def parse_positive_seconds(text: str) -> float:
    value = parse_seconds(text)
    if value <= 0:
        raise ValueError("expected a duration greater than zero")
    return value


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

    Through the Python bindings when they import; otherwise (a pilot whose
    Python has no bindings) through one `condor_config_val -dump -expand`.
    """

    def __init__(self, use_condor: Optional[bool] = None) -> None:
        self.available = condor_config_present() if use_condor is None else use_condor
        self.via = ""
        self._param: Any = None
        if self.available:
            self._param = _import_param()
            self.via = "htcondor2" if self._param is not None else ""
            if self._param is None:
                self._param = _dump_config()
                self.via = "condor_config_val" if self._param is not None else ""
            self.available = self._param is not None

    def get(self, name: str) -> Optional[str]:
        if not self.available:
            return None
        try:
            value = self._param.get(name)
        except Exception:  # the bindings raise on some malformed values
            return None
        return None if value is None else str(value)


_DUMP_LINE = re.compile(r"^([A-Za-z0-9_.]+) = (.*)$")


class _DumpedParams(dict):
    def get(self, name: str, default: Any = None) -> Any:  # HTCondor names are case-insensitive
        return super().get(name.upper(), default)


def _dump_config() -> Optional[_DumpedParams]:
    import shutil

    from startd_health.system.procs import run_command
    tool = shutil.which("condor_config_val")
    if not tool:
        return None
    result = run_command([tool, "-dump", "-expand"], timeout=15)
    if not result.ok:
        return None
    params = _DumpedParams()
    for line in result.stdout.splitlines():
        match = _DUMP_LINE.match(line)
        if match:
            params[match.group(1).upper()] = match.group(2).strip()
    return params


def _import_param() -> Any:
    # Imported here, not at module level: it costs tens of milliseconds and
    # only the commands that read HTCondor's configuration need it.
    try:
        import htcondor2
        return htcondor2.param
    except ImportError:
        pass
    try:  # HTCondor < 24 bindings (Debian trixie ships 23.9 with both)
        import htcondor  # type: ignore[import-not-found]
        return htcondor.param
    except ImportError:
        return None


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
        if raw is not None:
            try:
                settings[knob.name] = Setting(knob.parse(raw), source)
            except ValueError as exc:
                raise ConfigError(f"{knob.param_name} = {raw!r} ({source}): {exc}") from None
            continue
        derive = derived_defaults.get(knob.name)
        derived = derive(condor) if derive else None
        if derived is not None:
            settings[knob.name] = Setting(derived[0], derived[1])
        else:
            settings[knob.name] = Setting(knob.default, "default")
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
