"""The Prometheus rules pass the REAL promtool (check + unit tests, every
alert proven to fire), and the Grafana dashboards keep their conventions:
templated data source (no hard-coded UID), a unit on every panel,
$__rate_interval in every rate()/increase(), and they are what
grafana/generate.py produces. (That every query returns data against real
metrics is tested in test_pool_exporter.py.)"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.prom import promtool
from tests.unit.helpers import REPO

PROM_DIR = os.path.join(REPO, "packaging", "prometheus")
RULES = os.path.join(PROM_DIR, "startd-health-rules.yml")
RULE_TESTS = os.path.join(PROM_DIR, "tests")
GRAFANA = os.path.join(REPO, "grafana")
DASHBOARDS = os.path.join(GRAFANA, "dashboards")


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def alert_names():
    return re.findall(r"^\s*- alert: (\S+)", read(RULES), re.M)


@pytest.mark.e2e
def test_promtool_check_rules():
    proc = promtool("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_names()) + 1} rules found" in proc.stdout


@pytest.mark.e2e
def test_promtool_rule_unit_tests():
    files = sorted(f for f in os.listdir(RULE_TESTS) if f.endswith(".yml"))
    assert files
    proc = promtool("test", "rules", *files, cwd=RULE_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not():
    tests = "".join(read(os.path.join(RULE_TESTS, f)) for f in os.listdir(RULE_TESTS) if f.endswith(".yml"))
    # alert_rule_test entries: alertname, then exp_alerts: [] (silent) or a list (firing)
    cases = re.findall(r"alertname: (\S+)\n\s+exp_alerts:(.*)", tests)
    fires = {name for name, rest in cases if rest.strip() != "[]"}
    silent = {name for name, rest in cases if rest.strip() == "[]"}
    for name in alert_names():
        assert name in fires, f"{name}: no unit test shows it firing"
    missing_silent = set(alert_names()) - silent
    assert not missing_silent, f"no unit test shows these staying quiet: {sorted(missing_silent)}"


def test_rules_follow_the_metric_naming():
    text = read(RULES)
    for record in re.findall(r"- record: (\S+)", text):
        assert re.fullmatch(r"startd_health_pool:[a-z_]+:[a-z_]+", record), record   # level:metric:operations
    for alert in alert_names():
        assert alert.startswith("StartdHealth"), alert


# ------------------------------------------------------------------ dashboards

def dashboards():
    names = sorted(f for f in os.listdir(DASHBOARDS) if f.endswith(".json"))
    assert names == ["startd-health-node.json", "startd-health-pool.json"]
    return [(name, json.loads(read(os.path.join(DASHBOARDS, name)))) for name in names]


def walk(value):
    """Every dict inside a JSON document."""
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from walk(child)
    elif isinstance(value, list):
        for child in value:
            yield from walk(child)


def test_dashboards_use_a_templated_datasource_and_no_hard_coded_uid():
    for name, board in dashboards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        refs = [d["datasource"] for d in walk(board) if "datasource" in d]
        assert refs, name
        for ref in refs:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, (name, ref)
        assert board.get("id") is None and board["uid"].startswith("startd-health-"), name
        assert "__inputs" not in board and "__requires" not in board


def test_every_panel_has_a_unit_a_unique_title_and_queries():
    for name, board in dashboards():
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert len({p["title"] for p in panels}) == len(panels), f"{name}: duplicate panel titles"
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), f"{name}: duplicate panel ids"
        for panel in panels:
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {panel['title']} has no unit"
            assert panel.get("description"), f"{name}: {panel['title']} has no description"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert all(refs) and len(set(refs)) == len(refs), f"{name}: {panel['title']} refIds {refs}"
            if panel["type"] == "heatmap":
                assert panel["options"]["calculate"] is False
                assert all(t.get("format") == "heatmap" for t in panel["targets"])


def test_rate_and_increase_use_rate_interval():
    for name, board in dashboards():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for window in re.findall(r"\b(?:rate|increase|irate|delta|deriv)\([^\[]*\[([^\]]+)\]", expr):
                    assert window == "$__rate_interval", f"{name}: {panel['title']}: [{window}] in {expr}"
                assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_benchmark_panels_take_the_cpu_model_from_the_info_metric():
    """The benchmark probe publishes scores by mode and the CPU model in startd_health_benchmarks_info."""
    pool = dict(dashboards())["startd-health-pool.json"]
    exprs = [t["expr"] for p in pool["panels"] for t in p.get("targets", [])]
    bench = [e for e in exprs if "startd_health_benchmarks_" in e]
    assert len(bench) == 2
    for expr in bench:
        assert re.search(r'^avg by \(cpu_model\) \(startd_health_benchmarks_[a-z0-9_]+\{mode="wholenode"\} \* on '
                         r'\(instance, job\) group_left \(cpu_model\) startd_health_benchmarks_info\)$', expr), expr


def test_generated_dashboards_are_up_to_date():
    """grafana/generate.py (Grafana's own SDK) reproduces the committed JSON."""
    if sys.version_info < (3, 11):
        pytest.skip("grafana-foundation-sdk needs Python >= 3.11 (the JSON itself is checked above)")
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        raise AssertionError("grafana-foundation-sdk is missing: pip install -e '.[test]' (./dev test does it)") from None
    proc = subprocess.run([sys.executable, os.path.join(GRAFANA, "generate.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_provisioning_points_at_the_installed_dashboards():
    provider = read(os.path.join(GRAFANA, "provisioning", "dashboards", "startd-health.yml"))
    assert "type: file" in provider
    # The RPM copies grafana/ to /usr/share/startd-health/grafana.
    assert "path: /usr/share/startd-health/grafana/dashboards" in provider
    datasource = read(os.path.join(GRAFANA, "provisioning", "datasources", "startd-health-prometheus.example.yml"))
    assert "type: prometheus" in datasource and "timeInterval:" in datasource
    assert "uid:" not in datasource   # the dashboards never name one
