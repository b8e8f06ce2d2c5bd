"""The RPM spec builds with the real rpmbuild, installs the files where an
EL9 site expects them, declares the EL package dependencies; the systemd unit
passes systemd-analyze verify against the RPM's own files."""

import os
import shutil
import subprocess
import tarfile

import pytest

from startd_health import __version__
from tests.unit.helpers import REPO

pytestmark = pytest.mark.e2e

TREE = ("pyproject.toml", "README.md", "src", "packaging", "grafana")


def need(tool):
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} not found: install Debian's {'rpm' if tool.startswith('rpm') else 'systemd'} package "
                    "(./dev test does it)")
    return path


@pytest.fixture(scope="module")
def rpm(tmp_path_factory):
    need("rpmbuild")
    top = tmp_path_factory.mktemp("rpmbuild")
    for d in ("SOURCES", "SPECS", "BUILD", "RPMS", "SRPMS", "BUILDROOT"):
        (top / d).mkdir()
    name = f"startd-health-{__version__}"
    with tarfile.open(top / "SOURCES" / f"{name}.tar.gz", "w:gz") as tar:
        for entry in TREE:
            if os.path.exists(os.path.join(REPO, entry)):
                tar.add(os.path.join(REPO, entry), arcname=f"{name}/{entry}",
                        filter=lambda info: None if "__pycache__" in info.name else info)
    spec = os.path.join(REPO, "packaging", "rpm", "startd-health.spec")
    # Debian's rpmbuild has no EL dependency database: build without checking
    # BuildRequires (-nodeps), with this host's python3 for the wheel.
    proc = subprocess.run(["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}", spec],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    built = [os.path.join(dp, f) for dp, _, files in os.walk(top / "RPMS") for f in files if f.endswith(".rpm")]
    assert len(built) == 1 and built[0].endswith(f"startd-health-{__version__}-1.noarch.rpm"), built
    return built[0]


def rpm_query(path, *args):
    return subprocess.run(["rpm", "-qp", *args, path], capture_output=True, text=True, check=True).stdout


def test_rpm_contents(rpm):
    files = rpm_query(rpm, "-l").split()
    for expected in ("/etc/condor/config.d/50-startd-health.conf", "/usr/bin/startd-health",
                     "/usr/bin/startd-health-cron", "/usr/lib/systemd/system/startd-health-exporter.service",
                     "/usr/lib/systemd/system/startd-health-pool-exporter.service",
                     "/usr/share/startd-health/condor/51-startd-health-healthexprs.conf"):
        assert expected in files, expected
    assert any(f.endswith("/site-packages/startd_health/cli/__init__.py") for f in files)
    assert any(f.endswith("/site-packages/startd_health/probes/container.py") for f in files)
    config = rpm_query(rpm, "-c").split()
    assert config == ["/etc/condor/config.d/50-startd-health.conf"]  # %config(noreplace): admins' edits survive


def test_rpm_requires_el_packages(rpm):
    requires = rpm_query(rpm, "--requires")
    for package in ("python3-condor", "python3-psutil", "python3-numpy", "python3-prometheus_client",
                    "python3-APScheduler", "condor >= 23.0"):
        assert package in requires, package


@pytest.mark.parametrize("unit", ["startd-health-exporter.service", "startd-health-pool-exporter.service"])
def test_systemd_unit_verifies_against_the_rpm_files(rpm, tmp_path, unit):
    need("systemd-analyze")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(f"rpm2archive - < {rpm} | tar -xzf -", shell=True, cwd=root, check=True)
    # systemd's own units (sysinit.target, network-online.target, ...) as on a real system
    units = root / "usr" / "lib" / "systemd" / "system"
    for source in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if os.path.isdir(source):
            for name in os.listdir(source):
                if not (units / name).exists() and os.path.isfile(os.path.join(source, name)):
                    shutil.copy(os.path.join(source, name), units / name)
    (root / "etc").mkdir(exist_ok=True)
    with open(root / "etc" / "passwd", "w") as handle:  # the condor user the unit runs as
        handle.write("root:x:0:0::/root:/bin/sh\ncondor:x:64:64::/var/lib/condor:/sbin/nologin\n")
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", f"/usr/lib/systemd/system/{unit}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
