"""The STARTD_CRON renderer, checked with the real classad2 library."""

import time

import pytest

from startd_health.monitor.cron import CUT_MARK, MAX_OUTPUT_BYTES, clean_text, render, render_failure
from startd_health.core.model import Measurement, ProbeResult, RunReport, Status
from startd_health.core.state import StateDir
from startd_health.core.verdict import judge
from startd_health.probes import benchmarks

from .helpers import parse_cron_output, run_cli

classad2 = pytest.importorskip("classad2", reason="needs the HTCondor Python bindings")
pytestmark = pytest.mark.bindings

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
    import startd_health.monitor.cron as cron
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


def cvmfs_result():
    labels = lambda repo: {"repo": repo}  # noqa: E731
    return ProbeResult("cvmfs", Status.FAILED, "x", {"repos_ok": ("oasis.opensciencegrid.org",),
                                                     "repos_failed": ("cms-ib.cern.ch",), "repos_quarantined": ()},
                       (Measurement("revision", 12345.0, "", labels("oasis.opensciencegrid.org")),
                        Measurement("nioerr", 0.0, "", labels("oasis.opensciencegrid.org")),
                        Measurement("last_ioerr", 0.0, "timestamp_seconds", labels("oasis.opensciencegrid.org")),
                        Measurement("first_access", 0.0123, "seconds", labels("oasis.opensciencegrid.org"))),
                       started_at=time.time())


def test_ospool_cvmfs_names_and_integer_counts():
    report = RunReport([cvmfs_result()])
    ad = parse_cron_output(render(report, judge(report.results), time.time()))
    assert ad["HAS_CVMFS_oasis_opensciencegrid_org"] is True and ad["HAS_CVMFS_cms_ib_cern_ch"] is False
    assert ad["CVMFS_oasis_opensciencegrid_org_REVISION"] == 12345
    assert isinstance(ad["CVMFS_oasis_opensciencegrid_org_REVISION"], int)
    assert ad["CVMFS_oasis_opensciencegrid_org_LAST_IOERR"] == 0
    assert ad["StartdHealthCvmfsRevision_oasis_opensciencegrid_org"] == 12345
    assert ad["StartdHealthCvmfsFirstAccessSeconds_oasis_opensciencegrid_org"] == pytest.approx(0.0123)
    plain = parse_cron_output(render(report, judge(report.results), time.time(), ospool=False))
    assert not [k for k in plain.keys() if k.startswith(("HAS_CVMFS", "CVMFS_"))]


def test_measurements_are_dropped_before_facts_when_the_ad_is_too_big():
    big = ProbeResult("big", Status.OK, "ok", {"images_ok": ("a",)},
                      tuple(Measurement("m", float(i), "seconds", {"k": f"label{i:04d}"}) for i in range(400)))
    report = RunReport([big])
    ad = parse_cron_output(render(report, judge(report.results), time.time()))
    assert ad["StartdHealthBigImagesOk"] == ["a"]
    assert not [k for k in ad.keys() if k.startswith("StartdHealthBigMSeconds")]


# ---------------------------------------------------------------- the size limit drops the right things

# Never dropped to fit the limit: the gate (START reads StartdHealthOk and
# StartdHealthTimestamp), every probe's Ok and Status, and what the README's
# job recipes match on.
GATE = ("StartdHealthOk", "StartdHealthTimestamp", "StartdHealthFailedProbes", "StartdHealthReason")
RECIPES = ("StartdHealthContainerRequirement", "StartdHealthContainerAvailable", "StartdHealthContainerImagesOk",
           "StartdHealthCvmfsReposOk", "DIRACBenchmark", "StartdHealthBenchmarksDb12Score_wholenode",
           "StartdHealthBenchmarksMatmulFlops_wholenode")
PERIODIC = ("container", "cvmfs", "sessions", "userns", "gpu")
REPOS = ("oasis.opensciencegrid.org", "singularity.opensciencegrid.org", "cms.cern.ch", "atlas.cern.ch")


def assert_protected(ad, probes, recipes=RECIPES):
    missing = [name for name in GATE + recipes if name not in ad]
    missing += [f"StartdHealth{p.capitalize()}{what}" for p in probes for what in ("Ok", "Status")
                if f"StartdHealth{p.capitalize()}{what}" not in ad]
    assert not missing, f"dropped to fit the size limit: {missing}"


