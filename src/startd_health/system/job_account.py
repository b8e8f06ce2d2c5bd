"""The unprivileged account that stands for job users, and what it may reach.

Jobs run as their owner, a slot user (SLOTn_USER) or `nobody`, never as the
condor user. A STARTD_CRON job of a root startd runs as condor, which cannot
switch users; so the container probe launches as itself there and judges the
job account's access to the image and EXECUTE from the permission bits of
every path component (the kernel's rule: owner, else group, else other;
ACLs are not read). Run as root (`startd-health check` by an administrator,
a root pilot), it drops to the account with setpriv and launches as it.

The account (STARTD_HEALTH_CONTAINER_JOB_USER): HTCondor's SLOT1_USER when
the site runs jobs as slot users, else `nobody`, the account HTCondor itself
falls back to for jobs whose owner does not exist on the node: it is in no
privileged group, so what it can reach any job user can.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int                 # primary group
    gids: Tuple[int, ...]    # all its groups
    why: str = ""            # where the name came from


@dataclass(frozen=True)
class PathStat:
    path: str
    uid: int
    gid: int
    mode: int         # st_mode


def choose_name(configured: str, slot1_user: Optional[str], condor_ids: Optional[str] = None) -> Tuple[str, str]:
    """(account name, why). A startd that is not root (a glidein pilot, a
    personal condor) runs every job as its own user: run by such a user (not
    root, not HTCondor's account), the job account is that user."""
    if configured:
        return configured, "STARTD_HEALTH_CONTAINER_JOB_USER"
    if slot1_user and slot1_user.strip():
        return slot1_user.strip(), "HTCondor's SLOT1_USER"
    me = os.geteuid()
    if me != 0 and not is_condor_account(me, condor_ids):
        try:
            return pwd.getpwuid(me).pw_name, "the user we run as (a startd that is not root runs jobs as itself)"
        except KeyError:
            pass
    return "nobody", "nobody (HTCondor's account for jobs without a local owner)"


def condor_account(condor_ids: Optional[str]) -> Optional[Tuple[int, int]]:
    """(uid, gid) of HTCondor's own account: CONDOR_IDS (uid.gid), else the
    user named condor; None when neither exists."""
    uid, _, gid = (condor_ids or "").strip().partition(".")
    if uid.strip().isdigit() and gid.strip().isdigit():
        return int(uid), int(gid)
    try:
        entry = pwd.getpwnam("condor")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def is_condor_account(uid: int, condor_ids: Optional[str]) -> bool:
    """Whether uid is HTCondor's own account (condor_account)."""
    ids = condor_account(condor_ids)
    return ids is not None and ids[0] == uid


def resolve(name: str, why: str = "") -> Tuple[Optional[Account], str]:
    """The account's uid and groups (the password and group databases: local files or NSS)."""
    import grp
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        return None, f"job account {name!r} does not exist on this node"
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid] + [g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem]
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(sorted(set(groups))), why), ""


def components(path: str) -> List[str]:
    """/a/b/c -> ['/', '/a', '/a/b', '/a/b/c']."""
    path = os.path.normpath(path)
    parts = [p for p in path.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]


def stat_argv(paths: Sequence[str]) -> List[str]:
    """coreutils stat, run as a budgeted child (an image on a hung mount must not block us)."""
    return ["stat", "-L", "-c", "%u %g %f %s %n", "--", *paths]


def parse_stat(text: str) -> List[Tuple[PathStat, int]]:
    """Lines of stat_argv -> (PathStat, size)."""
    out = []
    for line in text.splitlines():
        fields = line.split(" ", 4)
        if len(fields) != 5:
            continue
        try:
            out.append((PathStat(fields[4], int(fields[0]), int(fields[1]), int(fields[2], 16)), int(fields[3])))
        except ValueError:
            continue
    return out


def allowed(account: Account, st: PathStat, want: int) -> bool:
    """want: a mask of os.R_OK | os.W_OK | os.X_OK, judged as the kernel would (without ACLs)."""
    if account.uid == 0:
        return not (want & os.X_OK) or bool(st.mode & 0o111) or stat.S_ISDIR(st.mode)
    if account.uid == st.uid:
        bits = (st.mode >> 6) & 7
    elif st.gid in account.gids:
        bits = (st.mode >> 3) & 7
    else:
        bits = st.mode & 7
    return bits & want == want


def denied(account: Account, target: str, stats: Sequence[PathStat], need_dir: bool = False) -> str:
    """'' when the account can reach and read target (a file, or a directory
    it must also enter), else which component stops it."""
    by_path = {s.path: s for s in stats}
    chain = components(target)
    for path in chain[:-1]:
        st = by_path.get(path)
        if st is None:
            return f"{path}: not found"
        if not allowed(account, st, os.X_OK):
            return f"{path} (mode {stat.S_IMODE(st.mode):o}, owner {st.uid}:{st.gid}) cannot be entered"
    st = by_path.get(chain[-1])
    if st is None:
        return f"{target}: not found"
    want = os.R_OK | (os.X_OK if stat.S_ISDIR(st.mode) or need_dir else 0)
    if not allowed(account, st, want):
        return (f"{target} (mode {stat.S_IMODE(st.mode):o}, owner {st.uid}:{st.gid}) cannot be "
                f"{'listed' if stat.S_ISDIR(st.mode) else 'read'}")
    return ""


def drop_argv(account: Account) -> List[str]:
    """Prefix that runs a command as the account (we are root): util-linux setpriv."""
    return ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups", "--"]
