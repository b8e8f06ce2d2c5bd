"""User namespaces probe: can an unprivileged user create one (unprivileged
Apptainer, rootless containers), and could it use fakeroot?

Gather (the files under ``ctx.system_root``, which the tests point at recorded
trees; the clone test, probes/_clone_test.py, through ctx.run):

- user.max_user_namespaces (0 = off for everyone), Debian's
  kernel.unprivileged_userns_clone (0 = off for unprivileged users; absent
  on other kernels) and Ubuntu's kernel.apparmor_restrict_unprivileged_userns
  (1 = an unconfined program gets a user namespace without capabilities in
  it; programs with an AppArmor profile allowing ``userns``, such as
  Apptainer's, are exempt);
- the clone test, for real: a child (probes/_clone_test.py) calls
  unshare(CLONE_NEWUSER) and maps root inside to its own uid, as
  ``unshare --user --map-root-user`` does. As root that would prove nothing
  about unprivileged users, so a probe running as root drops, in the child,
  to an unprivileged account: USERNS_USER, else the user who ran sudo, else
  HTCondor's account (CONDOR_IDS, else ``condor``), else ``nobody``.
  ``tested_as_root`` is true only when no such account exists and the test
  ran as root (then a success says nothing about unprivileged users);
- subordinate id ranges (/etc/subuid, /etc/subgid; entries by name or by
  uid) of the tested account; Apptainer's ``--fakeroot`` needs both. Only
  the files are read (not an LDAP/SSSD ``subid`` service).

Judge (pure): FAILED when no user namespace can be created; DEGRADED when
they can only be created without privileges in them (AppArmor restriction)
or when there are no subordinate ids (fakeroot impossible); OK otherwise.
HTCondor's own ``HasUserNamespaces`` is tested once, at start-up, by the
startd (as root when it runs as root); this one is periodic.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from startd_health.core.config import Knob, parse_string
from startd_health.core.model import Probe, ProbeContext, ProbeResult, Status
from startd_health.system import procfs
from startd_health.system.programs import python_argv
from startd_health.system.procs import last_line

MAX_USER_NAMESPACES = "proc/sys/user/max_user_namespaces"
UNPRIVILEGED_USERNS_CLONE = "proc/sys/kernel/unprivileged_userns_clone"
APPARMOR_RESTRICT = "proc/sys/kernel/apparmor_restrict_unprivileged_userns"
SUBUID = "etc/subuid"
SUBGID = "etc/subgid"
CLONE_TIMEOUT = 10.0
CLONE_TEST = "_clone_test.py"    # in this package; run by path

@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class CloneTest:
    ok: bool
    step: str = ""     # where it failed: configuration | drop privileges | unshare(CLONE_NEWUSER) | write uid_map | run
    error: str = ""


@dataclass(frozen=True)
class Gathered:
    max_user_namespaces: int            # -1: unknown (no such file)
    unprivileged_userns_clone: int      # -1: no such sysctl (not a Debian-patched kernel)
    apparmor_restricted: bool
    account: Account                    # who the clone was tested as
    tested_as_root: bool
    clone: CloneTest
    subid_owner: str                    # whose subordinate ids were counted (USERNS_USER, else the tested account)
    subuid_count: int
    subgid_count: int
    subid_files: Tuple[str, ...] = ()   # those of /etc/subuid, /etc/subgid that exist


# ---------------------------------------------------------------- parsing (pure)

def parse_int(text: Optional[str]) -> int:
    """A sysctl value; -1 when absent or not a number."""
    try:
        return int((text or "").strip())
    except ValueError:
        return -1


def count_subids(text: str, name: str, uid: int) -> int:
    """Total subordinate ids of an account in /etc/subuid or /etc/subgid text
    (`owner:start:count` lines, owner by name or by numeric id)."""
    total = 0
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or not fields[1].isdigit() or not fields[2].isdigit():
            continue
        if fields[0] == name or fields[0] == str(uid):
            total += int(fields[2])
    return total


def parse_clone_output(returncode: Optional[int], stdout: str, failure: str) -> CloneTest:
    line = last_line(stdout)
    if returncode == 0 and line == "ok":
        return CloneTest(True)
    step, sep, error = line.partition(": ")
    if returncode == 3 and sep:
        return CloneTest(False, step, error)
    return CloneTest(False, "run", failure)


# ---------------------------------------------------------------- gather

def _account(name_or_uid: str) -> Optional[Account]:
    try:
        entry = pwd.getpwuid(int(name_or_uid)) if name_or_uid.isdigit() else pwd.getpwnam(name_or_uid)
    except (KeyError, ValueError, OverflowError):
        if name_or_uid.isdigit():   # an id without a passwd entry still tests fine
            return Account(name_or_uid, int(name_or_uid), int(name_or_uid))
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def choose_account(condor, environ: Mapping[str, str] = os.environ) -> Tuple[Account, bool]:
    """(the account to run the clone test as, whether that is root).

    Not root: ourselves (we cannot switch). Root: the user who ran sudo,
    else HTCondor's account (CONDOR_IDS, else condor), else nobody; root
    only when none of them exists."""
    uid = os.geteuid()
    if uid != 0:
        return _account(str(uid)) or Account(str(uid), uid, os.getegid()), False
    candidates = [environ.get("SUDO_UID", "")]
    ids = condor.get("CONDOR_IDS") if condor is not None and getattr(condor, "available", False) else None
    if ids and "." in ids:
        candidates.append(ids.split(".", 1)[0].strip())
    candidates += ["condor", "nobody"]
    for candidate in candidates:
        account = _account(candidate) if candidate else None
        if account is not None and account.uid != 0:
            return account, False
    return Account("root", 0, 0), True


def clone_test(ctx: ProbeContext, account: Account) -> CloneTest:
    result = ctx.run(python_argv(__package__, CLONE_TEST, str(account.uid), str(account.gid)),
                     timeout=CLONE_TIMEOUT, cwd="/")
    return parse_clone_output(result.returncode, result.stdout, result.describe_failure())


def gather(ctx: ProbeContext) -> Gathered:
    root = ctx.system_root
    configured = ctx.settings.get("user", "")
    owner = _account(configured) if configured else None
    if configured and owner is None:
        account, as_root = Account(configured, -1, -1), False
        clone = CloneTest(False, "configuration", f"STARTD_HEALTH_USERNS_USER: no such user {configured!r}")
    else:
        account, as_root = choose_account(ctx.condor)
        if owner is not None and os.geteuid() == 0:
            account, as_root = owner, owner.uid == 0
        clone = clone_test(ctx, account)
    owner = owner or account
    subuid, subgid = procfs.read_text(root, SUBUID), procfs.read_text(root, SUBGID)
    return Gathered(
        max_user_namespaces=parse_int(procfs.read_text(root, MAX_USER_NAMESPACES)),
        unprivileged_userns_clone=parse_int(procfs.read_text(root, UNPRIVILEGED_USERNS_CLONE)),
        apparmor_restricted=parse_int(procfs.read_text(root, APPARMOR_RESTRICT)) == 1,
        account=account,
        tested_as_root=as_root,
        clone=clone,
        subid_owner=owner.name,
        subuid_count=count_subids(subuid or "", owner.name, owner.uid),
        subgid_count=count_subids(subgid or "", owner.name, owner.uid),
        subid_files=tuple(f"/{p}" for p, text in ((SUBUID, subuid), (SUBGID, subgid)) if text is not None),
    )


# ---------------------------------------------------------------- judge

def _off_cause(g: Gathered) -> str:
    if g.max_user_namespaces == 0:
        return "user.max_user_namespaces = 0"
    if g.unprivileged_userns_clone == 0 and not g.tested_as_root:
        return "kernel.unprivileged_userns_clone = 0"
    return ""


def judge(g: Gathered) -> ProbeResult:
    facts = {
        "max_user_namespaces": g.max_user_namespaces,
        "unprivileged_userns_clone": g.unprivileged_userns_clone,
        "apparmor_restricted": g.apparmor_restricted,
        "unprivileged_clone_ok": g.clone.ok and not g.tested_as_root,
        "tested_as_root": g.tested_as_root,
        "tested_user": g.account.name,
        "subuid_count": g.subuid_count,
        "subgid_count": g.subgid_count,
    }
    who = f"as {g.account.name}" + (" (proves nothing for unprivileged users)" if g.tested_as_root else "")
    if not g.clone.ok:
        error = f"{g.clone.step}: {g.clone.error}"
        if g.clone.step == "configuration":
            return ProbeResult("userns", Status.FAILED, g.clone.error, facts)
        if g.clone.step in ("drop privileges", "run"):
            return ProbeResult("userns", Status.FAILED, f"could not test {who}: {g.clone.error}", facts)
        if g.apparmor_restricted and g.clone.step == "write uid_map":
            return ProbeResult(
                "userns", Status.DEGRADED,
                f"AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns "
                f"= 1): only programs with a userns profile (e.g. apptainer's) get privileges in them; "
                f"tested {who}: {error}", facts)
        cause = _off_cause(g)
        return ProbeResult("userns", Status.FAILED,
                           "user namespaces cannot be created" + (f" ({cause})" if cause else "")
                           + f"; tested {who}: {error}", facts)
    if g.tested_as_root:
        cause = _off_cause(g) or ("kernel.unprivileged_userns_clone = 0" if g.unprivileged_userns_clone == 0 else "")
        if cause:
            return ProbeResult("userns", Status.FAILED, f"unprivileged user namespaces are off ({cause}); "
                                                        f"root can create them", facts)
    limit = f"max {g.max_user_namespaces}" if g.max_user_namespaces >= 0 else "max unknown"
    works = f"user namespaces work (tested {who}; {limit})"
    if g.subuid_count == 0 or g.subgid_count == 0:
        missing = {(True, True): "subuid and subgid ranges", (True, False): "subuid range",
                   (False, True): "subgid range"}[(g.subuid_count == 0, g.subgid_count == 0)]
        files = "" if len(g.subid_files) == 2 else " (no " + " or ".join(
            p for p in ("/etc/subuid", "/etc/subgid") if p not in g.subid_files) + ")"
        return ProbeResult("userns", Status.DEGRADED,
                           f"{works}; no {missing} for {g.subid_owner}{files}: fakeroot impossible", facts)
    return ProbeResult("userns", Status.OK,
                       f"{works}; {g.subuid_count} subuids, {g.subgid_count} subgids for {g.subid_owner}", facts)


def resolved_user(config) -> Tuple[str, str]:
    """For `startd-health config`: the account an empty USERNS_USER stands for (as gather picks it)."""
    account, as_root = choose_account(config.condor)
    return account.name, ("root: no other account exists" if as_root
                          else "the running user" if os.geteuid() != 0 else "the account root tests as")


class UsernsProbe(Probe):
    name = "userns"
    description = ("unprivileged user namespaces: sysctls, a real unshare(CLONE_NEWUSER), subuid/subgid ranges, "
                   "AppArmor restriction")
    default_period = 300.0
    default_timeout = 30.0
    knobs = (
        Knob("USERNS_USER", parse_string, "", "account whose subuid/subgid ranges are counted and, when the "
             "probe runs as root, that the clone is tested as", "USER",
             default_text="the running user (as root: the sudo user, HTCondor's account, else `nobody`)",
             resolve=resolved_user),
    )

    def run(self, ctx: ProbeContext) -> ProbeResult:
        return judge(gather(ctx))
