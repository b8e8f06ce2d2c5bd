"""The sessions probe's fork test (probes/sessions.py), run by path as
`python -I -S _fork_test.py TOKEN PIDFILE SETUP_SECONDS`: standard library
only, nothing of startd_health (it must start fast and touch nothing else).

A supervisor forks a "job" that calls setsid() as HTCondor's starter does,
then from it a grandchild that calls setsid() again (its own session) and a
double-forked grandchild that gets re-parented. The supervisor kills the
job's process group with SIGKILL, as the starter would, reports which
grandchild survived as one JSON line, and kills every test process by pid.
Its forks never return into the main flow (os._exit); the test processes
exit by themselves when the supervisor is gone (EOF on a lifeline pipe).
"""
import json
import os
import select
import signal
import sys
import time

def note(pid):
    fd = os.open(pidfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"%d\n" % pid)
    finally:
        os.close(fd)


def say(**msg):
    os.write(report_w, (json.dumps(msg) + "\n").encode())


def linger():
    os.close(report_w)
    select.select([life_r], [], [], 60)
    os._exit(0)


def forked(body):
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):   # never hold the supervisor's pipes
            os.dup2(null, fd)
        body()
    except BaseException:
        code = 1
    os._exit(code)


def try_setsid():
    """setsid(); the error text, or '' when it worked."""
    try:
        os.setsid()
        return ""
    except OSError as exc:
        return exc.strerror or str(exc)


def escaper():
    note(os.getpid())
    say(kind="session", pid=os.getpid(), error=try_setsid())
    linger()


def double_parent():
    me = os.getpid()

    def grandchild():
        note(os.getpid())
        end = time.monotonic() + 2
        while os.getppid() == me and time.monotonic() < end:
            time.sleep(0.002)
        say(kind="double", pid=os.getpid(), reparented=os.getppid() != me)
        linger()

    forked(grandchild)


def job():
    os.close(report_r)
    os.close(life_w)
    note(os.getpid())
    error = try_setsid()
    if error:   # still a group of its own, as the starter would make it
        os.setpgid(0, 0)
    say(kind="job", pid=os.getpid(), error=error)
    forked(escaper)
    os.waitpid(forked(double_parent), 0)
    say(kind="ready", pgid=os.getpgid(0))
    linger()


def alive(pid):
    """A live (not zombie) process carrying this run's token: a reused pid is not ours.
    (The probe's own check is system/procfs.cmdline_contains; this file imports nothing of ours.)"""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            mine = token.encode() in handle.read()
    except (OSError, IndexError):
        return False
    return mine and state not in ("Z", "X")


def noted():
    try:
        with open(pidfile) as handle:
            return [int(p) for p in handle.read().split()]
    except (OSError, ValueError):
        return []


def main():
    job_pid = forked(job)
    os.close(report_w)
    os.close(life_r)
    msgs, buf = {}, b""
    end = time.monotonic() + setup_seconds
    while not all(k in msgs for k in ("job", "session", "double", "ready")):
        left = end - time.monotonic()
        if left <= 0 or not select.select([report_r], [], [], left)[0]:
            break
        chunk = os.read(report_r, 4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line)
            msgs[msg["kind"]] = msg
    out = {"reported": sorted(msgs)}
    try:
        os.killpg(job_pid, signal.SIGKILL)   # what the starter does to a job's process group
    except OSError as exc:
        out["kill_error"] = "killpg: " + (exc.strerror or str(exc))
        os.kill(job_pid, signal.SIGKILL)
    os.waitpid(job_pid, 0)
    session = msgs.get("session", {}).get("pid")
    double = msgs.get("double", {}).get("pid")
    end = time.monotonic() + 1.0
    while double and alive(double) and time.monotonic() < end:
        time.sleep(0.005)
    time.sleep(0.05)   # a member of the killed group would be gone by now
    out["setsid_error"] = msgs.get("job", {}).get("error", "did not report")
    out["session_setsid_error"] = msgs.get("session", {}).get("error", "did not report")
    out["session_escape"] = bool(session and alive(session))
    out["double_fork_escape"] = bool(double and alive(double))
    out["double_fork_reparented"] = bool(msgs.get("double", {}).get("reparented"))
    pids = noted()
    for pid in pids:   # clean up by pid: escaped test processes die here
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    end = time.monotonic() + 2.0
    while any(alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.01)
    out["pids"] = pids
    out["leftover"] = [p for p in pids if alive(p)]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    token, pidfile, setup_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    report_r, report_w = os.pipe()
    life_r, life_w = os.pipe()   # the supervisor holds the only write end: EOF when it is gone
    main()
