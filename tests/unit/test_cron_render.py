"""The STARTD_CRON renderer, checked with the real classad2 library."""

import time

import classad2
import pytest

from monitor.cron import MAX_OUTPUT_BYTES, clean_text, render, render_failure
from monitor.model import Measurement, ProbeResult, Status
from monitor.runner import RunReport
from monitor.verdict import judge

from .helpers import parse_cron_output

HOSTILE = [
    'quote " and backslash \\ and \\"',
    "newline\nInjected = true",
    "carriage\rInjected2 = true\r\n- update:true",
    'close ] Injected3 = true; [',
    "nul \x00 byte",
    "escape \x1b[31m red",
    "lone surrogate \udcff from a bad path",
    b"non-utf8 \xff\xfe bytes".decode("utf-8", errors="surrogateescape"),
    "line separator \u2028 and unicode \u00e9\u2603",
    "\\",
    '"',
]


def report_with(reason, facts=None, measurements=()):
    return RunReport([ProbeResult("container", Status.FAILED, reason, facts or {}, tuple(measurements),
                                  started_at=time.time() - 5, duration_seconds=1.0)], duration_seconds=1.2)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_never_inject_attributes(text):
    facts = {"path": text, "images_ok": (text, "el9"), "images_failed": (text,)}
    report = report_with(text, facts, [Measurement("launch", 0.1, "seconds", {"image": text})])
    output = render(report, judge(report.results), time.time())
    ad = parse_cron_output(output)  # asserts every line defines exactly the attribute it names
    assert all(k.startswith("StartdHealth") for k in ad.keys()), list(ad.keys())
    assert ad["StartdHealthContainerReason"] == clean_text(text)
    assert ad["StartdHealthContainerImagesOk"][1] == "el9"
    assert "\n" not in ad["StartdHealthReason"]


def test_bytes_are_cleaned_too():
    assert clean_text(b"bad \xff byte\n") == "bad \\xff byte"


def test_typed_values_and_names():
    report = RunReport([ProbeResult("container", Status.OK, "ok",
                                    {"available": True, "version": "1.4.5", "images_ok": ("el8", "el9"),
                                     "count": 3, "ratio": 0.25, "images_failed": ()},
                                    (Measurement("launch", 0.1234567, "seconds", {"image": "el9:latest"}),),
                                    started_at=time.time() - 30, duration_seconds=0.5)], duration_seconds=0.6)
    now = time.time()
    ad = parse_cron_output(render(report, judge(report.results), now))
    assert ad["StartdHealthOk"] is True and ad["StartdHealthFailedProbes"] == []
    assert ad["StartdHealthContainerOk"] is True and ad["StartdHealthContainerStatus"] == "ok"
    assert ad["StartdHealthContainerAvailable"] is True and ad["StartdHealthContainerCount"] == 3
    assert ad["StartdHealthContainerImagesOk"] == ["el8", "el9"] and ad["StartdHealthContainerImagesFailed"] == []
    assert ad["StartdHealthContainerLaunchSeconds_el9_latest"] == pytest.approx(0.123457)
    assert 29 <= ad["StartdHealthContainerAge"] <= 31
    assert ad["StartdHealthTimestamp"] == int(now)
    # What a job or START expression does with it:
    job = classad2.ClassAd({"Want": "el9"})
    assert classad2.ExprTree('member("el9", StartdHealthContainerImagesOk)').eval(ad) is True
    assert job is not None


def test_output_stays_under_the_startds_read_limit():
    many = tuple(f"image{i:03d}-" + "x" * 60 for i in range(200))
    reason = "y" * 5000
    results = [ProbeResult(f"probe{i}", Status.FAILED, reason, {"images_ok": many}) for i in range(20)]
    report = RunReport(results)
    output = render(report, judge(results), time.time())
    assert len(output.encode()) <= MAX_OUTPUT_BYTES
    ad = parse_cron_output(output)
    assert ad["StartdHealthOk"] is False and len(ad["StartdHealthFailedProbes"]) == 20
    assert len(ad["StartdHealthReason"]) <= 300


def test_failure_ad_is_valid_and_unhealthy():
    ad = parse_cron_output(render_failure('internal error: "x"\n', time.time()))
    assert ad["StartdHealthOk"] is False and ad["StartdHealthReason"] == 'internal error: "x"'


def test_fallback_quoting_without_bindings_matches_classad2(monkeypatch):
    import builtins
    import monitor.cron as cron
    real_import = builtins.__import__

    def no_classad2(name, *args, **kwargs):
        if name == "classad2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_classad2)
    for text in HOSTILE:
        quoted = cron._quote(text)
        monkeypatch.setattr(builtins, "__import__", real_import)
        assert classad2.ClassAd(f"[A = {quoted}]")["A"] == clean_text(text)
        monkeypatch.setattr(builtins, "__import__", no_classad2)
