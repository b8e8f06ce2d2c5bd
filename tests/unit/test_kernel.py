"""Kernel events probe (probes/kernel.py) and the kernel log reader (system/kmsg.py).

The kernel messages below are RECORDED, not invented: each text is a kernel
message as it was logged on a real machine and quoted in a public report
(linux-kernel, linux-btrfs, linux-xfs and linux-ext4 mailing-list threads,
distribution bug reports and forum posts with dmesg excerpts; NVIDIA Xid lines
from GPU-cluster incident notes), cited per line. What is SYNTHESISED is only
the kmsg envelope around each text (`prio,seq,usec,flags;`): the priority the
kernel uses for that printk, a sequence number and a timestamp, because the
reports quote dmesg, which drops them. Nothing here was ever written into
this machine's kernel log: the probe reads such lines from a file through
STARTD_HEALTH_KERNEL_LOG, which is how the kmsg format reaches it anywhere.

The EPIPE case (records overwritten while we read) cannot be provoked on the
real /dev/kmsg without flooding the host's log, so the device's read() is
SCRIPTED there (a pure-logic test); the real /dev/kmsg is read, read-only, in
test_real_dev_kmsg_*.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from startd_health.core.config import ConfigError, load_config
from startd_health.core.model import RunReport, Status
from startd_health.core.verdict import judge as verdict_of
from startd_health.monitor.cron import render
from startd_health.probes import all_probes, kernel
from startd_health.probes.kernel import (KernelProbe, RuleSet, State, builtin_rules, classify, parse_rules,
                                         parse_rules_file, rule_set)
from startd_health.system import kmsg

from .helpers import PACKAGE_PARENT, make_context, parse_cron_output, probe_settings, run_cli

BOOT = "3f0c2a6e-5f0a-4c62-9d51-6b1c1b0e7a11"
UPTIME = 100_000.0          # seconds since boot in the recorded tree


# (class, judgement after classification, device / pci, message text, where it was recorded)
RECORDED = [
    ("read_only_remount", "readonly", "sdb7", "EXT4-fs (sdb7): Remounting filesystem read-only",
     "ext4 bug report, dmesg after a git gc (kernel 5.x)"),
    ("read_only_remount", "readonly", "dm-17", "EXT4-fs (dm-17): Remounting filesystem read-only",
     "Kubernetes node with Longhorn volumes, journalctl -k"),
    ("read_only_remount", "readonly", "sdd", "BTRFS info (device sdd): forced readonly",
     "linux-btrfs, ENOSPC during a balance"),
    ("read_only_remount", "readonly", "vdc", "BTRFS info (device vdc: state EA): forced readonly",
     "linux-btrfs patch, snapshot creation failure (6.x spelling)"),
    ("fs_error", "degrade", "sdb7",
     "EXT4-fs error (device sdb7): ext4_get_branch:171: inode #8: block 30343695: comm jbd2/sdb7-8: invalid block",
     "ext4 bug report, same incident as the remount above"),
    ("fs_error", "degrade", "sdb7", "Aborting journal on device sdb7-8.", "same incident"),
    ("fs_error", "degrade", "dm-17",
     "EXT4-fs error (device dm-17): ext4_journal_check_start:87: comm mosquitto: Detected aborted journal",
     "Kubernetes node, same incident as dm-17 above"),
    ("fs_error", "fail", "dm-1", "XFS (dm-1): Corruption of in-memory data detected.  Shutting down filesystem",
     "linux-xfs, log recovery failure"),
    ("fs_error", "fail", "sdb1", "XFS (sdb1): Log I/O Error (0x2) detected at xlog_ioend_work+0x6e/0x70 [xfs] "
     "(fs/xfs/xfs_log.c:1378).  Shutting down filesystem.", "incident write-up of a dying disk"),
    ("fs_error", "degrade", "sdb1", "XFS (sdb1): log I/O error -5", "same incident"),
    ("fs_error", "degrade", "sdg", "BTRFS error (device sdg): parent transid verify failed on 52180048330752 "
     "wanted 132477 found 132432", "linux-btrfs, transid failure"),
    ("fs_error", "degrade", "sdd", "BTRFS: error (device sdd) in __btrfs_free_extent:4860: errno=-28 No space left",
     "linux-btrfs, ENOSPC"),
    ("io_error", "degrade", "sde", "blk_update_request: I/O error, dev sde, sector 4054268520 op 0x1:(WRITE) "
     "flags 0x100000 phys_seg 62 prio class 0", "SAS disk gone (kernel 5.x)"),
    ("io_error", "degrade", "sdf", "I/O error, dev sdf, sector 401408 op 0x1:(WRITE) flags 0x2004000 phys_seg 128 "
     "prio class 2", "iSCSI session lost (kernel 6.x spelling)"),
    ("io_error", "degrade", "sdc", "Buffer I/O error on device sdc, logical block 0", "Ubuntu forum, failing USB disk"),
    ("oom_kill", "count", "", "Out of memory: Killed process 1669 (xdg-desktop-por) total-vm:105068kB, "
     "anon-rss:9792kB, file-rss:10972kB, shmem-rss:0kB, UID:1000 pgtables:136kB oom_score_adj:200",
     "linux-kernel, xfstests run"),
    ("oom_kill", "count", "", "Memory cgroup out of memory: Killed process 4182 (order-worker) total-vm:812044kB, "
     "anon-rss:518420kB, file-rss:1240kB, shmem-rss:0kB", "container OOM post-mortem"),
    ("hung_task", "degrade", "", "INFO: task cryptomgr_test:391009 blocked for more than 120 seconds.",
     "linux-crypto"),
    ("hung_task", "degrade", "", "INFO: task DataXceiver for:7494 blocked for more than 120 seconds.",
     "linux-mm, ext4 large folio deadlock (a task name with a blank)"),
    ("mce", "fail", "", "[Hardware Error]: CPU 1: Machine Check Exception: 5 Bank 5: b200121020080400",
     "Ask Ubuntu, boot-time MCE"),
    ("mce", "count", "", "mce: [Hardware Error]: Machine check events logged", "corrected error (CMCI)"),
    ("gpu_xid", "fail", "0000:18:00", "NVRM: Xid (PCI:0000:18:00): 79, pid=1234, GPU has fallen off the bus.",
     "GPU node runbook"),
    ("gpu_xid", "fail", "0000:18:00", "NVRM: GPU at PCI:0000:18:00.0 has fallen off the bus.", "same incident"),
    ("gpu_xid", "fail", "0000:b9:00", "NVRM: Xid (PCI:0000:b9:00): 74, pid=<unknown>, name=<unknown>, NVLink: "
     "fatal error detected on link 6(0x10000, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0)", "cloud GPU instance health check"),
    ("gpu_xid", "count", "0000:03:00", "NVRM: Xid (PCI:0000:03:00): 31, pid='1234', name='python3', "
     "'Illegal memory access'", "an application's MMU fault: the job's problem"),
]

# Recorded lines of the same machines that no rule must take.
UNCLASSIFIED = [
    "Linux version 6.18.44-fc-v1147 (builder@sandboxing) (gcc (GCC) 15.3.0, GNU ld (GNU Binutils) 2.46)",
    "EXT4-fs (sda1): mounted filesystem 5d3a0f8e-2f4c-4c8b-9d0e-3f8f2d7c1b6a r/w with ordered data mode. Quota mode: none.",
    "XFS (sdb1): Ending clean mount",
    "sd 0:0:0:0: [sda] Attached SCSI disk",
    "\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.",
    # the summary line 4.19+ prints just before "Out of memory: Killed process" for the same kill
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice,"
    "task=python3,pid=2481,uid=1000",
    "BTRFS warning (device sdd): Skipping commit of aborted transaction.",
]

# The priority the kernel logs each with (facility 0 = kernel): KERN_CRIT 2, KERN_ERR 3, KERN_WARNING 4, KERN_INFO 6
PRIO = {"read_only_remount": 2, "fs_error": 3, "io_error": 3, "oom_kill": 3, "hung_task": 3, "mce": 0, "gpu_xid": 4}


def kmsg_line(seq, usec, text, prio=6, fields=()):
    """One record in /dev/kmsg's format (the envelope is synthesised, see the module doc)."""
    # as the kernel does it: bytes < 0x20, >= 0x7f and backslash as \xNN (UTF-8 byte by byte)
    escaped = "".join(chr(b) if 0x20 <= b < 0x7f and b != 0x5c else f"\\x{b:02x}" for b in text.encode())
    return f"{prio},{seq},{usec},-;{escaped}\n" + "".join(f" {k}={v}\n" for k, v in fields)


