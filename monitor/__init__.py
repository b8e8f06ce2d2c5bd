"""startd-health: health and benchmark probes for HTCondor execute nodes.

The package is split the way node_exporter and NHC split theirs:
``probes/`` gathers facts and judges them into typed results; ``monitor/``
owns time budgets, state, configuration and the renderers (STARTD_CRON
ClassAd lines, later Prometheus) that turn those results into output.
"""

__version__ = "0.1.0"
