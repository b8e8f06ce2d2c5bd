"""Checks run INSIDE a container image: the one script the container probe's
launch test, the pre-job hook and a job's own wrapper (`startd-health
inside-script`) run, with all its sections.

Images are arbitrary (EL7/EL8/EL9, minimal, busybox), so the inside part is a
POSIX sh script that needs nothing but `sh`, `ls` and `rm`. It prints one
fact per line and ends with `end`, so that a script cut short (killed,
hung) is told apart from one that finished:

  startd-health-inside 1
  uid_map <inside> <outside> <count>      one per row of /proc/self/uid_map
  pidns <ls -l of /proc/self/ns/pid>      compared with ours: a pid namespace?
  check <name> ok|fail [detail]           environment sanity, expected bind mounts
  cvmfs <repo> ok [revision]              one per CVMFS repository asked for (the CVMFS
  cvmfs <repo> fail <reason>              probe's check, as far as sh and ls can make it)
  os <KEY>=<value>                         the platform section (container probe only): chosen
  arch <uname -m>                          os-release keys, /etc/redhat-release and
  libc <first line of its version>         /etc/debian_version, machine, C library
  end

Adding a section means adding its shell text and its parsing here, so that
every user of the script gets it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

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


MAX_REASON_CHARS = 256
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Each repository is checked in its own background subshell, so that one
# hung repository does not keep the others from answering before the
# caller's timeout; each answer is one short printf, a single write that
# does not interleave with the others'. Only sh built-ins and ls are
# needed (getfattr or attr when the image has them); an error message is
# cut to its first line with a parameter expansion, not with tr or head.
_CVMFS_FUNCTION = r"""cvmfs_nl='
'
cvmfs_check() {
  d="$1/$2"
  if err=$(ls "$d/." 2>&1 >/dev/null); then
    rev=
    if command -v getfattr >/dev/null 2>&1; then
      rev=$(getfattr --only-values --absolute-names -n user.revision "$d" 2>/dev/null)
    elif command -v attr >/dev/null 2>&1; then
      rev=$(attr -q -g revision "$d" 2>/dev/null)
    fi
    case $rev in *[!0-9]*) rev= ;; esac
    printf 'cvmfs %s ok %s\n' "$2" "$rev"
  else
    rc=$?
    err=${err%%"$cvmfs_nl"*}
    # ls killed by a signal: the caller's timeout ended a listing that did not answer
    if [ "$rc" -gt 128 ]; then err="no answer (hung mount or timed out)"; fi
    printf 'cvmfs %s fail %s\n' "$2" "${err:-ls exit $rc}"
  fi
}
"""


def cvmfs_section(root: str, repos: Sequence[str]) -> str:
    """A POSIX sh snippet (needs only sh and ls; getfattr or attr if
    present) printing one line per repository: `cvmfs <repo> ok <revision>`
    (revision empty when no attribute tool is there) or
    `cvmfs <repo> fail <reason>`. The caller must run it under a timeout."""
    lines = [_CVMFS_FUNCTION, f"cvmfs_root={shlex.quote(root)}"]
    for repo in repos:
        if not _REPO_NAME.match(repo):
            raise ValueError(f"{repo!r} is not a repository name")
        lines.append(f'cvmfs_check "$cvmfs_root" {shlex.quote(repo)} &')
    lines.append("wait")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- platform
# What the image is (system/platforms.py names it): the os-release keys that
# name a platform (/usr/lib/os-release when /etc has none), the release files
# older or minimal images have instead, the machine, and the C library.
# Only sh built-ins and uname; the C library answers `getconf
# GNU_LIBC_VERSION`, or is asked itself: glibc's libc.so.6 and musl's loader
# print their version when executed (they exit at once: nothing to hang on).
_PLATFORM = r"""platform_nl='
'
for f in /etc/os-release /usr/lib/os-release; do
  [ -r "$f" ] || continue
  while IFS= read -r l || [ -n "$l" ]; do
    case $l in ID=*|ID_LIKE=*|NAME=*|VERSION_ID=*|VERSION_CODENAME=*|PRETTY_NAME=*) printf 'os %s\n' "$l" ;; esac
  done < "$f"
  break
done
for f in redhat-release debian_version; do
  if [ -r "/etc/$f" ]; then IFS= read -r l < "/etc/$f"; printf 'os %s=%s\n' "$f" "$l"; fi
done
printf 'arch %s\n' "$(uname -m 2>/dev/null)"
v=$(getconf GNU_LIBC_VERSION 2>/dev/null)
if [ -z "$v" ]; then
  for f in /lib64/libc.so.6 /usr/lib64/libc.so.6 /lib/*-linux-gnu*/libc.so.6 /usr/lib/*-linux-gnu*/libc.so.6 /lib/libc.so.6 /lib/ld-musl-*.so.1; do
    [ -x "$f" ] || continue
    v=$("$f" 2>&1)
    case $v in *"Version "*) v="musl ${v#*Version }" ;; esac
    break
  done