class Node:
    """A recorded machine: /proc/uptime, the boot id and the mount table under
    a system root, the log a file in kmsg format, the state directory."""

    def __init__(self, tmp_path, uptime=UPTIME, boot=BOOT):
        self.root = tmp_path / "system"
        (self.root / "proc/sys/kernel/random").mkdir(parents=True)
        (self.root / "proc/self").mkdir(parents=True)
        (self.root / "dev").mkdir()
        self.log = tmp_path / "kmsg"
        self.log.write_text("")
        self.scratch = tmp_path / "state"
        self.seq = 0
        self.set(uptime=uptime, boot=boot, mounts="/dev/sda1 / ext4 rw,relatime 0 0\n")

    def set(self, uptime=None, boot=None, mounts=None):
        if uptime is not None:
            self.uptime = uptime
            (self.root / "proc/uptime").write_text(f"{uptime:.2f} 12345.00\n")
        if boot is not None:
            (self.root / "proc/sys/kernel/random/boot_id").write_text(boot + "\n")
        if mounts is not None:
            (self.root / "proc/self/mounts").write_text(mounts)

    def log_message(self, text, prio=3, ago=10.0, fields=()):
        """Append one record, logged ``ago`` seconds before the current uptime."""
        self.seq += 1
        with open(self.log, "a") as handle:
            handle.write(kmsg_line(self.seq, int((self.uptime - ago) * 1e6), text, prio, fields))

    def run(self, **settings):
        settings.setdefault("log", str(self.log))
        ctx = make_context("kernel", scratch_root=str(self.scratch), system_root=str(self.root), **settings)
        return KernelProbe().run(ctx)

    def state(self):
        with open(self.scratch / "kernel" / kernel.STATE_FILE) as handle:
            return json.load(handle)


