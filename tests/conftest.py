import os

import pytest


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the installed `python -m startd_health`, standalone
    (no HTCondor configuration, a private state directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_CONFIG"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env
