"""startd-health: health and benchmark probes for HTCondor execute nodes.

The house (node_exporter's and NHC's split, under one package name):
``probes/`` gathers facts and judges them into typed results; ``core/`` owns
the probe model, time budgets, state and configuration; ``system/`` holds the
abilities probes share (running commands safely, ...); ``monitor/`` turns
results into output (STARTD_CRON ClassAd lines, Prometheus, the terminal).
"""

__version__ = "0.1.0"