def counts(result):
    return {dict(m.labels)["class"]: int(m.value) for m in result.measurements if m.name == "events"}


# ---------------------------------------------------------------- the rules

def test_the_probe_is_registered_and_on_by_default():
    assert all_probes()["kernel"] is KernelProbe
    assert KernelProbe.enabled_by_default


@pytest.mark.parametrize("cls,judgement,where,text,source", RECORDED, ids=[f"{r[0]}-{i}" for i, r in enumerate(RECORDED)])
def test_every_recorded_message_is_classified(cls, judgement, where, text, source):
    record = kmsg.Record(1, 5_000_000, PRIO[cls], text, ())
    event = classify(record, rule_set(()), 1_000_000.0, kernel.DEFAULT_XID_FATAL)
    assert event is not None, f"no rule for: {text}"
    assert (event.cls, event.judgement) == (cls, judgement)
    assert (event.pci if cls == "gpu_xid" else event.device) == where
    assert event.at == pytest.approx(1_000_005.0)


def test_the_readme_documents_every_builtin_class():
    from .helpers import REPO
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme[readme.index("## Kernel events"):readme.index("## Configuration")]
    for cls in kernel.builtin_classes():
        assert f"| `{cls}` |" in section
    for judgement in kernel.JUDGEMENTS:
        assert f"`{judgement}`" in section


def test_every_builtin_class_has_a_recorded_message():
    assert {r[0] for r in RECORDED} == set(kernel.builtin_classes())
    assert {(r.cls, r.judgement) for r in builtin_rules()} >= {("mce", "fail"), ("mce", "count"), ("gpu_xid", "xid")}


def test_xid_codes_and_addresses():
    rules = rule_set(())
    fatal = classify(kmsg.Record(1, 0, 4, RECORDED[21][3], ()), rules, 0.0, kernel.DEFAULT_XID_FATAL)
    assert (fatal.code, fatal.pci, fatal.judgement) == (79, "0000:18:00", "fail")
    # a site that counts 79 as survivable says so in STARTD_HEALTH_KERNEL_XID_FATAL
    assert classify(kmsg.Record(1, 0, 4, RECORDED[21][3], ()), rules, 0.0, (48,)).judgement == "count"
    assert kernel.parse_xid_codes("79, 48 79") == (48, 79)
    with pytest.raises(ValueError, match="not an Xid number"):
        kernel.parse_xid_codes("79, GSP")


@pytest.mark.parametrize("text", UNCLASSIFIED)
def test_ordinary_recorded_messages_are_not_classified(text):
    assert classify(kmsg.Record(1, 0, 6, text, ()), rule_set(()), 0.0, kernel.DEFAULT_XID_FATAL) is None


def test_only_kernel_messages_are_classified():
    # prio 30 = facility daemon (3), level info: user space wrote it into /dev/kmsg
    record = kmsg.Record(1, 0, 30, "EXT4-fs (sda1): Remounting filesystem read-only", ())
    assert classify(record, rule_set(()), 0.0, ()) is None


