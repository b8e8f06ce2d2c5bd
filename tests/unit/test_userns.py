"""User namespaces probe: parsing and judgement on recorded sysctl and
subuid/subgid files, and the clone test for real (as root dropping to an
unprivileged uid, as root itself, and run by an unprivileged user)."""

import os
import time

import pytest

from startd_health.core.model import Status
from startd_health.probes import all_probes
from startd_health.probes.userns import (Account, CloneTest, Gathered, UsernsProbe, choose_account, count_subids, gather, judge,
                           parse_clone_output, parse_int)

from .helpers import FakeCondor, make_context, run_probe_as_nobody

# /etc/subuid as useradd writes it on Debian, plus an entry by uid and noise.
SUBUID = """# subordinate ids
cloudsdk:100000:65536
condor:165536:65536
4242:231072:65536
4242:296608:1000
broken line
nobody:x:5
"""
SUBGID = """cloudsdk:100000:65536
condor:165536:65536
"""


def tree(tmp_path, max_userns="63711\n", debian=None, apparmor=None, subuid=SUBUID, subgid=SUBGID):
    root = tmp_path / "root"
    (root / "proc" / "sys" / "user").mkdir(parents=True)
    (root / "proc" / "sys" / "kernel").mkdir(parents=True)
    (root / "etc").mkdir(parents=True)
    if max_userns is not None:
        (root / "proc" / "sys" / "user" / "max_user_namespaces").write_text(max_userns)
    if debian is not None:
        (root / "proc" / "sys" / "kernel" / "unprivileged_userns_clone").write_text(debian)
    if apparmor is not None:
        (root / "proc" / "sys" / "kernel" / "apparmor_restrict_unprivileged_userns").write_text(apparmor)
    if subuid is not None:
        (root / "etc" / "subuid").write_text(subuid)
    if subgid is not None:
        (root / "etc" / "subgid").write_text(subgid)
    return str(root)


def context(user="", condor=None, root="/"):
    return make_context("userns", condor=condor, system_root=root, user=user)




# ---------------------------------------------------------------- parsing

def test_registered_with_its_knob():
    assert all_probes()["userns"] is UsernsProbe
    assert [k.name for k in UsernsProbe.knobs] == ["USERNS_USER"]


def test_count_subids_by_name_and_by_uid():
    assert count_subids(SUBUID, "condor", 994) == 65536
    assert count_subids(SUBUID, "someone", 4242) == 66536      # two ranges, listed by uid
    assert count_subids(SUBUID, "nobody", 65534) == 0           # malformed entry ignored
    assert count_subids("", "condor", 994) == 0


def test_parse_int_and_clone_output():
    assert parse_int("63711\n") == 63711 and parse_int(None) == -1 and parse_int("x") == -1
    assert parse_clone_output(0, "ok\n", "") == CloneTest(True)
    assert parse_clone_output(3, "unshare(CLONE_NEWUSER): No space left on device\n", "python exit 3") == \
        CloneTest(False, "unshare(CLONE_NEWUSER)", "No space left on device")
    assert parse_clone_output(None, "", "python timed out after 10.0s") == \
        CloneTest(False, "run", "python timed out after 10.0s")


def test_choose_account_as_root_prefers_sudo_user_then_htcondor_then_nobody():
    if os.geteuid() != 0:
        me, as_root = choose_account(None, {})
        assert me.uid == os.geteuid() and not as_root
        return
    assert choose_account(None, {"SUDO_UID": "4242"}) == (Account("4242", 4242, 4242), False)
    assert choose_account(FakeCondor(CONDOR_IDS="4343.4343"), {})[0].uid == 4343
    assert choose_account(None, {"SUDO_UID": "0"})[0].uid != 0


# ---------------------------------------------------------------- judge

CONDOR = Account("condor", 994, 994)


def facts_for(**kw):
    base = dict(max_user_namespaces=63711, unprivileged_userns_clone=-1, apparmor_restricted=False, account=CONDOR,
                tested_as_root=False, clone=CloneTest(True), subid_owner="condor", subuid_count=65536,
                subgid_count=65536, subid_files=("/etc/subuid", "/etc/subgid"))
    base.update(kw)
    return Gathered(**base)


def test_judge_ok():
    r = judge(facts_for())
    assert r.status is Status.OK
    assert r.reason == "user namespaces work (tested as condor; max 63711); 65536 subuids, 65536 subgids for condor"
    assert r.facts == {"max_user_namespaces": 63711, "unprivileged_userns_clone": -1, "apparmor_restricted": False,
                       "unprivileged_clone_ok": True, "tested_as_root": False, "tested_user": "condor",
                       "subuid_count": 65536, "subgid_count": 65536}


def test_judge_without_subids_is_degraded():
    r = judge(facts_for(subuid_count=0, subgid_count=0))
    assert r.status is Status.DEGRADED
    assert r.reason.endswith("no subuid and subgid ranges for condor: fakeroot impossible")
    assert judge(facts_for(subgid_count=0)).reason.endswith("no subgid range for condor: fakeroot impossible")
    gone = judge(facts_for(subuid_count=0, subgid_count=0, subid_files=()))
    assert "(no /etc/subuid or /etc/subgid)" in gone.reason


