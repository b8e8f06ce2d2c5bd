"""Small Python programs shipped in the package and run as children by path
(the sessions probe's fork test, the userns probe's clone test): real files,
so that they are linted and tested like the rest.

They run with -I (isolated: neither PYTHON* variables nor the current
directory change what they do) and, unless they need an installed package
(the benchmark worker's numpy), -S: then they need the standard library
only and start in ~10 ms. From a zipapp (a pilot's), where they are no file
on disk, their source is given with -c instead.
"""

from __future__ import annotations

import os
import pkgutil
import sys
from typing import List


def python_argv(package: str, filename: str, *args: str, site_packages: bool = False) -> List[str]:
    """argv running ``filename`` of ``package`` (e.g. startd_health.probes, _fork_test.py) with args.
    site_packages: the program imports an installed package; it still gets none
    when we run without them ourselves (a pilot's `python3 -S`)."""
    python = sys.executable or "python3"
    flags = ["-I"] if site_packages and not sys.flags.no_site else ["-I", "-S"]
    module = sys.modules.get(package) or __import__(package, fromlist=["_"])
    path = os.path.join(os.path.dirname(os.path.abspath(module.__file__ or "")), filename)
    if os.path.isfile(path):
        return [python, *flags, path, *args]
    source = pkgutil.get_data(package, filename)
    if source is None:
        raise FileNotFoundError(f"{filename} is missing from {package}")
    return [python, *flags, "-c", source.decode(), *args]
