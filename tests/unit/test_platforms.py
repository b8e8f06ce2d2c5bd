"""Platforms (issue 16): what an image is inside, in GlideinWMS' names; the
claim an image's name makes; the image catalogue (named, GlideinWMS'
SINGULARITY_IMAGES_DICT, directories and globs) with its cost order, cap and
budget; what is published for ClassAds and Prometheus.

The os-release samples are the lines the inside script keeps (ID, ID_LIKE,
NAME, VERSION_ID, VERSION_CODENAME, PRETTY_NAME), as the distributions ship
them: Rocky Linux 9.3, CentOS Stream 9, AlmaLinux 10.0, RHEL 9.6, Ubuntu
24.04, Fedora 42, Amazon Linux 2023 and Alpine 3.23 as recorded in
python-distro's test resources (tests/resources/distros); Debian 13 and
forky/sid from the base-files packages of this project's test root
filesystems (tests/realpool); CentOS 7, Scientific Linux 7.9, Oracle Linux
8.10 and CentOS 6's /etc/redhat-release (it has no os-release) written from
those releases' well-known values. The sh section itself runs for real on
this host (through a stand-in runtime that runs the script directly) and in
real images under real Apptainer in tests/e2e/test_platforms.py.
"""

import os
import subprocess

import pytest

from startd_health.core.model import RunReport, Status
from startd_health.monitor.cron import render
from startd_health.probes.container import Gathered, gather, judge, platform_facts
from startd_health.system import images as catalogue
from startd_health.system import inside, platforms
from startd_health.system.container import Launch, Runtime, platform_of
from startd_health.system.procs import run_command

from .helpers import make_context, parse_cron_output

SAMPLES = {
    "rocky9.3": ('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\n'
                 'PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"', "rhel9", "9.3"),
    "centos-stream9": ('NAME="CentOS Stream"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="9"\n'
                       'PRETTY_NAME="CentOS Stream 9"', "rhel9", "9"),
    "almalinux10": ('NAME="AlmaLinux"\nID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="10.0"\n'
                    'PRETTY_NAME="AlmaLinux 10.0 (Purple Lion)"', "rhel10", "10.0"),
    "rhel9.6": ('NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.6"\n'
                'PRETTY_NAME="Red Hat Enterprise Linux 9.6 (Plow)"', "rhel9", "9.6"),
    "centos7": ('NAME="CentOS Linux"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n'
                'PRETTY_NAME="CentOS Linux 7 (Core)"', "rhel7", "7"),
    "scientific7.9": ('NAME="Scientific Linux"\nID="scientific"\nID_LIKE="rhel centos fedora"\nVERSION_ID="7.9"\n'
                      'PRETTY_NAME="Scientific Linux 7.9 (Nitrogen)"', "rhel7", "7.9"),
    "oracle8.10": ('NAME="Oracle Linux Server"\nID="ol"\nID_LIKE="fedora"\nVERSION_ID="8.10"\n'
                   'PRETTY_NAME="Oracle Linux Server 8.10"', "rhel8", "8.10"),
    "centos6": ("redhat-release=CentOS release 6.10 (Final)", "rhel6", "6.10"),
    "ubuntu24.04": ('PRETTY_NAME="Ubuntu 24.04.3 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n'
                    'ID=ubuntu\nID_LIKE=debian', "ubuntu24", "24.04"),
    "debian13": ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\n'
                 'VERSION_CODENAME=trixie\nID=debian\ndebian_version=13.8', "debian13", "13"),
    "debian-sid": ('PRETTY_NAME="Debian GNU/Linux forky/sid"\nNAME="Debian GNU/Linux"\nVERSION_CODENAME=forky\n'
                   'ID=debian\ndebian_version=forky/sid', "debian14", ""),
    "fedora42": ('NAME="Fedora Linux"\nID=fedora\nVERSION_ID=42\nVERSION_CODENAME=""\n'
                 'PRETTY_NAME="Fedora Linux 42 (Forty Two)"', "fedora42", "42"),
    "amazon2023": ('NAME="Amazon Linux"\nID="amzn"\nID_LIKE="fedora"\nVERSION_ID="2023"\n'
                   'PRETTY_NAME="Amazon Linux 2023"', "amzn2023", "2023"),
    "alpine3.23": ('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.23.2\nPRETTY_NAME="Alpine Linux v3.23"',
                   "alpine3", "3.23.2"),
    "nothing": ("", "", ""),
}


