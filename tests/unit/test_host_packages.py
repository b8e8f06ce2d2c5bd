"""Every host command the tests run is declared in tests/host-packages.txt
(which ./dev test installs). A static check over the tests' Python source:

- names given to shutil.which / prom.binary / need (the tests' lookups);
- the program of a literal argv ([prog, ...]) given to subprocess.run/Popen/
  check_output, run_command or ctx.run, and the commands of a shell script
  run that way (``sh -c SCRIPT``, ``shell=True``) or written as a ``#!/bin/sh``
  file;
- command names a test takes as a parameter named ``tool``/``tools``.

What it cannot see (commands built at run time, scripts in other files) the
Python 3.9 run sees: there only the declared packages are installed
(tests/e2e/test_python39.py). Scripts run inside the pool root filesystems
(pool.sh, nsenter) use rootfs.sh's packages and are not host commands.
"""

import ast
import os
import re
import shlex
import subprocess
from typing import Iterator, List, Set

from .helpers import REPO

TESTS = os.path.join(REPO, "tests")
RUNNERS = {"subprocess.run", "subprocess.Popen", "subprocess.check_output", "subprocess.check_call",
           "subprocess.call", "run_command", "ctx.run"}
LOOKUPS = {"which", "binary", "need"}
SHELLS = {"sh", "bash", "dash"}
SYSTEM_BIN = {"/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin"}
# Shell builtins and keywords (dash/bash): no package provides them.
BUILTINS = {"[", "test", "echo", "printf", "cd", "exit", "trap", "wait", "set", "shift", "read", "export", "unset",
            "kill", "eval", "exec", "true", "false", "return", "local", ".", ":", "type", "ulimit", "umask",
            "command", "if", "then", "else", "elif", "fi", "while", "until", "for", "do", "done", "case", "esac",
            "in", "!", "{", "}", "break", "continue"}
# Inside the pool's root filesystem (rootfs.sh's packages), not on the host.
INSIDE_ROOTFS = ("sh", "enter", "nsenter", "write")
# The pool's own code: its scripts run in the root filesystems; what it runs
# on the host (rootfs.sh, nsenter) is declared by hand.
POOL_CODE = os.path.join(TESTS, "realpool")


# Used by a unit test only when present (the end-to-end tests use it for sure).
OPTIONAL_IN_UNIT = {"promtool"}


def declared(scope: str = "all") -> Set[str]:
    out = subprocess.run([os.path.join(TESTS, "host-packages.sh"), "list", scope], capture_output=True, text=True,
                         check=True).stdout
    return {os.path.basename(item) for line in out.splitlines() for item in line.split()[2:]}