def test_the_shortcut_regex_agrees_with_the_rules():
    """The combined regex that skips unmatched messages must never hide a rule's match."""
    rules = rule_set(())
    assert rules.any is not None
    for _, _, _, text, _ in RECORDED:
        assert rules.any.search(text)
    slow = RuleSet(builtin_rules())
    slow.any = None
    for text in UNCLASSIFIED + [r[3] for r in RECORDED]:
        assert rules.match(text) == slow.match(text)
    # a rule without a required literal (case-insensitive, or none) turns the shortcut off, never a match
    loose = RuleSet(parse_rules("site fail (?i)lustreerror\nother count \\d+ errors\n", "site") + builtin_rules())
    assert loose.any is None
    assert loose.match("LustreError: evicted")[0].cls == "site"
    assert kernel.required_literals(re.compile(r"NVRM: Xid \(PCI:(?P<pci>\S+)\): (?P<code>\d+)")) \
        == ["NVRM: Xid (PCI:"]


# ---------------------------------------------------------------- rules file

def test_a_rules_file_adds_classes_tried_first(tmp_path):
    path = tmp_path / "site.rules"
    path.write_text("# site rules\n\nlustre_evict fail  LustreError: .*evicted by (?P<device>\\S+)\n"
                    "oom_kill     degrade Out of memory: Killed process\n")
    value = parse_rules_file(str(path))
    assert value[0] == str(path)
    rules = rule_set(value)
    assert rules.classes[:2] == ("lustre_evict", "oom_kill")
    event = classify(kmsg.Record(1, 0, 3, "LustreError: 167-0: lustre-OST0001: This client was evicted by "
                                 "lustre-OST0001", ()), rules, 0.0, ())
    assert (event.cls, event.judgement, event.device) == ("lustre_evict", "fail", "lustre-OST0001")
    # the site's rule for oom_kill overrides the built-in counting one
    assert classify(kmsg.Record(1, 0, 3, RECORDED[15][3], ()), rules, 0.0, ()).judgement == "degrade"


