"""The unit tests on Python 3.9 (EL9's system Python), in a bare Debian
bullseye root filesystem that holds only what the project's own files
install: rootfs.sh's VARIANT=py39 is minbase + python3 + python3-venv; the
project's own `./dev test` then makes its venv there (bullseye's pip 20.3
cannot install the project in editable mode: dev upgrades it first) and
installs the host packages tests/host-packages.txt declares for the unit
tests. A test that needs an undeclared tool, or product code that needs
Python > 3.9, fails here.

Real: Debian bullseye's python3 3.9, pip from PyPI, the project's
dependencies from PyPI (htcondor's cp39 wheel), apt-get from Debian's
mirror. The root filesystem and its venv are cached; the checkout is copied
in afresh on every run."""

import os
import re
import shlex
import shutil

import pytest

from tests.realpool.rootfs import RootFs

pytestmark = pytest.mark.e2e

PROJECT = "/opt/startd-health"
VENV = "/opt/venv"   # outside the copied checkout, so that it survives the next copy
# The unit tests as root (the tests that must not be root drop to nobody with
# setpriv); the end-to-end tests are opted out, so ./dev installs only the
# unit tests' host packages.
RUN = (f"cd {PROJECT} && STARTD_HEALTH_VENV={VENV} STARTD_HEALTH_SKIP_E2E=1 "
       "./dev test -p no:cacheprovider -m 'not e2e' tests/unit "
       f"&& {VENV}/bin/python -c 'import sys; print(\"python\", *sys.version_info[:2])'")


PROXIES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
HOST_CA = "/etc/ssl/host-ca-bundle.crt"


def host_network(root: RootFs) -> str:
    """The machine's network settings, not the project's: its proxies, and
    the CA bundle it trusts (a TLS-intercepting proxy's CA is in it, not in
    pip's own bundle), as exports for the shell inside."""
    exports = [f"export {name}={shlex.quote(os.environ[name])}" for name in PROXIES if os.environ.get(name)]
    bundle = next((os.environ[v] for v in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
                   if os.path.isfile(os.environ.get(v, ""))), "")
    if bundle:
        shutil.copyfile(bundle, root.path(HOST_CA))
        exports.append(f"export PIP_CERT={HOST_CA}")
    return "".join(line + "; " for line in exports)


def test_unit_tests_pass_on_python39_in_a_bare_bullseye():
    root = RootFs("py39")
    root.build(timeout=900)
    root.copy_project(PROJECT)
    proc = root.sh(host_network(root) + RUN, timeout=1500, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}; output tail:\n{out[-8000:]}"
    assert "python 3 9" in proc.stdout, out[-3000:]
    # A skip would hide what this run is for (a missing tool, root, /dev/fuse).
    # (Except the two real-/dev/kmsg tests, which read the HOST's kernel log
    # and its dmesg_restrict, not this root filesystem's: they run on the host.)
    skipped = [line for line in re.findall(r"^SKIPPED .*$", proc.stdout, re.M) if "test_kernel.py" not in line]
    assert not skipped, "\n".join(skipped)
