import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running `python -m monitor` from this checkout, standalone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_CONFIG"))}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env
