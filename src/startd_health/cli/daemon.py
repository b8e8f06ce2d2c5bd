"""`startd-health daemon`: the continuous STARTD_CRON job (WaitForExit mode)."""

from __future__ import annotations

import argparse
import logging

from startd_health.cli.base import EXIT_CONFIG, EXIT_OK, config_or_failure_ad, on_demand_results, probe_settings

DESCRIPTION = ("Run the probes continuously, each on its own schedule (its _PERIOD) and at once when an event "
               "shows a change it depends on, and print a complete ClassAd, ended by a '-' line, whenever the "
               "verdict or a published value changes and at least every STARTD_HEALTH_HEARTBEAT seconds. Meant "
               "to be run by the startd as a STARTD_CRON job in WaitForExit mode (54-startd-health-daemon.conf). "
               "Answers re-check requests on STATE_DIR/recheck.sock. Logs to STATE_DIR/daemon.log. Exits on "
               "SIGTERM, SIGHUP (reconfig) or when its stdout is closed.")

log = logging.getLogger("startd-health")

# After a configuration error the daemon prints an unhealthy ad and waits
# this long before exiting: the startd restarts a WaitForExit job at once,
# and each start re-reads the configuration (a fixed file is picked up).
CONFIG_RETRY_SECONDS = 60.0


def main(args: argparse.Namespace) -> int:
    from startd_health.core.state import StateDir
    from startd_health.monitor import daemon as d
    from startd_health.monitor.recheck import RecheckServer

    config, probes = config_or_failure_ad(args)
    if config is None:
        d.wait_for_exit_signal(CONFIG_RETRY_SECONDS)
        return EXIT_CONFIG
    state = StateDir(config["STATE_DIR"])
    state_error = d.ensure_state(state)
    d.log_to_file(state, keep_stderr=args.debug)
    settings = probe_settings(config, probes)
    options = d.DaemonOptions(heartbeat=config["HEARTBEAT"], watch_interval=config["WATCH_INTERVAL"],
                              recheck_interval=config["RECHECK_INTERVAL"], ospool=config["OSPOOL_ATTRIBUTES"],
                              textfile_dir=config["TEXTFILE_DIR"])
    daemon = d.Daemon(probes, settings, state, options, config.condor,
                      watcher=d.watcher_for(probes, settings, config.condor) if config["TRIGGERS"] else None,
                      on_demand=lambda: on_demand_results(config))
    server = None
    # From here on a signal ends us cleanly (also while we are still starting).
    d.install_exit_handlers(lambda: server.close() if server is not None else None)
    lock = d.DaemonLock(state)
    if state_error:
        daemon.state_error = state_error
    elif lock.acquire(wait=5.0):
        left = d.journal_commands(state)
        if left:
            log.warning("killed %d processes a previous daemon's commands left: %s", len(left),
                        " ".join(map(str, left)))
        daemon.restore()
        server = RecheckServer(state.path, [p.name for p in probes], daemon.handle_recheck)
        problem = server.start()
        if problem:
            log.warning("%s; running without on-demand re-checks", problem)
            server = None
    else:
        log.warning("another daemon holds %s: running without the re-check socket", lock.path)
    if daemon.watcher is not None:
        log.info("watching: %s", "; ".join(daemon.watcher.describe()) or "nothing")
    log.info("daemon started: probes %s, heartbeat %gs", " ".join(p.name for p in probes), options.heartbeat)
    why = daemon.run()
    log.info("exiting: %s", why)
    from startd_health.system.procs import kill_live_groups
    kill_live_groups()
    if server is not None:
        server.close()
    return EXIT_OK
