"""Build the pilot's zipapp with its real builder (packaging/pilot/build_zipapp.py, run as a program:
packaging/ is not a Python package, so that it cannot shadow PyPA's `packaging`)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDER = os.path.join(REPO, "packaging", "pilot", "build_zipapp.py")


def build(output: str, python: str = "/usr/bin/env python3") -> str:
    subprocess.run([sys.executable, BUILDER, "--output", output, "--python", python], check=True,
                   capture_output=True, text=True, timeout=120)
    return output