def script_output(os_lines: str, arch: str = "x86_64", libc: str = "glibc 2.34") -> str:
    """What the inside script prints for an image with these os-release lines."""
    body = "".join(f"os {line}\n" for line in os_lines.splitlines())
    return (f"{inside.HEADER}\nuid_map 1000 1000 1\npidns pid:[1]\ncheck tmp_writable ok\n"
            f"{body}arch {arch}\nlibc {libc}\nend\n")


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_family_gets_its_canonical_name(sample):
    lines, name, version = SAMPLES[sample]
    platform = platform_of(inside.parse(script_output(lines)))
    assert platform.name == name and platform.os_version == version
    assert platform.arch == "x86_64" and platform.glibc == "2.34"


def test_unknown_and_partial_platforms():
    # No os-release, no release file: unknown (published as "unknown", offered for nothing).
    assert platforms.identify({}).name == ""
    assert platforms.canonical("rocky", "") == ""          # no version: no platform
    assert platforms.canonical("opensuse-leap", "15.5") == "opensuseleap15"
    assert platforms.canonical("circle", "8.9", id_like="rhel fedora") == "rhel8"   # an EL rebuild by ID_LIKE
    assert platforms.canonical("fedora", "40", id_like="rhel") == "fedora40"
    assert platforms.canonical("ubuntu", "", codename="jammy") == "ubuntu22"
    # The script's parse keeps the first value of a key and at most 16 keys.
    report = inside.parse(script_output("ID=debian\nID=rocky\n" + "\n".join(f"K{i}=v" for i in range(30))))
    assert report.os_release["ID"] == "debian" and len(report.os_release) == 16


@pytest.mark.parametrize("libc,expected", [
    ("glibc 2.17", "2.17"),
    ("GNU C Library (GNU libc) stable release version 2.28.", "2.28"),
    ("GNU C Library (Debian GLIBC 2.41-12) stable release version 2.41.", "2.41"),
    ("musl 1.2.4", "musl 1.2.4"),
    ("", ""),
])
def test_c_library_versions(libc, expected):
    assert platforms.glibc_version(libc) == expected


@pytest.mark.parametrize("name,claim", [
    ("el9", "rhel9"), ("rhel9", "rhel9"), ("centos7", "rhel7"), ("sl7", "rhel7"), ("cc7", "rhel7"),
    ("alma9", "rhel9"), ("rocky8", "rhel8"), ("osgvo-el9_latest", "rhel9"), ("cms_EL8", "rhel8"),
    ("ubuntu22", "ubuntu22"), ("ubuntu22.04", "ubuntu22"), ("ubuntu_2204", "ubuntu22"), ("jammy", "ubuntu22"),
    ("debian12", "debian12"), ("bookworm-slim", "debian12"), ("forky", "debian14"),
    ("model10", None), ("condor_default", None), ("default", None), ("tensorflow2", None),
    ("el8-to-el9", None),   # two claims: nothing single to check
])
def test_what_an_image_name_claims(name, claim):
    assert platforms.claimed(name) == claim


def test_a_contradicted_claim_says_what_the_image_is():
    debian = platforms.Platform("debian13", "Debian GNU/Linux 13 (trixie)", "debian", "13")
    assert platforms.contradiction("el9", debian) == \
        "image el9 is debian13 inside (Debian GNU/Linux 13 (trixie)), its name says rhel9"
    assert platforms.contradiction("debian13", debian) == ""
    assert platforms.contradiction("site", debian) == ""
    assert "of unknown platform" in platforms.contradiction("el7", platforms.Platform(""))


# ---------------------------------------------------------------- judged and published

RT = Runtime("/usr/bin/apptainer", "PATH")


