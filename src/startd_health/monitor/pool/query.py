"""The collector query, in a child process: `python -m
startd_health.monitor.pool.query SPEC_JSON OUTPUT_PATH`.

The htcondor2 bindings hold the GIL for the whole query (a thread that
queries a silent collector freezes every other thread, the HTTP server's
too), so each query runs in a child with the collector's QUERY_TIMEOUT set
and a hard deadline, after which its process group is killed. The child
reduces the ads to a PoolSnapshot, writes it as JSON (atomically) and
exits, so the ads' memory never stays in the daemon.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional, Sequence, Tuple

from startd_health.monitor.pool.aggregate import PoolSnapshot, aggregate
from startd_health.monitor.pool.schema import MAX_LABEL_VALUES, Schema, constraint

CHILD_MODULE = "startd_health.monitor.pool.query"
CHILD_START_SECONDS = 5.0   # interpreter start and imports of the query child, on top of the query budget


def query_collector(collector: str, schema: Schema, extra_constraint: str, stale_after: float) -> PoolSnapshot:
    """Query one collector and summarise (runs in the child). A second query
    follows only when images appear whose launch times were not projected."""
    import htcondor2

    def ask(s: Schema) -> PoolSnapshot:
        ads = htcondor2.Collector(collector).query(htcondor2.AdTypes.Startd, constraint(extra_constraint),
                                                  projection=s.projection())
        return aggregate(ads, s, time.time(), stale_after, collector)

    snap = ask(schema)
    new = set(snap.images) - set(schema.images)
    if new and len(schema.images) < MAX_LABEL_VALUES:
        snap = ask(Schema(schema.probes, tuple(sorted(set(schema.images) | new))[:MAX_LABEL_VALUES]))
    return snap


def query_child_main(argv: Optional[Sequence[str]] = None) -> int:
    """Child entry point: argv = [spec JSON, output path]. Exit 0 with the
    summary written to the output path, else 1 with one line on stderr."""
    spec_text, out_path = argv if argv is not None else sys.argv[1:3]
    spec = json.loads(spec_text)
    try:
        snap = query_collector(spec["collector"], Schema(tuple(spec["probes"]), tuple(spec["images"])),
                               spec["constraint"], float(spec["stale_after"]))
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    from startd_health.core.state import write_atomic
    write_atomic(out_path, json.dumps(snap.to_json(), separators=(",", ":")).encode())
    return 0


def run_query_child(collector: str, schema: Schema, extra_constraint: str, stale_after: float, timeout: float,
                    workdir: str) -> Tuple[Optional[PoolSnapshot], str]:
    """(snapshot, '') or (None, why it failed); never takes much longer than
    timeout + CHILD_START_SECONDS."""
    from startd_health.system.procs import run_command

    out_path = os.path.join(workdir, "answer.json")
    try:
        os.unlink(out_path)
    except FileNotFoundError:
        pass
    # The child imports this very installation (its parent directory first
    # on PYTHONPATH) and starts in the private workdir, so that nothing in
    # the daemon's current directory can shadow it.
    import startd_health
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(startd_health.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
               _CONDOR_QUERY_TIMEOUT=str(max(1, math.ceil(timeout))))
    spec = json.dumps({"collector": collector, "probes": list(schema.probes), "images": list(schema.images),
                       "constraint": extra_constraint, "stale_after": stale_after})
    result = run_command([sys.executable, "-m", CHILD_MODULE, spec, out_path], timeout + CHILD_START_SECONDS,
                         env=env, cwd=workdir)
    if not result.ok:
        from startd_health.system.procs import last_line
        if result.timed_out:
            return None, f"no answer within {timeout + CHILD_START_SECONDS:g}s (query killed)"
        return None, last_line(result.stderr) or result.describe_failure()
    try:
        with open(out_path, "rb") as handle:
            return PoolSnapshot.from_json(json.load(handle)), ""
    except (OSError, ValueError, KeyError) as exc:
        return None, f"unreadable answer: {exc}"


if __name__ == "__main__":
    sys.exit(query_child_main())