@pytest.mark.parametrize("line,error", [
    ("lustre_evict fail", "line 2: 'lustre_evict fail': expected `CLASS JUDGEMENT REGEX`"),
    ("Lustre fail LustreError", "line 2: class 'Lustre' is not a name"),
    ("lustre warn LustreError", "line 2: judgement 'warn' is not one of count, degrade, fail, readonly, xid"),
    ("lustre fail LustreError: (unclosed", "line 2: not a regular expression (missing ), unterminated subpattern"),
    ("gpu xid NVRM: Xid", "line 2: an xid rule needs a (?P<code>...) group"),
])
def test_a_bad_rules_line_is_one_error_naming_file_and_line(tmp_path, line, error):
    path = tmp_path / "site.rules"
    path.write_text("# site rules\n" + line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(KernelProbe.knobs, {"KERNEL_RULES": str(path)}, _NoCondor())
    message = str(caught.value)
    assert message.startswith(f"STARTD_HEALTH_KERNEL_RULES = '{path}' (command line --kernel-rules): {path} {error}")
    assert "\n" not in message


class _NoCondor:
    available = False

    def get(self, name):
        return None


def test_a_bad_rules_file_fails_the_cron_run_with_one_line(tmp_path):
    path = tmp_path / "site.rules"
    path.write_text("lustre warn LustreError\n")
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
    proc = run_cli(["--no-condor-config", "--probes", "kernel", "--kernel-rules", str(path)], env, entry="cron")
    assert proc.returncode == 2
    assert f"{path} line 1: judgement 'warn'" in proc.stderr
    assert "StartdHealthOk = false" in proc.stdout and proc.stdout.endswith("-\n")
    missing = run_cli(["check", "--no-condor-config", "--probes", "kernel", "--kernel-rules", "/nonexistent/x"], env)
    assert missing.returncode == 3 and "cannot read /nonexistent/x: No such file or directory" in missing.stderr


# ---------------------------------------------------------------- reader: cursor, reboot, look-back, EPIPE

def test_cursor_reads_only_new_messages(tmp_path):
    node = Node(tmp_path)
    node.log_message("sd 0:0:0:0: [sda] Attached SCSI disk", prio=5)
    node.log_message(RECORDED[15][3], ago=5)       # an OOM kill: counted, not a problem
    first = node.run()
    assert first.status is Status.OK
    assert first.facts["lines_read"] == 2 and counts(first)["oom_kill"] == 1
    assert "fresh start: no saved position" in first.reason and "counted: oom_kill 1" in first.reason
    assert node.state()["cursor"] == {"boot_id": BOOT, "seq": 2, "log": str(node.log)}

    again = node.run()
    assert again.facts["lines_read"] == 0 and counts(again)["oom_kill"] == 1
    assert again.reason.startswith("0 new kernel messages, no problem within 1 h")

    node.log_message(RECORDED[16][3], ago=1)
    third = node.run()
    assert third.facts["lines_read"] == 1 and counts(third)["oom_kill"] == 2
    assert third.facts["oom_kill_last_message"].startswith("Memory cgroup out of memory: Killed process 4182")


def test_every_class_counter_starts_at_zero(tmp_path):
    result = Node(tmp_path).run()
    assert counts(result) == {cls: 0 for cls in kernel.builtin_classes()}
    assert not any(name.endswith("_last_message") for name in result.facts)


def test_look_back_on_a_fresh_start(tmp_path):
    node = Node(tmp_path)
    node.log_message(RECORDED[17][3], ago=7200)    # a hung task 2 h ago: before the look-back
    node.log_message(RECORDED[15][3], ago=600)     # an OOM kill 10 min ago
    result = node.run(lookback=3600.0)
    assert counts(result)["hung_task"] == 0 and counts(result)["oom_kill"] == 1
    assert result.status is Status.OK
    assert result.reason.startswith("2 new kernel messages (fresh start: no saved position, looked back 1 h, "
                                    "1 older ones ignored)")
    assert node.state()["cursor"]["seq"] == 2       # the old one is behind the cursor, not pending

    fresh = Node(tmp_path / "b")
    fresh.log_message(RECORDED[15][3], ago=600)
    assert counts(fresh.run(lookback=0.0))["oom_kill"] == 0    # 0: only messages from now on


def test_a_reboot_resets_the_cursor_and_ends_the_windows(tmp_path):
    node = Node(tmp_path)
    node.log_message(RECORDED[17][3], ago=60)      # hung task: degraded for the window
    assert node.run().status is Status.DEGRADED
    # reboot: new boot id, uptime and sequence numbers start again
    node.log.write_text("")
    node.seq = 0
    node.set(uptime=300.0, boot="9d7e1c52-0d55-4a43-8d1e-2c8f6c4f0b22")
    node.log_message("Linux version 6.18.44", prio=5, ago=299)
    node.log_message(RECORDED[15][3], ago=100)
    after = node.run()
    assert after.status is Status.OK                 # the earlier boot's hung task is over
    assert "fresh start: the machine rebooted" in after.reason
    assert after.facts["lines_read"] == 2             # seq 1..2 again: not skipped as "seen"
    assert counts(after) == dict(counts(after), hung_task=1, oom_kill=1)   # counters survive the reboot


def test_another_log_is_a_fresh_start(tmp_path):
    node = Node(tmp_path)
    node.log_message(RECORDED[15][3])
    node.run()
    other = tmp_path / "other-kmsg"
    other.write_text(kmsg_line(1, int((UPTIME - 5) * 1e6), RECORDED[16][3], 3))
    result = node.run(log=str(other))
    assert "fresh start: the log was" in result.reason and counts(result)["oom_kill"] == 2


def test_max_lines_caps_a_run_and_the_rest_comes_next(tmp_path):
    node = Node(tmp_path)
    with open(node.log, "w") as handle:
        for seq in range(1, 2501):
            handle.write(kmsg_line(seq, int((UPTIME - 60) * 1e6), RECORDED[15][3], 3))
    node.seq = 2500
    first = node.run(max_lines=1000)
    assert first.facts["lines_read"] == 1000 and counts(first)["oom_kill"] == 1000
    assert "read stopped after 1000 messages" in first.reason
    second = node.run(max_lines=1000)
    third = node.run(max_lines=1000)
    assert (second.facts["lines_read"], third.facts["lines_read"]) == (1000, 500)
    assert counts(third)["oom_kill"] == 2500


def test_records_continuation_lines_escapes_and_malformed_lines(tmp_path):
    path = tmp_path / "kmsg"
    path.write_text(kmsg_line(1, 10, "sd 2:0:0:0: [sdb] tag#0 CDB: Read(10)", 6,
                              (("SUBSYSTEM", "scsi"), ("DEVICE", "+scsi:2:0:0:0")))
                    + "garbage without a header\n"
                    + kmsg_line(2, 20, "caf\u00e9 \\ back\tslash", 6)
                    + "6,x,30,-;bad sequence number\n")
    reader = kmsg.KmsgReader(str(path), None, BOOT, None, 0.0, 1000, time.monotonic() + 10)
    with reader:
        records = list(reader.records())
    assert [r.seq for r in records] == [1, 2]
    assert records[0].fields == (("SUBSYSTEM", "scsi"), ("DEVICE", "+scsi:2:0:0:0"))
    assert records[1].message == "caf\u00e9 \\ back\tslash"
    assert reader.stats.malformed == 2
    assert reader.stats.cursor == kmsg.Cursor(BOOT, 2, str(path))


def test_a_file_that_is_no_kmsg_log_is_neither_hoarded_nor_fatal(tmp_path):
    path = tmp_path / "binary"
    path.write_bytes(b"\x00\xff" * (1 << 20) + b"\n" + kmsg_line(1, 10, "after the junk").encode())
    reader = kmsg.KmsgReader(str(path), None, BOOT, None, 0.0, 1000, time.monotonic() + 10)
    with reader:
        records = list(reader.records())
    assert [r.message for r in records] == ["after the junk"]
    assert reader.stats.malformed >= 1


def test_a_message_from_a_clock_ahead_of_ours_is_not_in_the_future(tmp_path):
    node = Node(tmp_path)
    node.log_message(RECORDED[17][3], ago=-86400)    # logged "tomorrow" (a log recorded on another machine)
    assert node.run(window=60.0).status is Status.DEGRADED
    assert node.state()["active"][0]["at"] <= time.time()


def test_epipe_is_counted_and_reading_goes_on():
    """SCRIPTED /dev/kmsg reads (pure logic): record 11, then EPIPE (the ring
    wrapped under us), then records 15 and 16, then EAGAIN (the end)."""
    script = [b"6,10,1000,-;old\n", b"6,11,1100,-;seen\n", BrokenPipeError(), b"3,15,1500,-;next\n SUBSYSTEM=block\n",
              b"6,16,1600,-;last\n", BlockingIOError()]

    def read():
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    cursor = kmsg.Cursor(BOOT, 10, "/dev/kmsg")
    reader = kmsg.KmsgReader("/dev/kmsg", cursor, BOOT, UPTIME, 3600.0, 1000, time.monotonic() + 10)
    reader._device = True      # sequence gaps count on the device only
    records = list(reader.records(kmsg.device_lines(read, reader.stats)))
    assert [(r.seq, r.message) for r in records] == [(11, "seen"), (15, "next"), (16, "last")]
    assert records[1].fields == (("SUBSYSTEM", "block"),)
    assert reader.stats.overwritten_reads == 1
    assert reader.stats.missed == 3                 # 12, 13, 14
    assert reader.stats.cursor.seq == 16 and not reader.stats.fresh


def test_missed_messages_are_said():
    read = kernel.ReadSummary(lines=5, missed=3, overwritten_reads=1)
    result = kernel.judge(State(), [], kernel.builtin_classes(), read, 3600.0)
    assert result.status is Status.OK
    assert "3 kernel messages were overwritten before they could be read" in result.reason
    assert result.facts["messages_missed"] == 3


# ---------------------------------------------------------------- judgement with windows

def test_read_only_remount_fails_until_the_filesystem_is_writable(tmp_path):
    node = Node(tmp_path)
    node.set(mounts="/dev/sda1 / ext4 rw,relatime 0 0\n/dev/sdb7 /data ext4 ro,relatime 0 0\n")
    node.log_message(RECORDED[4][3], ago=30)
    node.log_message(RECORDED[5][3], ago=30)
    node.log_message(RECORDED[0][3], prio=2, ago=30)
    failed = node.run()
    assert failed.status is Status.FAILED
    assert failed.reason.startswith('read_only_remount /data (sdb7) is still read-only at ')
    assert '"EXT4-fs (sdb7): Remounting filesystem read-only"' in failed.reason
    assert "fs_error sdb7 at" in failed.reason and "(+1 more)" in failed.reason
    assert failed.facts["filesystems_readonly"] == ("sdb7",)
    # repaired and remounted read-write: the remount is over; the fs errors' window is not
    node.set(mounts="/dev/sda1 / ext4 rw,relatime 0 0\n/dev/sdb7 /data ext4 rw,relatime 0 0\n")
    repaired = node.run()
    assert repaired.status is Status.DEGRADED and repaired.facts["filesystems_readonly"] == ()
    assert repaired.reason.startswith("fs_error sdb7")
    assert node.run(window=1.0).status is Status.OK


def test_read_only_remount_of_a_device_mapper_volume(tmp_path):
    node = Node(tmp_path)
    (node.root / "dev/mapper").mkdir()
    os.symlink("../dm-17", node.root / "dev/mapper/vg-data")
    node.set(mounts="/dev/mapper/vg-data /var/lib/condor/execute xfs ro,noatime 0 0\n")
    node.log_message(RECORDED[1][3], prio=2, ago=7200)
    result = node.run(lookback=86400.0)
    # two hours later, past the window: still read-only, so still failed
    assert result.status is Status.FAILED
    assert "/var/lib/condor/execute (dm-17) is still read-only" in result.reason


def test_read_only_remount_of_an_unmapped_filesystem_uses_the_window(tmp_path):
    node = Node(tmp_path)
    node.log_message(RECORDED[2][3], prio=6, ago=100)
    result = node.run()
    assert result.status is Status.FAILED
    assert "sdd: not in the mount table, read-only remount within 1 h" in result.reason
    assert node.run(window=50.0).status is Status.OK


@pytest.mark.parametrize("index,status", [(17, Status.DEGRADED), (12, Status.DEGRADED), (19, Status.FAILED),
                                          (20, Status.OK), (15, Status.OK), (7, Status.FAILED)])
def test_windows(tmp_path, index, status):
    node = Node(tmp_path)
    cls, _, _, text, _ = RECORDED[index]
    node.log_message(text, prio=PRIO[cls], ago=600)
    result = node.run(window=3600.0)
    assert result.status is status
    if status is not Status.OK:
        assert result.reason.startswith(cls) and text[:40] in result.reason
    assert node.run(window=300.0).status is Status.OK     # the window has passed


def test_fatal_xid_fails_naming_the_gpu(tmp_path):
    node = Node(tmp_path)
    node.log_message(RECORDED[24][3], prio=4)      # Xid 31: an application's fault
    assert node.run().status is Status.OK
    node.log_message(RECORDED[21][3], prio=4)      # Xid 79
    node.log_message(RECORDED[22][3], prio=4)
    result = node.run()
    assert result.status is Status.FAILED
    assert result.reason.startswith("gpu_xid GPU 0000:18:00")
    assert result.facts["gpus_failed"] == ("0000:18:00",)
    assert counts(result)["gpu_xid"] == 3


def test_a_fatal_xid_fails_the_gpu_probe_too_even_when_the_gpu_is_gone(tmp_path):
    """The GPU probe reads the kernel probe's remembered events (system/kernel_events.py).
    The recorded tree has no GPU at all: a GPU fallen off the bus may vanish from the
    PCI bus and nvidia-smi, and the GPU probe alone would say "no GPU" (skipped)."""
    from startd_health.probes.gpu import GpuProbe

    node = Node(tmp_path)

    def gpu(**settings):
        ctx = make_context("gpu", scratch_root=str(node.scratch), system_root=str(node.root), **settings)
        return GpuProbe().run(ctx)

    assert gpu().reason == "no GPU on this node" and gpu().status is Status.SKIPPED    # as test_gpu.py says
    node.log_message(RECORDED[24][3], prio=4)      # Xid 31: an application's fault, not the GPU's
    node.run()
    assert gpu().status is Status.SKIPPED
    node.log_message(RECORDED[21][3], prio=4, ago=120)   # Xid 79
    node.run()
    failed = gpu()
    assert failed.status is Status.FAILED
    assert failed.reason.startswith("GPU 0000:18:00: Xid 79 in the kernel log at ")
    assert failed.reason.endswith("; no GPU on this node")
    assert gpu(kernel_window=60.0).status is Status.SKIPPED                        # the window has passed
    node.set(boot="9d7e1c52-0d55-4a43-8d1e-2c8f6c4f0b22")                        # rebooted: the GPU was reset
    assert gpu().status is Status.SKIPPED


def test_active_events_are_bounded(tmp_path):
    node = Node(tmp_path)
    for index in range(kernel.MAX_ACTIVE_EVENTS + 20):
        node.log_message(f"INFO: task worker{index}:{index} blocked for more than 120 seconds.", ago=60)
    result = node.run()
    assert result.status is Status.DEGRADED and "(+63 more)" in result.reason
    assert len(node.state()["active"]) == kernel.MAX_ACTIVE_EVENTS
    assert counts(result)["hung_task"] == kernel.MAX_ACTIVE_EVENTS + 20


def test_an_unreadable_state_file_is_a_fresh_start(tmp_path):
    node = Node(tmp_path)
    node.log_message(RECORDED[15][3])
    node.run()
    (node.scratch / "kernel" / kernel.STATE_FILE).write_text("{not json")
    assert "fresh start: no saved position" in node.run().reason


# ---------------------------------------------------------------- publishing

def test_cron_ad_and_metrics(tmp_path):
    node = Node(tmp_path)
    hostile = 'EXT4-fs (sdb7): Remounting filesystem read-only"\nStartdHealthOk = true'
    node.log_message(hostile, prio=2)
    node.log_message(RECORDED[15][3])
    result = node.run()
    report = RunReport([result])
    verdict = verdict_of(report.results)
    ad = parse_cron_output(render(report, verdict, time.time()))
    assert ad["StartdHealthOk"] is False and ad["StartdHealthKernelStatus"] == "failed"
    assert ad["StartdHealthKernelEventsTotal_oom_kill"] == 1
    assert ad["StartdHealthKernelEventsTotal_mce"] == 0
    assert ad["StartdHealthKernelReadOnlyRemountLastMessage"].startswith("EXT4-fs (sdb7): Remounting filesystem")
    assert 'read-only" StartdHealthOk = true' in ad["StartdHealthKernelReason"]    # one quoted string, no attribute

    from startd_health.monitor.metrics import exposition
    text = exposition(report.results, verdict).decode()
    assert 'startd_health_kernel_events_total{class="oom_kill"} 1.0' in text
    assert 'startd_health_kernel_events_total{class="gpu_xid"} 0.0' in text
    assert "# TYPE startd_health_kernel_events_total counter" in text
    assert 'startd_health_kernel_last_event_timestamp_seconds{class="oom_kill"}' in text
    assert 'startd_health_kernel_filesystem_readonly{filesystem="sdb7"} 1.0' in text
    assert "startd_health_kernel_lines_read 2.0" in text and "startd_health_kernel_messages_missed 0.0" in text
    assert "Remounting" not in text                  # free text stays out of labels
    if shutil.which("promtool"):   # Prometheus' own linter, when installed (./dev test installs it)
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_check_table_shows_counted_classes_and_times(tmp_path):
    from startd_health.monitor.terminal import table
    node = Node(tmp_path)
    node.log_message(RECORDED[15][3], ago=0)
    result = node.run()
    row = table([result], verdict_of([result]), time.time(), colour=False).splitlines()[1]
    assert "events[oom_kill]=1 total" in row and "events[mce]" not in row    # counters at 0 are left out
    assert re.search(r"last_event\[oom_kill\]=20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", row), row


# ---------------------------------------------------------------- the real /dev/kmsg (read-only)

def _kmsg_readable():
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _kmsg_readable(), reason="/dev/kmsg is not readable here (dmesg_restrict, or no such device)")
def test_real_dev_kmsg_read_and_cursor():
    """This machine's kernel log, opened read-only: whole records in order, and
    a second read from the cursor hands out only what is newer."""
    boot = kmsg.boot_id()
    reader = kmsg.KmsgReader("/dev/kmsg", None, boot, kmsg.uptime(), 10 ** 7, 1_000_000, time.monotonic() + 20)
    with reader:
        records = list(reader.records())
    assert records, "an empty kernel log"
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(r.usec >= 0 and 0 <= r.level <= 7 for r in records)
    assert reader.stats.cursor.seq == seqs[-1] and reader.stats.cursor.boot_id == boot
    again = kmsg.KmsgReader("/dev/kmsg", reader.stats.cursor, boot, kmsg.uptime(), 3600.0, 1_000_000,
                            time.monotonic() + 20)
    with again:
        newer = list(again.records())
    assert all(r.seq > seqs[-1] for r in newer)
    assert not again.stats.fresh


