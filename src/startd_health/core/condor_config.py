"""Reading HTCondor's configuration without trusting the bindings in-process.

Importing htcondor2 (or the older htcondor) reads the whole HTCondor
configuration, and when that fails -- a config.d file only root may read while
the cron job runs as condor, an unreadable CONDOR_CONFIG, a syntax error such
as a missing `endif` -- the C++ library prints to stderr and calls exit(1):
no exception, no Python clean-up, and the startd gets an empty answer and
keeps publishing the last (healthy) verdict until STARTD_HEALTH_MAX_AGE.
(Measured with the 25.14 PyPI wheel; Debian's 23.9 and 25.14 builds exit on
a syntax error too, but skip an unreadable config.d file. classad2's parse
functions read the configuration and exit the same way; its import, quote()
and ExprTree do not.)

So the configuration is read in a forked child: it imports the bindings,
sends every value back as JSON through a pipe and exits; its stdout and
stderr go to a second pipe, never to ours (the cron job's stdout is the ad).
When the child dies, its exit status and what it wrote to stderr say why, and
the caller gets one line it can publish. The child has a budget: HTCondor's
configuration may run commands (`include command : ...`) that can hang.

Cost (CONDOR_CONFIG=... benchmarks/cron_cost.py, and 30 interleaved runs of
`cron --force --probes cvmfs` before/after on the 2-core test host): a cron run
that reads a configuration takes ~10-16 ms more CPU (median 151 -> 167 ms:
fork and copy-on-write ~6 ms, the JSON round trip of ~1000 values ~3 ms, the
bindings' import as before) and 3 MiB less peak RSS (the bindings are no
longer loaded in the cron process); standalone runs are unchanged.
"""

from __future__ import annotations

import gc
import json
import os
import re
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

READ_TIMEOUT = 15.0          # seconds for the whole configuration, `include command`s included
REAP_SECONDS = 1.0           # after SIGKILL: a child stuck in D state is abandoned, not waited for
MAX_ERROR_CHARS = 400        # of HTCondor's complaint, in the one line we report
CHILD_FAILED = 70            # the child's own exit status for a Python error (EX_SOFTWARE)


@dataclass(frozen=True)
class ReadResult:
    params: Optional[Dict[str, str]]   # NAME (upper case) -> expanded value; None: not read
    via: str                           # "htcondor2", "htcondor", "condor_config_val" or ""
    error: str = ""                    # why a configuration that exists could not be read


def read_condor_config(timeout: float = READ_TIMEOUT) -> ReadResult:
    """HTCondor's configuration, through the bindings in a child process,
    else (no bindings: a pilot's bare Python) `condor_config_val -dump`.

    params is None and error empty when neither is available (standalone)."""
    via, params, error = _read_in_child(timeout)
    if error:
        return ReadResult(None, via, _explain(error))
    if params is not None:
        return ReadResult(params, via)
    return _read_with_condor_config_val(timeout)


def _explain(detail: str) -> str:
    where = os.environ.get("CONDOR_CONFIG")
    try:
        import pwd
        user = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        user = str(os.geteuid())
    # The detail first: a long line is cut at the end when published.
    return (f"HTCondor's configuration cannot be read as user {user}: {detail} ("
            f"{f'CONDOR_CONFIG={where}; ' if where else ''}`condor_config_val -summary` as {user} shows the same)")


# ---------------------------------------------------------------- the child

def _child_main(data_fd: int, output_fd: int, timeout: float) -> None:
    """In the forked child: never returns."""
    code = CHILD_FAILED
    try:
        # A collection would touch every object inherited from the parent and
        # so copy its whole heap (copy-on-write); the child lives a few ms.
        gc.disable()
        os.setsid()  # its own group: a hung `include command` goes with it
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        # Its own budget too: should we be killed while it hangs, it still ends.
        signal.alarm(int(timeout) + 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output_fd, 1)   # whatever HTCondor prints must never reach our stdout (the ad)
        os.dup2(output_fd, 2)
        via, param = _import_bindings()
        payload = {"via": via, "params": _snapshot(param) if param is not None else None}
        data = json.dumps(payload, separators=(",", ":")).encode()
        while data:
            data = data[os.write(data_fd, data):]
        code = 0
    except BaseException:  # noqa: BLE001 - the child reports everything through its exit status
        try:
            import traceback
            os.write(2, traceback.format_exc().encode(errors="replace"))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _import_bindings() -> Tuple[str, Any]:
    try:
        import htcondor2
        return "htcondor2", htcondor2.param
    except ImportError:
        pass
    try:  # HTCondor < 24 bindings (Debian trixie ships 23.9 with both)
        import htcondor  # type: ignore[import-not-found]
        return "htcondor", htcondor.param
    except ImportError:
        return "", None