def launch(image, path, ok, sample, **kw):
    lines = SAMPLES[sample][0]
    return Launch(image, path, ok, 0.2, "unprivileged" if ok else "", error="" if ok else "exit 255",
                  platform=platform_of(inside.parse(script_output(lines))), **kw)


def test_platforms_offer_healthy_images_only_and_by_what_they_are():
    g = Gathered(RT, name="apptainer", version="1.4.5", default_image="debian13", launches=(
        launch("site-old", "/i/old", True, "rocky9.3"),
        launch("rhel9", "/i/el9", True, "rocky9.3"),        # claims rhel9: preferred over site-old (first)
        launch("rhel8", "/i/el8", False, "oracle8.10"),     # broken: rhel8 is not offered
        launch("debian13", "/i/trixie", True, "debian13"),
        launch("el7", "/i/mislabeled", True, "debian13"),   # a Debian named el7
    ))
    r = judge(g, partial_ok=True)
    assert r.facts["platforms"] == ("debian13", "rhel9")
    assert r.facts["image_by_platform"] == ("rhel9=/i/el9", "debian13=/i/trixie", "default=/i/trixie")
    assert r.facts["images_mislabeled"] == ("el7",)
    assert r.status is Status.DEGRADED
    assert "image el7 is debian13 inside (Debian GNU/Linux 13 (trixie)), its name says rhel7" in r.reason
    assert ("rhel8=rhel8" in r.facts["platform_by_image"]) and "el7=debian13" in r.facts["platform_by_image"]

    ad = parse_cron_output(render(RunReport([r]), _verdict([r]), 0.0, glideinwms=True))
    assert ad["StartdHealthContainerPlatforms"] == ["debian13", "rhel9"]
    assert ad["StartdHealthContainerImage_rhel9"] == "/i/el9" and ad["StartdHealthContainerImage_default"] == "/i/trixie"
    assert ad["StartdHealthContainerPlatform_el7"] == "debian13"
    assert ad["StartdHealthContainerOs_rhel9"] == "Rocky Linux 9.3 (Blue Onyx)"
    assert ad["StartdHealthContainerOsVersion_rhel9"] == "9.3" and ad["StartdHealthContainerGlibc_rhel9"] == "2.34"
    assert ad["StartdHealthContainerArch_rhel9"] == "x86_64"
    assert ad["GLIDEIN_REQUIRED_OS"] == "debian13,rhel9"
    assert ad["SINGULARITY_IMAGES_DICT"] == "rhel9:/i/el9,debian13:/i/trixie,default:/i/trixie"
    assert "GLIDEIN_REQUIRED_OS" not in parse_cron_output(render(RunReport([r]), _verdict([r]), 0.0))


def _verdict(results):
    from startd_health.core.verdict import judge as verdict
    return verdict(results)


def test_a_healthy_mislabeled_image_alone_degrades_and_the_default_falls_back():
    r = judge(Gathered(RT, name="apptainer", version="1.4.5",
                       launches=(launch("el9", "/i/x", True, "debian13"),)))
    assert r.status is Status.DEGRADED and r.facts["images_ok"] == ("el9",)
    assert r.facts["image_by_platform"] == ("debian13=/i/x", "default=/i/x")
    facts, why = platform_facts((launch("site", "/i/s", False, "debian13"),))
    assert facts["platforms"] == () and facts["image_by_platform"] == () and why == []


def test_prometheus_gets_one_info_series_per_image():
    from startd_health.monitor.metrics import exposition
    r = judge(Gathered(RT, name="apptainer", version="1.4.5",
                       launches=(launch("rhel9", "/i/el9", True, "rocky9.3"),)))
    text = exposition([r], _verdict([r])).decode()
    assert ('startd_health_container_image_info{arch="x86_64",glibc="2.34",image="rhel9",os="Rocky Linux 9.3 '
            '(Blue Onyx)",os_version="9.3",platform="rhel9"} 1.0') in text
    assert 'startd_health_container_platform_info{image="/i/el9",platform="rhel9"} 1.0' in text
    assert "image_by_platform" not in text and "platform_by_image" not in text


# ---------------------------------------------------------------- the sh section, for real

