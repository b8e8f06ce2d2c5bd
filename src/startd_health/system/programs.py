"""Small Python programs shipped in the package and run as children by path
(the sessions probe's fork test, the userns probe's clone test): real files,
so that they are linted and tested like the rest.

They run with -I -S (isolated, no site-packages): they need the standard
library only, start in ~10 ms, and cannot be confused by the environment.
From a zipapp (a pilot's), where they are no file on disk, their source is
given with -c instead.
"""

from __future__ import annotations

import os
import pkgutil
import sys
from typing import List


def python_argv(package: str, filename: str, *args: str) -> List[str]:
    """argv running ``filename`` of ``package`` (e.g. startd_health.probes, _fork_test.py) with args."""
    python = sys.executable or "python3"
    module = sys.modules.get(package) or __import__(package, fromlist=["_"])
    path = os.path.join(os.path.dirname(os.path.abspath(module.__file__ or "")), filename)
    if os.path.isfile(path):
        return [python, "-I", "-S", path, *args]
    source = pkgutil.get_data(package, filename)
    if source is None:
        raise FileNotFoundError(f"{filename} is missing from {package}")
    return [python, "-I", "-S", "-c", source.decode(), *args]