def test_fifty_failing_images_keep_what_jobs_and_start_match_on(tmp_path, cli_env):
    """The real `cron` command, every periodic probe running for real on this
    machine, 4 CVMFS repositories configured (none mounted here: real
    failures). Simulated: the container runtime, a script that answers
    --version like Apptainer and fails every launch with a long, hostile
    error (quotes, an injected line, escapes, multi-byte characters); and the
    benchmark result, recorded in the state directory as `benchmark` leaves it."""
    runtime = tmp_path / "apptainer"
    runtime.write_text("""#!/bin/sh
if [ "$1" = --version ]; then echo 'apptainer version 1.4.5'; exit 0; fi
printf 'FATAL:   "quoted" \\\\ while\\nInjected = true\\n\\033[31m snow \\342\\230\\203 %0400d: open image: permission denied\n' 0 >&2
exit 255
""")
    runtime.chmod(0o755)
    images = ",".join(f"site-image-{i:02d}=/images/site-image-{i:02d}-el9-x86_64.sif" for i in range(50))
    state = StateDir(str(tmp_path / "state"))
    state.ensure()
    from .test_benchmarks import gathered
    state.save(benchmarks.judge(gathered()))
    proc = run_cli(["cron", "--no-condor-config", "--state-dir", state.path, "--force",
                    "--container-runtime", str(runtime), "--container-images", images,
                    "--container-requirement", "REQUIRED", "--cvmfs-repositories", ",".join(REPOS)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.encode()) < MAX_OUTPUT_BYTES, len(proc.stdout.encode())
    ad = parse_cron_output(proc.stdout)  # line by line, with classad2
    assert_protected(ad, PERIODIC + ("benchmarks",))
    assert ad["StartdHealthContainerImagesFailed"][:2] == ["site-image-00", "site-image-01"]
    assert ad["StartdHealthContainerImageErrors"][-1] == CUT_MARK and ad["StartdHealthTruncated"] is True
    assert [f"HAS_CVMFS_{r.replace('.', '_')}" for r in REPOS if f"HAS_CVMFS_{r.replace('.', '_')}" not in ad] == []
    # the cut fell on the crowded block: the other probes' facts are all there
    assert "StartdHealthUsernsMaxUserNamespaces" in ad and "StartdHealthSessionsCgroupVersion" in ad
    assert "StartdHealthBenchmarksMemoryTriadBytesPerSecond_single" in ad
    # the README's recipes, evaluated against the ad: a REQUIRED node is not one for container-less jobs
    recipe = classad2.ExprTree('(StartdHealthContainerRequirement =!= "REQUIRED")')
    assert recipe.eval(ad) is False
    assert classad2.ExprTree("(StartdHealthContainerAvailable =?= true)").eval(ad) is False


def test_the_last_resort_keeps_every_probes_verdict():
    """Pure logic, synthetic results far beyond any real node: 300 images with
    long names that all launch (ImagesOk alone would not fit), 200 CVMFS
    repositories, 20 probes with long reasons and many facts."""
    ok = tuple(f"image-{i:03d}-" + "n" * 80 for i in range(300))
    container = ProbeResult("container", Status.OK, "r" * 2000, {"images_ok": ok, "available": True,
                                                               "requirement": "REQUIRED", "path": "p" * 500})
    repos = tuple(f"repo{i:03d}.example-collaboration.org" for i in range(200))
    cvmfs = ProbeResult("cvmfs", Status.FAILED, "c" * 2000, {"repos_ok": repos[:100], "repos_failed": repos[100:]},
                        tuple(Measurement("revision", 7.0, "", {"repo": r}) for r in repos))
    others = [ProbeResult(f"probe{i}", Status.DEGRADED, "\u2603" * 1000,
                          {f"fact{j}": "\u2603" * 200 for j in range(20)}) for i in range(20)]
    report = RunReport([container, cvmfs] + others)
    output = render(report, judge(report.results), time.time())
    assert len(output.encode()) <= MAX_OUTPUT_BYTES
    ad = parse_cron_output(output)
    assert ad["StartdHealthTruncated"] is True and ad["StartdHealthOk"] is False
    assert_protected(ad, ["container", "cvmfs"] + [f"probe{i}" for i in range(20)],
                     tuple(name for name in RECIPES if "Benchmark" not in name))
    assert [r for r in repos if f"HAS_CVMFS_{r.replace('.', '_').replace('-', '_')}" in ad][:3] == list(repos[:3])
    assert ad["StartdHealthContainerRequirement"] == "REQUIRED"
    assert ad["StartdHealthContainerImagesOk"][0] == ok[0] and ad["StartdHealthContainerImagesOk"][-1] == CUT_MARK


def test_an_ad_that_fits_is_not_cut():
    report = report_with("short", {"images_ok": ("el9",), "image_errors": ("el8: " + "e" * 250,)})
    ad = parse_cron_output(render(report, judge(report.results), time.time()))
    assert "StartdHealthTruncated" not in ad and ad["StartdHealthContainerImageErrors"] == ["el8: " + "e" * 250]