fi
printf 'libc %s\n' "${v%%"$platform_nl"*}"
"""


def script(binds: Sequence[str] = (), cvmfs_root: str = "/cvmfs", cvmfs_repos: Sequence[str] = (),
           platform: bool = False) -> str:
    """The whole inside script: core checks, expected bind mounts, CVMFS
    repositories, the platform facts (when asked: the container probe), `end`."""
    lines = [_CORE]
    for path in binds:
        quoted = shlex.quote(path)
        lines.append(f'if [ -d {quoted} ]; then echo "check bind:{_safe(path)} ok"; '
                     f'else echo "check bind:{_safe(path)} fail not mounted inside"; fi\n')
    if cvmfs_repos:
        lines.append(cvmfs_section(cvmfs_root, cvmfs_repos))
    if platform:
        lines.append(_PLATFORM)
    lines.append('echo "end"\n')
    return "".join(lines)


def _safe(text: str) -> str:
    """A path as a single shell word inside double quotes (no expansion)."""
    return re.sub(r'[^A-Za-z0-9_./+-]', "_", text)


@dataclass(frozen=True)
class CvmfsInside:
    """One repository as seen from inside a container."""

    repo: str
    ok: bool
    revision: Optional[int] = None
    reason: str = ""


@dataclass
class InsideReport:
    finished: bool = False
    uid_map: str = ""                     # rows as /proc/self/uid_map shows them
    pidns: str = ""                       # 'pid:[4026531836]' as seen inside
    checks: List[Tuple[str, bool, str]] = field(default_factory=list)   # (name, ok, detail)
    cvmfs: Dict[str, CvmfsInside] = field(default_factory=dict)          # by repository
    os_release: Dict[str, str] = field(default_factory=dict)   # platform section: KEY -> raw value
    arch: str = ""
    libc: str = ""
    other: List[str] = field(default_factory=list)                       # lines no section claims

    @property
    def failures(self) -> List[str]:
        found = [f"{name}: {detail}" if detail else name for name, ok, detail in self.checks if not ok]
        return found + [f"cvmfs {repo}: {c.reason}" for repo, c in self.cvmfs.items() if not c.ok]


def parse_cvmfs(output: str, repos: Sequence[str] = ()) -> Dict[str, CvmfsInside]:
    """The cvmfs section's answers by repository. Repositories given in
    ``repos`` that did not answer (the caller's timeout ended the script: a
    hung mount) are failed with that reason. Other lines are ignored."""
    found: Dict[str, CvmfsInside] = {}
    for line in output.splitlines():
        parts = line.rstrip("\r").split(" ", 3)
        if len(parts) < 3 or parts[0] != "cvmfs":
            continue
        repo, verdict, rest = parts[1], parts[2], parts[3].strip() if len(parts) > 3 else ""
        if verdict == "ok":
            found[repo] = CvmfsInside(repo, True, int(rest) if rest.isdigit() else None)
        elif verdict == "fail":
            found[repo] = CvmfsInside(repo, False, reason=rest[:MAX_REASON_CHARS] or "failed")
    for repo in repos:
        if repo not in found:
            found[repo] = CvmfsInside(repo, False, reason="no answer (hung mount or timed out)")
    return found


def parse(output: str, cvmfs_repos: Sequence[str] = ()) -> InsideReport:
    """The script's output -> report; cvmfs_repos: the repositories it was asked to check."""
    report = InsideReport()
    rows = []
    cvmfs_lines = []
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
        elif word == "cvmfs":
            cvmfs_lines.append(line)
        elif word == "os":
            key, sep, value = rest.partition("=")
            if sep and key and len(report.os_release) < 16:
                report.os_release.setdefault(key, value.rstrip("\r")[:MAX_REASON_CHARS])
        elif word in ("arch", "libc"):
            setattr(report, word, rest.strip()[:MAX_REASON_CHARS])
        elif line.strip():
            report.other.append(line)
    report.uid_map = "\n".join(rows)
    if cvmfs_repos:
        wanted = set(cvmfs_repos)
        answers = parse_cvmfs("\n".join(cvmfs_lines), cvmfs_repos)
        report.cvmfs = {repo: c for repo, c in answers.items() if repo in wanted}
    return report


def standalone(binds: Sequence[str] = (), cvmfs_root: str = "/cvmfs", cvmfs_repos: Sequence[str] = ()) -> str:
    """A script a job runs itself, inside its own container: the same checks,
    then exit 1 with one line per failure on stderr, so that a job on a
    broken image fails fast and says why; when they pass, it execs its
    arguments (the job's real command), so it can be the job's executable."""
    body = script(binds, cvmfs_root, cvmfs_repos)
    return f"""#!/bin/sh
# startd-health job-side checks: generated by `startd-health inside-script`.
startd_health_checks() {{
{body}}}
out=$(startd_health_checks 2>&1)
status=0
while IFS= read -r line; do
  case $line in
    "check "*" fail"*|"cvmfs "*" fail"*)
      rest=${{line#* }}; echo "startd-health: ${{rest%% fail*}}: ${{rest#* fail }}" >&2; status=1 ;;
  esac
done <<STARTD_HEALTH_EOF
$out
STARTD_HEALTH_EOF
case $out in
  *"
end") ;;
  *) echo "startd-health: the checks did not finish" >&2; status=1 ;;
esac
[ $status = 0 ] || exit $status
echo "startd-health: checks passed" >&2
[ $# -gt 0 ] && exec "$@"
exit 0
"""
