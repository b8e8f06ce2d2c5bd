"""The few attributes the pre-job hook needs from the job ad on its stdin.

The starter writes the job ad in the old ClassAd format, one `Name = value`
per line. With the HTCondor bindings (classad2) the ad is parsed and each
attribute evaluated by the real library. A pilot's Python often has no
bindings, and a hook that dies there holds every job; so without them a
small reader takes what the hook needs from literal values only: a string
literal (old-ClassAd escaping, as classad2 reads it: a backslash is literal
except before a double quote, and a backslash-quote that ends the line is a
backslash followed by the closing quote) or `undefined`. Anything else (an
expression, a malformed line) is reported as Unreadable with the reason,
never guessed at: the hook then says what it did not check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Union


@dataclass(frozen=True)
class Unreadable:
    """An attribute that is there but whose value could not be read (why: for a person)."""
    why: str


Value = Union[str, int, float, bool, Unreadable]


def read_attributes(text: str, names: Iterable[str]) -> Dict[str, Value]:
    """The named attributes of the ad in `text` that have a value; undefined ones are left out.
    Keys are spelled as in `names` (ClassAd names are case-insensitive)."""
    names = tuple(names)
    try:
        import classad2  # lazy: only where the bindings are installed
    except ImportError:
        return _read_literals(text, names)
    return _read_with_classad2(classad2, text, names)


def _read_with_classad2(classad2: Any, text: str, names: Iterable[str]) -> Dict[str, Value]:
    try:
        ad = classad2.parseOne(text)
    except Exception as exc:  # the bindings raise several types on garbage
        return {name: Unreadable(f"the job ad does not parse ({type(exc).__name__})") for name in names}
    result: Dict[str, Value] = {}
    for name in names:
        if name not in ad:
            continue
        try:
            value = ad.eval(name)
        except Exception as exc:
            result[name] = Unreadable(f"does not evaluate ({type(exc).__name__}: {exc})")
            continue
        if isinstance(value, classad2.Value):   # Undefined or Error
            literal = str(ad.lookup(name)).strip().lower() == "undefined"
            if not literal:  # e.g. it names a machine attribute only the starter can resolve
                result[name] = Unreadable(f"evaluates to {value.name.lower()} in the job ad alone "
                                          f"({str(ad.lookup(name))[:80]})")
            continue
        result[name] = value
    return result


def _read_literals(text: str, names: Iterable[str]) -> Dict[str, Value]:
    wanted = {name.lower(): name for name in names}
    if text.lstrip().startswith("["):
        why = "the job ad is in the new ClassAd syntax, which is not read without the HTCondor bindings"
        return {name: Unreadable(why) for name in wanted.values()}
    result: Dict[str, Value] = {}
    for line in text.splitlines():
        key, sep, expr = line.partition("=")
        name = wanted.get(key.strip().lower()) if sep else None
        if name is None:
            continue
        parsed = _literal(expr.lstrip(" \t"))   # not rstrip: a backslash-quote must END the line to close
        if parsed is None:
            result.pop(name, None)   # undefined; the last definition wins, as in classad2
        else:
            result[name] = parsed
    return result


def _literal(expr: str) -> Optional[Union[str, Unreadable]]:
    """A string literal's value, None for `undefined`, or Unreadable."""
    if expr.strip().lower() == "undefined":
        return None
    if not expr.startswith('"'):
        return Unreadable(f"is an expression ({expr[:80]}), not evaluated without the HTCondor bindings")
    chars = []
    i, end = 1, len(expr)
    while i < end:
        c = expr[i]
        if c == "\\" and i + 1 < end and expr[i + 1] == '"':
            if i + 2 == end:       # a backslash-quote that ends the line: backslash, then the closing quote
                chars.append("\\")
                return "".join(chars)
            chars.append('"')
            i += 2
            continue
        if c == '"':
            if expr[i + 1:].strip():
                return Unreadable(f"is an expression ({expr[:80]}), not evaluated without the HTCondor bindings")
            return "".join(chars)
        chars.append(c)
        i += 1
    return Unreadable("has an unterminated string")