@pytest.mark.parametrize("shell", ["/bin/sh", "busybox"])
def test_the_platform_section_runs_in_posix_sh_and_busybox(shell):
    argv = ["busybox", "sh"] if shell == "busybox" else [shell]
    out = subprocess.run(argv + ["-c", inside.script(platform=True)], capture_output=True, text=True, timeout=20)
    report = inside.parse(out.stdout)
    assert report.finished and report.arch == os.uname().machine
    expected = platforms.identify({k: v for k, v in _host_os_release().items()})
    assert platform_of(report).name == expected.name != ""
    assert platform_of(report).glibc   # glibc or musl, found with sh only


def _host_os_release():
    values = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        if os.path.exists(path):
            for line in open(path):
                key, sep, value = line.strip().partition("=")
                if sep:
                    values[key] = value
            return values
    return values


def test_the_probe_reads_the_platform_and_checks_the_name(tmp_path):
    """A stand-in runtime that runs the inside script directly on this host:
    the image named el5 is whatever this host is, so its claim is wrong."""
    from .test_container import ctx_for, fake_runtime
    rt = fake_runtime(tmp_path, "echo 'apptainer version 9.9'; exit 0",
                      'while [ "$1" != /bin/sh ]; do shift; done; exec "$@"')
    r = judge(gather(ctx_for(rt, images=("el5=/img",))))
    host = platforms.identify(_host_os_release()).name
    assert r.facts["platforms"] == (host,) and r.facts["images_mislabeled"] == ("el5",)
    assert r.status is Status.DEGRADED and f"image el5 is {host} inside" in r.reason


# ---------------------------------------------------------------- the catalogue

def test_images_dict_parsing():
    assert catalogue.parse_images_dict("rhel9:/cvmfs/x/el9:latest, rhel7:/p7,default:/cvmfs/x/el9:latest") == (
        "rhel9=/cvmfs/x/el9:latest", "rhel7=/p7", "default=/cvmfs/x/el9:latest")
    for bad, message in [("rhel9", "is not key:path"), ("rhel9:/a,rhel9:/b", "given twice"), (":/a", "key:path"),
                         ("bad key:/a", "must be letters")]:
        with pytest.raises(ValueError, match=message):
            catalogue.parse_images_dict(bad)


def _tree(tmp_path):
    """An OSG-like directory: unpacked images (bin + etc, or .singularity.d), SIF files, other files."""
    org = tmp_path / "org"
    for name in ("osgvo-el9:latest", "osgvo-el8:latest"):
        (org / name / "bin").mkdir(parents=True)
        (org / name / "etc").mkdir()
    (org / "apptainer-sandbox" / ".singularity.d").mkdir(parents=True)
    (org / "big.sif").write_bytes(b"x" * 5000)
    (org / "small.sif").write_bytes(b"x" * 10)
    (org / "README").write_text("not an image")
    (org / "empty-dir").mkdir()
    return org


def test_a_directory_a_glob_and_an_image_directory_are_listed_by_a_real_child(tmp_path):
    org = _tree(tmp_path)
    found, error = catalogue.find(run_command, [str(org)])
    assert error == ""
    assert {(i.name, i.kind) for i in found} == {("osgvo-el9_latest", "sandbox"), ("osgvo-el8_latest", "sandbox"),
                                                   ("apptainer-sandbox", "sandbox"), ("big", "sif"),
                                                   ("small", "sif")}
    found, _ = catalogue.find(run_command, [str(org / "osgvo-*")])
    assert sorted(i.name for i in found) == ["osgvo-el8_latest", "osgvo-el9_latest"]
    found, _ = catalogue.find(run_command, [str(org / "osgvo-el9:latest")])   # itself an unpacked image
    assert [(i.name, i.kind) for i in found] == [("osgvo-el9_latest", "sandbox")]
    assert catalogue.find(run_command, [str(tmp_path / "missing" / "*")]) == ([], "")