def _snapshot(param: Any) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for name in param.keys():
        try:
            value = param.get(name)
        except Exception:  # the bindings raise on some malformed values: as if unset
            continue
        if value is not None:
            values[name.upper()] = str(value)
    return values


# ---------------------------------------------------------------- the parent

def _read_in_child(timeout: float) -> Tuple[str, Optional[Dict[str, str]], str]:
    """(via, params, error): params None without bindings; error set when the child failed."""
    try:
        # Loaded here, before the fork, the libraries the bindings share with
        # classad2 are loaded once: the child then loads only the rest, and the
        # ad's renderer (which quotes with classad2) gets them for free. Its
        # import reads no configuration (measured: only its parse functions do).
        import classad2  # noqa: F401
    except ImportError:
        pass
    try:
        data_r, data_w = os.pipe()
        out_r, out_w = os.pipe()
    except OSError as exc:
        return "", None, f"cannot start a process to read it: {exc.strerror or exc}"
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (data_r, data_w, out_r, out_w):
            os.close(fd)
        return "", None, f"cannot start a process to read it: {exc.strerror or exc}"
    if pid == 0:
        os.close(data_r)
        os.close(out_r)
        _child_main(data_w, out_w, timeout)
    os.close(data_w)
    os.close(out_w)
    chunks: Dict[int, List[bytes]] = {data_r: [], out_r: []}
    open_fds = [data_r, out_r]
    status: Optional[int] = None
    deadline = time.monotonic() + timeout
    try:
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(open_fds, [], [], min(0.5, max(0.0, deadline - time.monotonic())))
            for fd in ready:
                block = os.read(fd, 65536)
                if block:
                    chunks[fd].append(block)
                else:
                    open_fds.remove(fd)
            if open_fds and status is None:
                # Exited while something it started still holds a pipe: do not wait for that.
                status = _reap(pid, block=False)
                if status is not None:
                    _kill_group(pid)
                    deadline = min(deadline, time.monotonic() + 0.2)
        if status is None:
            status = _reap(pid, block=not open_fds, wait=REAP_SECONDS if not open_fds else 0.0)
        timed_out = status is None
        if timed_out:
            _kill_group(pid)
            status = _reap(pid, block=True, wait=REAP_SECONDS)
    finally:
        os.close(data_r)
        os.close(out_r)
    output = b"".join(chunks[out_r]).decode(errors="replace")
    if timed_out:
        return "", None, f"reading it took longer than {timeout:g}s (stopped)" + _summary(output, ": ")
    code = os.waitstatus_to_exitcode(status) if status is not None else None
    if code != 0:
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return "", None, _summary(output) or f"the bindings ended with {how} while reading it"
    try:
        payload = json.loads(b"".join(chunks[data_r]))
        return payload["via"], payload["params"], ""
    except (ValueError, KeyError, TypeError) as exc:
        return "", None, f"unreadable answer from the bindings ({exc})" + _summary(output, ": ")


def _reap(pid: int, block: bool, wait: float = 0.0) -> Optional[int]:
    """The child's wait status, or None while it runs (polled for at most `wait`)."""
    end = time.monotonic() + wait
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if not block or time.monotonic() >= end:
            return None
        time.sleep(0.01)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# HTCondor says where, then what: 'Config source Error "F", Line 2:' /
# 'Configuration Error Line 2 while reading global config source F' /
# 'endif(s) not found before end-of-file'. The first repeats the second.
_WHERE_ONLY = re.compile(r'^Config source Error ".*", Line \d+:$')


def _summary(output: str, prefix: str = "") -> str:
    """HTCondor's complaint as one line, what is wrong first (a long line is cut at its end)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if len(lines) > 1:
        lines = [lines[-1]] + [line for line in lines[:-1] if not _WHERE_ONLY.match(line)]
    text = re.sub(r"\s+", " ", "; ".join(lines))
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS - 3] + "..."
    return prefix + text if text else ""


# ---------------------------------------------------------------- without bindings

_DUMP_LINE = re.compile(r"^([A-Za-z0-9_.]+) = (.*)$")


def _read_with_condor_config_val(timeout: float) -> ReadResult:
    import shutil

    from startd_health.system.procs import run_command
    tool = shutil.which("condor_config_val")
    if not tool:
        return ReadResult(None, "")
    result = run_command([tool, "-dump", "-expand"], timeout=timeout)
    if not result.ok:
        detail = _summary(result.stderr) if result.returncode is not None else ""
        return ReadResult(None, "condor_config_val",
                          _explain("condor_config_val " + (detail or result.describe_failure())))
    params: Dict[str, str] = {}
    for line in result.stdout.splitlines():
        match = _DUMP_LINE.match(line)
        if match:
            params[match.group(1).upper()] = match.group(2).strip()
    return ReadResult(params, "condor_config_val")