@pytest.mark.parametrize("kw,reason", [
    (dict(max_user_namespaces=0, clone=CloneTest(False, "unshare(CLONE_NEWUSER)", "No space left on device")),
     "user namespaces cannot be created (user.max_user_namespaces = 0); tested as condor: "
     "unshare(CLONE_NEWUSER): No space left on device"),
    (dict(unprivileged_userns_clone=0, clone=CloneTest(False, "unshare(CLONE_NEWUSER)", "Operation not permitted")),
     "user namespaces cannot be created (kernel.unprivileged_userns_clone = 0); tested as condor: "
     "unshare(CLONE_NEWUSER): Operation not permitted"),
    (dict(clone=CloneTest(False, "run", "python timed out after 10.0s")),
     "could not test as condor: python timed out after 10.0s"),
    (dict(clone=CloneTest(False, "configuration", "STARTD_HEALTH_USERNS_USER: no such user 'x'")),
     "STARTD_HEALTH_USERNS_USER: no such user 'x'"),
    (dict(account=Account("root", 0, 0), tested_as_root=True, unprivileged_userns_clone=0),
     "unprivileged user namespaces are off (kernel.unprivileged_userns_clone = 0); root can create them"),
])
def test_judge_failures(kw, reason):
    r = judge(facts_for(**kw))
    assert r.status is Status.FAILED and r.reason == reason
    assert r.facts["unprivileged_clone_ok"] is False


def test_judge_apparmor_restriction_is_degraded():
    r = judge(facts_for(apparmor_restricted=True, clone=CloneTest(False, "write uid_map", "Operation not permitted")))
    assert r.status is Status.DEGRADED and r.facts["apparmor_restricted"] is True
    assert r.reason.startswith("AppArmor restricts unprivileged user namespaces")


def test_judge_tested_as_root_says_so():
    r = judge(facts_for(account=Account("root", 0, 0), tested_as_root=True, subid_owner="root"))
    assert r.status is Status.OK and r.facts["unprivileged_clone_ok"] is False and r.facts["tested_as_root"] is True
    assert "tested as root (proves nothing for unprivileged users)" in r.reason


# ---------------------------------------------------------------- gather, for real

def test_gather_on_this_machine(monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    t0 = time.monotonic()
    g = gather(context())
    assert time.monotonic() - t0 < 2.0
    expected, as_root = choose_account(None, {})
    assert g.account == expected and g.tested_as_root is as_root
    with open("/proc/sys/user/max_user_namespaces") as handle:
        assert g.max_user_namespaces == int(handle.read())
    allowed = g.max_user_namespaces > 0 and g.unprivileged_userns_clone != 0 and not g.apparmor_restricted
    result = judge(g)
    if allowed:
        assert g.clone.ok, g.clone   # this kernel allows them: the real test must agree
        fakeroot = g.subuid_count > 0 and g.subgid_count > 0
        assert result.status is (Status.OK if fakeroot else Status.DEGRADED), result.reason
    else:   # restricted: only AppArmor's restriction (programs with a profile still get them) is not a failure
        restricted_only = g.apparmor_restricted and g.clone.step == "write uid_map"
        assert result.status is (Status.DEGRADED if restricted_only else Status.FAILED), result.reason


@pytest.mark.root   # dropping to another uid
def test_gather_on_a_recorded_tree_with_a_real_clone_as_an_unlisted_uid(tmp_path, monkeypatch):
    monkeypatch.setenv("SUDO_UID", "4242")   # as `sudo startd-health` by uid 4242 (no passwd entry)
    g = gather(context(root=tree(tmp_path, debian="1\n")))
    assert g.account == Account("4242", 4242, 4242) and not g.tested_as_root
    assert g.clone.ok, g.clone
    assert (g.max_user_namespaces, g.unprivileged_userns_clone, g.apparmor_restricted) == (63711, 1, False)
    assert (g.subuid_count, g.subgid_count) == (66536, 0)
    r = judge(g)
    assert r.status is Status.DEGRADED and r.reason.endswith("no subgid range for 4242: fakeroot impossible")


def test_gather_configured_user_and_missing_files(tmp_path):
    configured = "root" if os.geteuid() == 0 else ""
    g = gather(context(user=configured, root=tree(tmp_path, max_userns=None, subuid=None, subgid=None,
                                                  apparmor="0\n")))
    assert g.max_user_namespaces == -1 and g.subid_files == () and not g.apparmor_restricted
    if configured:
        assert g.tested_as_root and g.account.uid == 0 and g.clone.ok
        r = judge(g)
        assert r.facts["unprivileged_clone_ok"] is False and "max unknown" in r.reason
    missing = judge(gather(context(user="no-such-user-here", root=tree(tmp_path / "x"))))
    assert missing.status is Status.FAILED
    assert missing.reason == "STARTD_HEALTH_USERNS_USER: no such user 'no-such-user-here'"


@pytest.mark.root   # becomes nobody with setpriv
def test_gather_run_by_an_unprivileged_user():
    """As a STARTD_CRON job runs (not root), with the system Python."""
    out = run_probe_as_nobody("userns", {"user": ""})
    facts = out["facts"]
    assert facts["tested_user"] == "nobody" and facts["tested_as_root"] is False
    with open("/proc/sys/user/max_user_namespaces") as handle:
        if int(handle.read()) > 0 and not os.path.exists("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"):
            assert facts["unprivileged_clone_ok"] is True, out