def test_the_order_is_named_then_dict_then_cheapest_found_and_the_default_is_marked(tmp_path):
    found, _ = catalogue.find(run_command, [str(_tree(tmp_path))])
    chosen, default = catalogue.catalogue(["site=/s.sif"], ["rhel9:/e9".replace(":", "=", 1),
                                                            "default=/e9", "rhel8=/s.sif"], found)
    names = [i.name for i in chosen]
    assert names[:2] == ["site", "rhel9"]                      # rhel8 is /s.sif again: one launch
    assert [i.kind for i in chosen[2:]] == ["sandbox"] * 3 + ["sif"] * 2
    assert names[-2:] == ["small", "big"] and default == "rhel9"
    chosen, default = catalogue.catalogue([], ["default=/d"], [])
    assert [i.name for i in chosen] == ["default"] and default == "default"


def test_a_listing_that_hangs_is_cut_by_its_budget(tmp_path):
    """SIMULATED hung directory: a `python` that never answers stands for a
    listing stuck on a hung mount; the budgeted run ends it."""
    import time

    class Run:
        def __call__(self, argv, timeout=None, env=None):
            return run_command(["sleep", "30"], timeout)
    t0 = time.monotonic()
    found, error = catalogue.find(Run(), ["/cvmfs/x/*"], timeout=1.0)
    assert found == [] and "listing /cvmfs/x/*" in error and time.monotonic() - t0 < 5


def images_names(count):
    return tuple(f"img{i}" for i in range(count))


def test_the_cap_and_the_budget_leave_images_untested_and_say_so(tmp_path):
    from .test_container import fake_runtime
    rt = fake_runtime(tmp_path, "echo 'apptainer version 9.9'; exit 0",
                      'while [ "$1" != /bin/sh ]; do shift; done; exec "$@"')
    images = tuple(f"img{i}=/img{i}" for i in range(5))
    found = tmp_path / "found"
    for i in range(4):
        (found / f"sb{i}" / ".singularity.d").mkdir(parents=True)
    # The cap counts found images only: the five named ones all launch.
    ctx = make_context("container", 20.0, runtime=rt, images=images, flags=(), launch_timeout=5.0,
                       requirement="REQUIRED", max_images=2, image_dirs=(str(found),))
    r = judge(gather(ctx))
    assert r.facts["images_ok"] == images_names(5) + ("sb0", "sb1")
    assert r.facts["images_untested"] == ("sb2", "sb3")
    assert "2 images not tested, found images over the cap of 2 (STARTD_HEALTH_CONTAINER_MAX_IMAGES): sb2, sb3" \
        in r.reason
    assert r.status is Status.OK
    # A budget smaller than one launch needs (2 s at least): none is started, all are said untested.
    ctx = make_context("container", 1.5, runtime=rt, images=images[:2], flags=(), launch_timeout=5.0,
                       requirement="REQUIRED")
    r = judge(gather(ctx))
    assert r.facts["images_untested"] == ("img0", "img1") and "the probe's budget ran out" in r.reason
    assert catalogue.over_budget(3.0, 30.0, 1.0) is False and catalogue.over_budget(3.0, 30.0, 2.0) is True
    assert catalogue.over_budget(1.0, 30.0, 0.1) is True and catalogue.over_budget(4.0, 3.0, 10.0) is False


def test_text_from_inside_an_image_stays_one_bounded_label_and_one_quoted_value():
    """A hostile os-release (escape sequences, quotes, a ClassAd injection attempt, 2000 characters)."""
    from startd_health.monitor.metrics import exposition
    evil = 'PRETTY_NAME="x\x1b[31m\\"] Injected = true; [' + "y" * 2000 + '"\nID=debian\nVERSION_ID=13'
    r = judge(Gathered(RT, name="apptainer", version="1.4.5", launches=(
        Launch("img", "/i", True, 0.1, "unprivileged", platform=platform_of(inside.parse(script_output(evil)))),)))
    text = exposition([r], _verdict([r])).decode()
    line = next(line for line in text.splitlines() if line.startswith("startd_health_container_image_info"))
    assert "\x1b" not in line and len(line) < 600
    cron = render(RunReport([r]), _verdict([r]), 0.0)
    assert not [line for line in cron.splitlines() if line.startswith("Injected")]
    assert parse_cron_output(cron)["StartdHealthContainerPlatform_img"] == "debian13"
