#!/usr/bin/env python3
"""Generate the Grafana dashboards in grafana/dashboards/ (commit the JSON too).

    python grafana/generate.py           # rewrite the JSON files
    python grafana/generate.py --check   # exit 1 if a committed file differs

Built with Grafana's own Python SDK (grafana-foundation-sdk, dev/test-only
dependency, Python >= 3.11). Conventions every panel follows, and that
tests check on the JSON: the data source is the ${datasource} template
variable (no hard-coded UID), every panel has a unit, every rate() and
increase() uses $__rate_interval.

  startd-health-node   one or more nodes scraped directly: `startd-health
                       exporter`, or node_exporter with the cron job's textfile
  startd-health-pool   the pool seen from the collector: `startd-health
                       pool-exporter` (glideins included)
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional, Sequence

from grafana_foundation_sdk.builders import bargauge, dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode, StackingMode
from grafana_foundation_sdk.models.dashboard import (DashboardCursorSync, DataSourceRef, Threshold, ThresholdsMode,
                                                     VariableRefresh, VariableSort)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "dashboards")
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")


# ---------------------------------------------------------------- helpers

def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
          fmt: Optional[PromQueryFormat] = None) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    if fmt is not None:
        q = q.format(fmt)
    return q


def _common(panel, title: str, unit: str, description: str, targets: Sequence[prometheus.Dataquery],
            w: int, h: int):
    panel = panel.title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def series(title: str, unit: str, description: str, *targets: prometheus.Dataquery, w: int = 12, h: int = 8,
           stacked: bool = False, min_zero: bool = True):
    panel = _common(timeseries.Panel(), title, unit, description, targets, w, h)
    if min_zero:
        panel = panel.min(0)
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(30)
    return panel


def single(title: str, unit: str, description: str, *targets: prometheus.Dataquery, w: int = 6, h: int = 5,
           red_below: Optional[float] = None):
    panel = _common(stat.Panel(), title, unit, description, targets, w, h).graph_mode(BigValueGraphMode.NONE)
    panel = panel.reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    if red_below is not None:
        panel = panel.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
            [Threshold(None, "red"), Threshold(red_below, "green")]))
    return panel


def bars(title: str, unit: str, description: str, *targets: prometheus.Dataquery, w: int = 12, h: int = 8):
    return _common(bargauge.Panel(), title, unit, description, targets, w, h).reduce_options(
        ReduceDataOptions().calcs(["lastNotNull"]).values(False))


def listing(title: str, unit: str, description: str, *targets: prometheus.Dataquery, w: int = 12, h: int = 8):
    return _common(table.Panel(), title, unit, description, targets, w, h)


def heat(title: str, unit: str, description: str, *targets: prometheus.Dataquery, w: int = 12, h: int = 8):
    return (_common(heatmap.Panel(), title, unit, description, targets, w, h)
            .calculate(False).y_axis(heatmap.YAxisConfig().unit(unit)))


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def label_variable(name: str, metric: str, label: str, text: str) -> dashboard.QueryVariable:
    return (dashboard.QueryVariable(name).label(text).datasource(DS)
            .query(f"label_values({metric}, {label})").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*"))


def build(board: dashboard.Dashboard, rows: Sequence[tuple]) -> dict:
    """rows: (row title, [panels]); panel ids are assigned in order."""
    next_id = 1
    for title, panels in rows:
        board = board.with_row(dashboard.Row(title).id(next_id))
        next_id += 1
        for panel in panels:
            board = board.with_panel(panel.id(next_id))
            next_id += 1
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(["startd-health", "htcondor"])
            .refresh("1m").time("now-6h", "now").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
            .editable())


# ---------------------------------------------------------------- node dashboard

def node_dashboard() -> dict:
    sel = 'instance=~"$instance"'
    board = (new_dashboard("startd-health-node", "startd-health: nodes",
                           "Execute nodes scraped directly: `startd-health exporter`, or node_exporter with the "
                           "cron job's textfile (STARTD_HEALTH_TEXTFILE_DIR).")
             .with_variable(datasource_variable())
             .with_variable(label_variable("instance", "startd_health_healthy", "instance", "Node"))
             .with_variable(label_variable("image", "startd_health_container_image_ok", "image", "Image")))
    return build(board, [
        ("Verdict", [
            single("Healthy nodes", "short", "Nodes whose verdict is healthy (no probe failed).",
                   query(f"sum(startd_health_healthy{{{sel}}})", instant=True), red_below=1),
            single("Unhealthy nodes", "short", "Nodes on which a probe failed: their START gate refuses new jobs.",
                   query(f"sum(1 - startd_health_healthy{{{sel}}})", instant=True)),
            single("Failed probes", "short", "Probe results that are failed, over the selected nodes.",
                   query(f"sum(1 - startd_health_probe_success{{{sel}}})", instant=True)),
            single("Oldest probe result", "s", "Time since the oldest probe result was gathered.",
                   query(f"max(time() - startd_health_probe_last_run_timestamp_seconds{{{sel}}})", instant=True)),
            series("Verdict", "bool_yes_no", "1 healthy, 0 unhealthy, per node.",
                   query(f"startd_health_healthy{{{sel}}}", "{{instance}}"), w=24),
        ]),
        ("Probes", [
            listing("Probe status", "none", "Each probe's current status per node.",
                    query(f"startd_health_probe_status{{{sel}}} == 1", instant=True, fmt=PromQueryFormat.TABLE)),
            series("Time since each probe's last result", "s", "A probe whose result keeps ageing is not run "
                   "any more (cron job hung or removed).",
                   query(f"time() - startd_health_probe_last_run_timestamp_seconds{{{sel}}}",
                         "{{instance}} {{probe}}")),
            series("Probe duration", "s", "How long each probe's last run took.",
                   query(f"startd_health_probe_duration_seconds{{{sel}}}", "{{instance}} {{probe}}")),
            series("Probe runs and failures", "ops", "Runs and failed runs per second (`startd-health exporter` "
                   "only).",
                   query(f"sum by (probe) (rate(startd_health_probe_runs_total{{{sel}}}[$__rate_interval]))",
                         "runs {{probe}}"),
                   query(f"sum by (probe) (rate(startd_health_probe_failures_total{{{sel}}}[$__rate_interval]))",
                         "failures {{probe}}", ref="B")),
        ]),
        ("Containers", [
            series("Images launching", "bool_yes_no", "1 when the image launched at the probe's last run.",
                   query(f'startd_health_container_image_ok{{{sel}, image=~"$image"}}', "{{instance}} {{image}}")),
            series("Image launch time (last run)", "s", "Wall time of the last launch of each image.",
                   query(f'startd_health_container_launch_seconds{{{sel}, image=~"$image"}}',
                         "{{instance}} {{image}}")),
            heat("Image launch time distribution", "s", "Launches per launch-time bucket (`startd-health "
                 "exporter` only).",
                 query(f'sum by (le) (increase(startd_health_container_launch_duration_seconds_bucket{{{sel}, '
                       f'image=~"$image"}}[$__rate_interval]))', "{{le}}", fmt=PromQueryFormat.HEATMAP)),
            series("Image launch time p90", "s", "90th percentile of launches in each interval (`startd-health "
                   "exporter` only).",
                   query('histogram_quantile(0.9, sum by (image, le) (rate('
                         f'startd_health_container_launch_duration_seconds_bucket{{{sel}, image=~"$image"}}'
                         '[$__rate_interval])))', "{{image}}")),
        ]),
        ("CVMFS", [
            series("CVMFS repositories", "bool_yes_no", "1 when the repository is usable on the node.",
                   query(f"startd_health_cvmfs_repo_ok{{{sel}}}", "{{instance}} {{repo}}"), w=24),
        ]),
        ("Site checks", [
            listing("Site checks", "none", "Each site check's status (a check named NAME is the probe site_NAME: "
                    "STARTD_HEALTH_SITE_CHECKS) and its exit status, per node.",
                    query(f'startd_health_probe_status{{{sel}, probe=~"site_.+"}} == 1', instant=True,
                          fmt=PromQueryFormat.TABLE),
                    query(f"startd_health_site_check_exit_code{{{sel}}}", instant=True, fmt=PromQueryFormat.TABLE,
                          ref="B")),
            series("Site checks passing", "bool_yes_no", "1 unless the site check failed (Nagios CRITICAL, "
                   "node-problem-detector NonOK, timed out or could not run).",
                   query(f'startd_health_probe_success{{{sel}, probe=~"site_.+"}}', "{{instance}} {{probe}}")),
            *(series(f"Site check performance data: {what}", unit, f"Nagios performance data {how}, per check and "
                     "label.", query(f"startd_health_site_check_perfdata{suffix}{{{sel}}}",
                                     "{{instance}} {{probe}} {{label}}"))
              for suffix, what, unit, how in SITE_PERFDATA),
        ]),
        ("Kernel events", [
            series("Kernel events", "short", "Kernel messages per class in each interval (kernel probe: read-only "
                   "remounts, filesystem and I/O errors, OOM kills, hung tasks, machine checks, GPU Xids).",
                   query(f"sum by (instance, class) (increase(startd_health_kernel_events_total{{{sel}}}"
                         "[$__rate_interval])) > 0", "{{instance}} {{class}}")),
            listing("Read-only filesystems and failed GPUs", "none", "Filesystems the kernel remounted read-only "
                    "that still are, and GPUs with a fatal Xid within the kernel probe's window: each fails the node.",
                    query(f"startd_health_kernel_filesystem_readonly{{{sel}}} == 1", instant=True,
                          fmt=PromQueryFormat.TABLE),
                    query(f"startd_health_kernel_gpu_failed{{{sel}}} == 1", ref="B", instant=True,
                          fmt=PromQueryFormat.TABLE)),
        ]),
        ("Exporter", [
            series("Exporter memory", "bytes", "Resident memory of `startd-health exporter`.",
                   query(f"process_resident_memory_bytes{{{sel}}} and on (instance) startd_health_build_info",
                         "{{instance}}")),
            series("Exporter CPU", "percentunit", "CPU time of `startd-health exporter` per second.",
                   query(f"rate(process_cpu_seconds_total{{{sel}}}[$__rate_interval]) and on (instance) "
                         "startd_health_build_info", "{{instance}}")),
        ]),
    ])


SITE_PERFDATA = (  # (metric suffix, title, unit, what it holds): one panel per base unit
    ("_bytes", "bytes", "bytes", "in bytes (B, KB, MB, ... converted)"),
    ("_seconds", "seconds", "s", "in seconds (s, ms, us converted)"),
    ("_ratio", "ratios", "percentunit", "given in %, as ratios (0-1)"),
    ("", "unitless", "short", "without a unit (load averages, process counts, ...)"),
)


# ---------------------------------------------------------------- pool dashboard

BENCHMARKS = (  # (metric, title, unit): whole-node figures from the node exporters
    ("startd_health_benchmarks_db12_score", "DB12 score by CPU model", "none"),
    ("startd_health_benchmarks_matmul_flops", "numpy matmul by CPU model", "flops"),
)


def pool_dashboard() -> dict:
    sel = 'instance=~"$instance"'
    judged = f'startd_health_pool_nodes{{{sel}, state!="unknown"}}'
    healthy = f'startd_health_pool_nodes{{{sel}, state="healthy"}}'
    board = (new_dashboard("startd-health-pool", "startd-health: pool",
                           "The pool seen from the HTCondor collector by `startd-health pool-exporter`: every "
                           "machine that publishes StartdHealth* attributes, glideins included.")
             .with_variable(datasource_variable())
             .with_variable(label_variable("instance", "startd_health_pool_nodes", "instance", "Pool exporter"))
             .with_variable(label_variable("image", "startd_health_pool_container_image_nodes", "image", "Image")))
    rows: List[tuple] = [
        ("Health", [
            single("Healthy fraction now", "percentunit", "Healthy machines among those with a verdict (stale "
                   "verdicts count as not healthy).", query(f"sum({healthy}) / sum({judged})", instant=True),
                   red_below=0.9),
            single("Machines", "short", "Machines by state (unknown: no StartdHealth verdict published).",
                   query(f"sum by (state) (startd_health_pool_nodes{{{sel}}})", "{{state}}", instant=True), w=12),
            single("Collector query", "bool_yes_no", "Whether the last collector query was answered.",
                   query(f"min(startd_health_pool_query_success{{{sel}}})", instant=True), red_below=1),
            series("Healthy fraction over time", "percentunit", "Healthy machines among those with a verdict.",
                   query(f"sum({healthy}) / sum({judged})", "healthy"), min_zero=False),
            series("Machines by state", "short", "Machines by health state.",
                   query(f"sum by (state) (startd_health_pool_nodes{{{sel}}})", "{{state}}"), stacked=True),
            listing("Unhealthy or stale machines", "none", "Machines whose verdict is unhealthy or stale now.",
                    query(f"startd_health_pool_node_healthy{{{sel}}} == 0", instant=True, fmt=PromQueryFormat.TABLE),
                    w=24),
        ]),
        ("Probes", [
            series("Failing machines by probe", "short", "Fresh machines on which each probe failed.",
                   query(f'sum by (probe) (startd_health_pool_probe_nodes{{{sel}, status="failed"}})', "{{probe}}")),
            bars("Machines by probe status now", "short", "Fresh machines by each probe's status.",
                 query(f"sum by (probe, status) (startd_health_pool_probe_nodes{{{sel}}})", "{{probe}} {{status}}",
                       instant=True)),
        ]),
        ("CVMFS", [
            series("CVMFS repositories failing", "short", "Fresh machines on which each repository failed.",
                   query(f'sum by (repo) (startd_health_pool_cvmfs_repo_nodes{{{sel}, state="failed"}})',
                         "{{repo}}")),
            series("CVMFS repositories failing (fraction)", "percentunit", "Share of the machines checking a "
                   "repository on which it failed.",
                   query(f'sum by (repo) (startd_health_pool_cvmfs_repo_nodes{{{sel}, state="failed"}}) / '
                         f"sum by (repo) (startd_health_pool_cvmfs_repo_nodes{{{sel}}})", "{{repo}}")),
        ]),
        ("Containers", [
            heat("Image launch time across machines (heatmap)", "s", "Machines per launch-time bucket at each query (the "
                 "pool histogram is a snapshot: no rate).",
                 query(f'sum by (le) (startd_health_pool_container_launch_seconds_bucket{{{sel}, image=~"$image"}})',
                       "{{le}}", fmt=PromQueryFormat.HEATMAP)),
            series("Image launch time percentiles across machines", "s", "Median and 90th percentile per image.",
                   query('histogram_quantile(0.5, sum by (image, le) (startd_health_pool_container_launch_seconds'
                         f'_bucket{{{sel}, image=~"$image"}}))', "p50 {{image}}"),
                   query('histogram_quantile(0.9, sum by (image, le) (startd_health_pool_container_launch_seconds'
                         f'_bucket{{{sel}, image=~"$image"}}))', "p90 {{image}}", ref="B")),
            series("Images failing", "short", "Fresh machines on which each image did not launch.",
                   query(f'sum by (image) (startd_health_pool_container_image_nodes{{{sel}, image=~"$image", '
                         'state="failed"})', "{{image}}"), w=24),
        ]),
        ("Benchmarks", [
            bars(title, unit, f"Mean whole-node {metric} per CPU model (node exporters; the CPU model comes "
                              "from startd_health_benchmarks_info).",
                 query(f'avg by (cpu_model) ({metric}{{mode="wholenode"}} * on (instance, job) '
                       "group_left (cpu_model) startd_health_benchmarks_info)", "{{cpu_model}}", instant=True))
            for metric, title, unit in BENCHMARKS
        ]),
        ("Pool exporter", [
            series("Collector query duration", "s", "How long the last query took (failover included).",
                   query(f"startd_health_pool_query_duration_seconds{{{sel}}}", "{{instance}}")),
            series("Collector failures", "short", "Queries a collector did not answer, per interval.",
                   query(f"sum by (collector) (increase(startd_health_pool_collector_failures_total{{{sel}}}"
                         "[$__rate_interval]))", "{{collector}}")),
            listing("Answering collector", "none", "The collector that answered the last query.",
                    query(f"startd_health_pool_collector_info{{{sel}}}", instant=True, fmt=PromQueryFormat.TABLE)),
            series("Slot ads per query", "short", "Slot ads in the last answer (dynamic slots are not asked for).",
                   query(f"startd_health_pool_query_ads{{{sel}}}", "{{instance}}")),
        ]),
    ]
    return build(board, rows)


DASHBOARDS = {"startd-health-node.json": node_dashboard, "startd-health-pool.json": pool_dashboard}


def render(make) -> str:
    return json.dumps(make(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str]) -> int:
    check = "--check" in argv
    stale = []
    os.makedirs(OUT, exist_ok=True)
    for name, make in DASHBOARDS.items():
        path = os.path.join(OUT, name)
        text = render(make)
        try:
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        if check:
            stale.append(name)
        else:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run grafana/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
