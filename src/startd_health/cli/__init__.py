"""Command line: `startd-health COMMAND` and `startd-health-cron`.

Logs go to stderr, data to stdout. Exit status: 0 success; 1 internal error;
2 bad configuration or usage; 3 (cron) the ad was printed but results could
not be kept in the state directory. Whatever happens, `cron` prints a
complete ad ending in a `-` line.

The package: commands.py (the one table of commands), knobs.py (every
knob, in groups), app.py (parser and dispatch), base.py (what commands
share), one module per command, imported only when it runs. This module
imports nothing more than the entry points need: the startd starts
`startd-health-cron` every few minutes on every node.
"""

from __future__ import annotations

import os
import sys

EXIT_INTERNAL, EXIT_CONFIG = 1, 2


def _emit_failure_ad(reason: str) -> None:
    import time

    from startd_health.monitor.cron import render_failure
    sys.stdout.write(render_failure(reason, time.time()))


def cron_main() -> None:
    """Entry point for STARTD_CRON_<JOB>_EXECUTABLE: `startd-health cron` that
    prints a complete ad even when its arguments are wrong.

    (Measured on 23.9 and 25.14: the startd passes only the configured ARGS.)
    """
    code = EXIT_INTERNAL
    try:
        from startd_health.cli.app import main
        code = main(["cron", *sys.argv[1:]])
    except SystemExit as exc:  # argparse: usage error
        code = exc.code if isinstance(exc.code, int) else EXIT_CONFIG
        if code != 0:
            _emit_failure_ad("startd-health-cron: bad arguments (see StartLog)")
    except Exception as exc:  # never leave the startd without a complete ad
        import logging
        logging.getLogger("startd-health").exception("internal error")
        _emit_failure_ad(f"internal error: {type(exc).__name__}: {exc}")
    # Abandoned probe threads or children must not keep us alive.
    sys.stdout.flush()
    os._exit(code)


def run() -> None:
    """Entry point for `startd-health`."""
    ran = False   # the command itself decided the exit status (the hook: 1 holds the job on purpose)
    try:
        from startd_health.cli.app import main
        code = main()
        ran = True
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    except Exception as exc:
        import logging
        logging.getLogger("startd-health").exception("internal error")
        print(f"startd-health: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        # check speaks the monitoring-plugin protocol, where 1 is "degraded": ours is "unknown"
        code = 3 if sys.argv[1:2] == ["check"] else EXIT_INTERNAL
    if code != 0 and not ran and sys.argv[1:2] == ["hook"]:
        # A non-zero exit of a PREPARE_JOB hook holds the job: wrong hook
        # arguments (or our own crash) are the site's fault, never the job's.
        from startd_health.monitor.hook import not_checked
        code = not_checked("the hook could not run (bad HOOK_PREPARE_JOB_ARGS?): see the StartLog").emit()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