def literal(node: ast.AST) -> str:
    """A string constant or f-string (its holes as ``$X``), else ''."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "$X" for v in node.values)
    return ""


def script_commands(script: str) -> Iterator[str]:
    """The command words of a shell script (first word of each simple command)."""
    script = re.sub(r"\d*[<>]&\d*-?|&>", " ", script)   # 2>&1, >&2, &>: redirections, not separators
    for segment in re.split(r"\n|;|&&|\|\||\||&|\$\(|`|\(|\)|\bthen\b|\bdo\b|\belse\b", script):
        try:
            words = shlex.split(segment, comments=True)
        except ValueError:
            words = segment.split()
        while words and (re.match(r"^\w+=", words[0]) or words[0] in ("!", "if", "while", "until", "exec", "time")):
            words.pop(0)
        if words[:2] == ["command", "-v"] and len(words) > 2:
            words = words[2:]
        if words and not words[0].startswith(("$", "-", "<", ">", "#", "\\")) and "$X" not in words[0]:
            name = os.path.basename(words[0])
            if re.match(r"^[\w.+-]+$", name) and name not in BUILTINS:
                yield name


def argv_commands(elements: List[ast.AST]) -> Iterator[str]:
    first = literal(elements[0]) if elements else ""
    if not first or "$X" in first:
        return
    name = os.path.basename(first)
    if "/" in first and os.path.dirname(first) not in SYSTEM_BIN:
        return   # a test's own stand-in (or a path that must not exist)
    if name in SHELLS and len(elements) > 2 and literal(elements[1]) == "-c":
        yield from script_commands(literal(elements[2]))
    yield name


def name_of(func: ast.AST) -> str:
    """f, or x.f when called on a plain name x."""
    if isinstance(func, ast.Attribute):
        return f"{func.value.id}.{func.attr}" if isinstance(func.value, ast.Name) else func.attr
    return func.id if isinstance(func, ast.Name) else ""


def host_commands(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = name_of(node.func)
            if name.rsplit(".", 1)[-1] in INSIDE_ROOTFS:
                continue
            if name.rsplit(".", 1)[-1] in LOOKUPS and node.args and literal(node.args[0]):
                yield literal(node.args[0])
            if name in RUNNERS and node.args:
                first = node.args[0]
                if isinstance(first, (ast.List, ast.Tuple)):
                    yield from argv_commands(first.elts)
                elif any(k.arg == "shell" for k in node.keywords) and literal(first):
                    yield from script_commands(literal(first))
            if name.endswith("parametrize") and node.args and re.search(r"\btools?\b", literal(node.args[0])):
                for sub in ast.walk(node.args[1]):
                    if literal(sub) and re.match(r"^[\w.+-]+$", literal(sub)):
                        yield literal(sub)
        text = literal(node)
        if text.startswith("#!/bin/sh\n"):
            yield from script_commands(text)


def used() -> dict:
    found: dict = {}
    for directory, _, files in os.walk(TESTS):
        if directory.startswith(POOL_CODE):
            continue
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as handle:
                    tree = ast.parse(handle.read(), path)
                for command in host_commands(tree):
                    found.setdefault(command, set()).add(os.path.relpath(path, REPO))
    return found


def test_every_host_command_the_tests_run_is_declared():
    undeclared = {command: sorted(files) for command, files in used().items() if command not in declared()}
    assert not undeclared, ("commands the tests run on the host that tests/host-packages.txt does not declare "
                            f"(add their Debian package there): {undeclared}")


def test_what_the_unit_tests_run_is_declared_for_them():
    """Scope "unit": what the Python 3.9 run installs (and ./dev test with STARTD_HEALTH_SKIP_E2E=1)."""
    unit = declared("unit") | OPTIONAL_IN_UNIT
    wrong = {command: sorted(f for f in files if f.startswith("tests/unit/"))
             for command, files in used().items()
             if command not in unit and any(f.startswith("tests/unit/") for f in files)}
    assert not wrong, f"commands unit tests run whose package tests/host-packages.txt declares for e2e only: {wrong}"


def test_the_check_sees_the_ways_tests_run_commands():
    """The check itself, on a sample: what it must find, and the fake
    programs and in-rootfs scripts it must leave alone."""
    sample = '''
import shutil, subprocess
shutil.which("setpriv")
subprocess.run(["getfattr", "-n", "user.x", path])
subprocess.run(["/bin/sh", "-c", f"FOO=1 mksquashfs {src} out; cat x | zstd -q && command -v attr"])
subprocess.run("rpm2archive - < x | tar -xzf -", shell=True)
subprocess.run([str(fake), "--version"])
pool.sh("squashfuse a b")
FAKE = """#!/bin/sh
if [ "$1" = --version ]; then echo 1; fi
sleep 1; exec "$@"
"""
@pytest.mark.parametrize("tools", [("ls", "busybox")])
def test(tools): pass
'''
    found = set(host_commands(ast.parse(sample)))
    assert found == {"setpriv", "getfattr", "sh", "mksquashfs", "cat", "zstd", "attr", "rpm2archive", "tar",
                     "sleep", "ls", "busybox"}
