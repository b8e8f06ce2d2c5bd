import os

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "e2e" in item.keywords:   # a real pool in a root filesystem: unshare, mount, mknod
            item.add_marker(pytest.mark.root)


def _have_bindings() -> bool:
    try:
        import classad2  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_runtest_setup(item):
    # A test that needs root fails without it, naming the way out: a run
    # that silently skipped them would look like a pass.
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("needs root (real namespaces, mounts, other uids); run as root, or deselect with "
                    "-m 'not root'", pytrace=False)
    # The bindings are a dependency of the package, but pilots and bare
    # system Pythons run without them: what needs them is skipped there.
    if item.get_closest_marker("bindings") and not _have_bindings():
        pytest.skip("needs the HTCondor Python bindings (classad2)")


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the installed `python -m startd_health`, standalone
    (no HTCondor configuration, a private state directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_CONFIG"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env
