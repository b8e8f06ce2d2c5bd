"""Checks run INSIDE a container image, by the container probe's launch test
(and later by the pre-job hook and a job's PreCmd).

Images are arbitrary (EL7/EL8/EL9, minimal, busybox), so the inside part is a
POSIX sh script that needs nothing but `sh`, `ls` and `rm`. It prints one
fact per line and ends with `end`, so that a script cut short (killed,
hung) is told apart from one that finished:

  startd-health-inside 1
  uid_map <inside> <outside> <count>      one per row of /proc/self/uid_map
  pidns <ls -l of /proc/self/ns/pid>      compared with ours: a pid namespace?
  check <name> ok|fail [detail]           environment sanity
  <other sections>                        e.g. cvmfs lines from probes.cvmfs
  end
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

HEADER = "startd-health-inside 1"

_CORE = r'''echo "startd-health-inside 1"
while read -r a b c; do echo "uid_map $a $b $c"; done < /proc/self/uid_map
echo "pidns $(ls -l /proc/self/ns/pid 2>/dev/null)"
writable() {
  t="$2/.startd-health.$$"
  if ( : > "$t" ) 2>/dev/null; then rm -f "$t"; echo "check $1 ok"; else echo "check $1 fail cannot create a file in $2"; fi
}
writable tmp_writable /tmp
if [ -n "$HOME" ] && [ -d "$HOME" ]; then writable home_writable "$HOME"; else echo "check home_writable fail no home directory (HOME=$HOME)"; fi
'''


def script(binds: Sequence[str] = (), sections: Sequence[str] = ()) -> str:
    """The whole inside script: core checks, expected bind mounts, extra sections, `end`."""
    lines = [_CORE]
    for path in binds:
        quoted = shlex.quote(path)
        lines.append(f'if [ -d {quoted} ]; then echo "check bind:{_safe(path)} ok"; '
                     f'else echo "check bind:{_safe(path)} fail not mounted inside"; fi\n')
    lines.extend(section if section.endswith("\n") else section + "\n" for section in sections)
    lines.append('echo "end"\n')
    return "".join(lines)


def _safe(text: str) -> str:
    """A path as a single shell word inside double quotes (no expansion)."""
    return re.sub(r'[^A-Za-z0-9_./+-]', "_", text)


@dataclass
class InsideReport:
    finished: bool = False
    uid_map: str = ""                     # rows as /proc/self/uid_map shows them
    pidns: str = ""                       # 'pid:[4026531836]' as seen inside
    checks: List[Tuple[str, bool, str]] = field(default_factory=list)   # (name, ok, detail)
    other: List[str] = field(default_factory=list)                       # lines of extra sections

    @property
    def failures(self) -> List[str]:
        return [f"{name}: {detail}" if detail else name for name, ok, detail in self.checks if not ok]


def parse(output: str) -> InsideReport:
    report = InsideReport()
    rows = []
    seen_header = False
    for line in output.splitlines():
        if line.strip() == HEADER:
            seen_header = True
            continue
        if not seen_header:
            continue  # the runtime's own chatter before the script starts
        word, _, rest = line.partition(" ")
        if word == "end":
            report.finished = True
        elif word == "uid_map":
            rows.append(rest)
        elif word == "pidns":
            match = re.search(r"pid:\[\d+\]", rest)
            report.pidns = match.group(0) if match else ""
        elif word == "check":
            name, _, result = rest.partition(" ")
            status, _, detail = result.partition(" ")
            report.checks.append((name, status == "ok", detail.strip()))
        elif line.strip():
            report.other.append(line)
    report.uid_map = "\n".join(rows)
    return report
