#!/usr/bin/env python3
"""What configured site checks cost beyond the checks themselves.

Target (issue 15): 10 configured site checks cost no more than the checks
themselves plus 5 ms each. Measured as CPU time (user + sys of the whole
process tree, from wait4/RUSAGE_CHILDREN: the cron job is paid in CPU on
every node) and wall time, median of N interleaved rounds:

  1. the 10 commands run directly, one after the other (subprocess, no shell);
  2. the real runner (core.runner.run_probes) running them as 10 site probes
     in this process: overhead per check = (2 - 1) / 10;
  3. the real CLI, `startd-health cron --force` with the same 10 checks, and
     with 1 of them: overhead per check = ((3 with 10) - (3 with 1)) / 9 minus
     what one check costs alone (configuration, registry, options, runner,
     ClassAd lines of one more probe).

The checks are Debian's monitoring-plugins (check_dummy, check_load,
check_procs, check_disk, check_users, check_swap) and the project's
NHC-style script: tests/host-packages.txt declares the package.

usage: benchmarks/site_checks_cost.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

PLUGINS = "/usr/lib/nagios/plugins"
NHC_STYLE = os.path.join(REPO, "packaging", "site-checks", "nhc-style-check.sh")
CHECKS = {
    "dummy": f"{PLUGINS}/check_dummy 0 fine",
    "load": f"{PLUGINS}/check_load -r -w 50,40,30 -c 100,80,60",
    "procs": f"{PLUGINS}/check_procs -w 100000 -c 200000",
    "dstate": f"{PLUGINS}/check_procs -s D -w 50 -c 100",
    "disk": f"{PLUGINS}/check_disk -w 10% -c 5% -p /",
    "tmp": f"{PLUGINS}/check_disk -w 10% -c 5% -p /tmp",
    "users": f"{PLUGINS}/check_users -w 50 -c 100",
    "swap": f"{PLUGINS}/check_swap -w 0% -c 0%",
    "nhc": f"{NHC_STYLE} -m / -w /tmp -F /nonexistent/drain",
    "dummy2": f"{PLUGINS}/check_dummy 1 'warned'",
}
PER_CHECK_LIMIT = 0.005


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_directly(argvs):
    wall, cpu = time.perf_counter(), children_cpu()
    for argv in argvs:
        subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, LC_ALL="C"), cwd="/")
    return time.perf_counter() - wall, children_cpu() - cpu


def run_runner(probes, settings):
    from startd_health.core.runner import run_probes
    wall, cpu = time.perf_counter(), children_cpu() + self_cpu()
    report = run_probes(probes, settings, 60.0, state=None, force=True)
    assert len(report.results) == len(probes) and all(r.reason for r in report.results), report.results
    return time.perf_counter() - wall, children_cpu() + self_cpu() - cpu


def run_cli(env, names):
    argv = [sys.executable, "-m", "startd_health", "cron", "--no-condor-config", "--force", "--probes", " ".join(names)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 3):
        raise SystemExit(f"{argv} exited {os.waitstatus_to_exitcode(status)}")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def cli_env(checks, state):
    env = {k: v for k, v in os.environ.items() if not k.startswith("_CONDOR_")}
    env["PYTHONPATH"] = os.path.join(REPO, "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["_CONDOR_STARTD_HEALTH_STATE_DIR"] = state
    env["_CONDOR_STARTD_HEALTH_SITE_CHECKS"] = " ".join(checks)
    env.update({f"_CONDOR_STARTD_HEALTH_SITE_CHECK_{n.upper()}": c for n, c in checks.items()})
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    from startd_health import probes as registry
    from startd_health.probes.site import split_args
    knobs = dict({"SITE_CHECKS": " ".join(CHECKS)}, **{f"SITE_CHECK_{n.upper()}": c for n, c in CHECKS.items()})
    registry.configure(lambda name: (knobs[name], "benchmark") if name in knobs else None)
    classes = registry.all_probes()
    probes = [classes[f"site_{n}"]() for n in CHECKS]
    settings = {p.name: {"period": 300.0, "timeout": 30.0, p.prefix().lower(): split_args(CHECKS[p.name[5:]]),
                         "args": (), "protocol": "nagios"} for p in probes}
    argvs = [list(split_args(c)) for c in CHECKS.values()]
    state = tempfile.mkdtemp(prefix="site-checks-cost-")
    env10 = cli_env(CHECKS, state)
    env1 = cli_env({"dummy": CHECKS["dummy"]}, state)
    names10 = [f"site_{n}" for n in CHECKS]

    rows = {k: ([], []) for k in ("direct", "runner", "cli10", "cli1", "one")}
    for _ in range(2):   # warm-up (page cache, Python byte code)
        run_directly(argvs), run_runner(probes, settings), run_cli(env10, names10), run_cli(env1, ["site_dummy"])
    for _ in range(args.runs):   # interleaved: the machine's load is shared alike
        for key, call in (("direct", lambda: run_directly(argvs)), ("runner", lambda: run_runner(probes, settings)),
                          ("cli10", lambda: run_cli(env10, names10)), ("cli1", lambda: run_cli(env1, ["site_dummy"])),
                          ("one", lambda: run_directly(argvs[:1]))):
            wall, cpu = call()
            rows[key][0].append(wall)
            rows[key][1].append(cpu)
    med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in rows.items()}
    ms = 1000.0
    print(f"{len(CHECKS)} site checks, {args.runs} interleaved rounds, medians (wall / CPU of the process tree):")
    print(f"  the commands run directly, one after the other   {med['direct'][0] * ms:7.1f} ms / {med['direct'][1] * ms:6.1f} ms")
    print(f"  as 10 site probes in the runner (in parallel)    {med['runner'][0] * ms:7.1f} ms / {med['runner'][1] * ms:6.1f} ms")
    runner_over = (med["runner"][1] - med["direct"][1]) / len(CHECKS)
    print(f"    runner overhead per check (CPU)                {runner_over * ms:7.2f} ms")
    print(f"  `cron --force` with the 10 checks                {med['cli10'][0] * ms:7.1f} ms / {med['cli10'][1] * ms:6.1f} ms")
    print(f"  `cron --force` with 1 of them (check_dummy)      {med['cli1'][0] * ms:7.1f} ms / {med['cli1'][1] * ms:6.1f} ms")
    cli_over = ((med["cli10"][1] - med["cli1"][1]) - (med["direct"][1] - med["one"][1])) / (len(CHECKS) - 1)
    print(f"    CLI overhead per added check (CPU, the checks' own CPU subtracted) {cli_over * ms:6.2f} ms")
    worst = max(runner_over, cli_over)
    verdict = "within" if worst <= PER_CHECK_LIMIT else "OVER"
    print(f"  target: at most {PER_CHECK_LIMIT * ms:.0f} ms per check beyond the checks: {verdict}")
    return 0 if worst <= PER_CHECK_LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