@pytest.mark.skipif(not _kmsg_readable(), reason="/dev/kmsg is not readable here (dmesg_restrict, or no such device)")
def test_real_dev_kmsg_probe_run(tmp_path):
    ctx = make_context("kernel", scratch_root=str(tmp_path), lookback=float(7 * 86400))
    result = KernelProbe().run(ctx)
    assert result.status in (Status.OK, Status.DEGRADED, Status.FAILED), result.reason
    assert result.facts["lines_read"] > 0
    assert set(counts(result)) >= set(kernel.builtin_classes())


@pytest.mark.root
def test_an_unprivileged_reader_under_dmesg_restrict_is_skipped_with_what_to_do(tmp_path):
    """As a STARTD_CRON job runs: not root (uid 65534), no CAP_SYSLOG."""
    if os.geteuid() != 0:
        pytest.fail("needs root to run the probe as another user")
    if kmsg.dmesg_restricted() is not True or not os.path.exists("/dev/kmsg"):
        pytest.skip("kernel.dmesg_restrict is 0 here: an unprivileged account may read /dev/kmsg")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    code = ("import json, time\n"
            "from startd_health.core.runner import BudgetedContext\n"
            "from startd_health.probes.kernel import KernelProbe\n"
            f"r = KernelProbe().run(BudgetedContext('kernel', {probe_settings('kernel')!r}, time.monotonic() + 20))\n"
            "print(json.dumps({'status': r.status.value, 'reason': r.reason}))\n")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", code],
                          cwd="/", env={"PATH": "/usr/bin:/bin", "PYTHONPATH": PACKAGE_PARENT},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "skipped"
    assert out["reason"].startswith("cannot read /dev/kmsg as uid 65534: kernel.dmesg_restrict = 1")
    assert "set kernel.dmesg_restrict = 0" in out["reason"] and "STARTD_HEALTH_KERNEL_LOG" in out["reason"]
