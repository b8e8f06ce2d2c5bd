"""Reviewed allow-list: dashboard panels and rule expressions that may return
no data against the end-to-end stack of test_pool_exporter.py (a real pool
with synthetic machines, the node and pool exporters, a real Prometheus).

Every other panel query, template variable and rule expression must return
data there. Keys: "<dashboard uid>: <panel title>" or "rule: <alert or
record name>". Each alert is also proven to fire by the promtool unit tests
(packaging/prometheus/tests/), whatever is listed here.
"""

ALLOWED_EMPTY = {
    "startd-health-pool: DB12 score by CPU model":
        "needs a benchmark result on a node: benchmarks run only as HTCondor's idle-time BENCHMARKS job "
        "(tests/e2e/test_benchmarks.py), not in this stack; the query is checked to be valid PromQL",
    "startd-health-pool: numpy matmul by CPU model":
        "needs a benchmark result on a node (see above); the query is checked to be valid PromQL",
    "startd-health-node: CVMFS repositories":
        "startd_health_cvmfs_repo_ok needs CVMFS repositories configured and mounted on the node; the test's "
        "node exporter runs the container probe only. The pool dashboard's CVMFS panels are checked",
    "startd-health-node: Kernel events":
        "startd_health_kernel_events_total comes from nodes running the kernel probe; the test's node exporter "
        "runs the container probe only, and the panel shows only intervals with events",
    "startd-health-node: Read-only filesystems and failed GPUs":
        "needs the kernel probe on a node with a read-only remount or a fatal Xid (see the kernel rules below)",
    "rule: StartdHealthCvmfsRepoDownOnManyNodes":
        "same metric, startd_health_cvmfs_repo_ok, from nodes running the cvmfs probe; its pool twin "
        "StartdHealthPoolCvmfsRepoDown is checked",
    "rule: StartdHealthSiteCheckFailingOnManyNodes":
        "needs the same site check failing on three scraped nodes; the stack has one node exporter",
    "rule: StartdHealthProbeStale": "needs a probe result older than an hour; the test's probes run every 2 s",
    "rule: StartdHealthContainerLaunchRegression": "compares with a day ago (offset 1d): needs a day of history",
    "rule: StartdHealthPoolContainerLaunchRegression": "compares with a day ago (offset 1d): needs a day of history",
    "rule: StartdHealthPoolHealthyFractionDrop": "compares with an hour ago (offset 1h): needs an hour of history",
    "rule: StartdHealthKernelFilesystemReadOnly":
        "needs the kernel probe on a node whose kernel remounted a filesystem read-only; the test's node "
        "exporter runs the container probe only (recorded remounts: tests/unit/test_kernel.py)",
    "rule: StartdHealthKernelGpuFailed": "needs a fatal NVIDIA Xid in a node's kernel log; no GPU here",
    "rule: StartdHealthKernelHardwareErrors":
        "needs the kernel probe (not run by the test's node exporter) and I/O, filesystem or MCE messages",
}
