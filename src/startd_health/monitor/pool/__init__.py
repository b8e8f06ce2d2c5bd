"""`startd-health pool-exporter`: the pool's health from the HTCondor collector.

One job per module: schema.py (which attributes to ask for, as the cron
renderer spells them), aggregate.py (slot ads -> a small summary, pure),
query.py (the query child and its protocol), families.py (summary ->
metric families), exporter.py (the daemon); knobs in monitor/pool_knobs.py.

Glideins on remote sites cannot be scraped by Prometheus, but their slot ads
reach the collector with our StartdHealth* attributes. This exporter queries
the collector on a schedule (APScheduler, like `startd-health exporter`) and
serves pool-wide metrics from memory; nothing is queried on the scrape path.

Shaped by what a pool of tens of thousands of slots needs:

- Dynamic slots carry the same StartdHealth* attributes as their
  partitionable parent (STARTD_CRON publishes into every slot), so the query
  leaves them out (`SlotType =!= "Dynamic"`) and asks only for the attributes
  it uses (a projection). What still comes back is counted per machine
  (`Machine`): the partitionable slot, else a static slot, else a dynamic
  one; among several startds of one machine (glideins), the freshest verdict.
- The htcondor2 bindings hold the GIL for the whole query (measured: a
  thread that queries a silent collector freezes every other thread, the
  HTTP server's too), so each query runs in a child process with the
  collector's QUERY_TIMEOUT set and a hard deadline, after which its process
  group is killed. The child reduces the ads to a small summary (JSON) and
  exits, so the ads' memory never stays in the daemon.
- Collectors are tried in order (STARTD_HEALTH_POOL_COLLECTORS, by default
  HTCondor's COLLECTOR_HOST): the first that answers wins, and
  startd_health_pool_collector_info{collector} says which one it was.

Metric families (naming as in monitor/metrics.py, prefix startd_health_pool_):

  startd_health_pool_nodes{state}                  machines: healthy | unhealthy | stale | unknown
  startd_health_pool_node_healthy{machine}         the one per-machine family: 1 healthy, 0 unhealthy or
                                                   stale (machines without a verdict are not listed)
  startd_health_pool_probe_nodes{probe,status}     fresh machines by each probe's status
  startd_health_pool_<probe>_<item>_nodes{<item>,state}   fresh machines per image / CVMFS repo, ok | failed
  startd_health_pool_container_launch_seconds{image}      histogram of image launch times across fresh
                                                   machines (a snapshot per query: use without rate())
  startd_health_pool_query_success                 1 when the last query was answered
  startd_health_pool_query_duration_seconds        how long the last query took (failover included)
  startd_health_pool_query_last_success_timestamp_seconds
  startd_health_pool_query_ads                     slot ads the last answer held
  startd_health_pool_collector_info{collector}     1 for the collector that answered last
  startd_health_pool_collector_failures_total{collector}

A machine is "unknown" without a StartdHealthOk verdict (tool not installed,
not run yet), "stale" when its StartdHealthTimestamp is older than
STARTD_HEALTH_POOL_STALE_AFTER; probe, item and launch-time figures count
fresh machines only. When no query has been answered for that long (or
three intervals, if longer), only the exporter's own metrics are served:
frozen figures would look live.
"""
