#!/usr/bin/env python3
"""What the kernel events probe costs on a big kernel log (target: 100 000 lines in under 0.5 s).

Writes a file in /dev/kmsg's format with --lines records: the texts of this
machine's own kernel log (read-only from /dev/kmsg when readable, else a
built-in sample of ordinary boot messages), cycled, with one in --event-every
replaced by a message that a rule classifies (read-only remount, EXT4 error,
I/O error, OOM kill, hung task, MCE, Xid), so that both the miss path (one
combined regex search) and the hit path are paid. Then, in this process,
--runs times each (median wall and CPU time):

  - fresh: the probe's whole run (KernelProbe.run: read, classify, judge,
    save the state) on a fresh start whose look-back covers every line;
  - caught up: the next run, cursor at the end: every record is read and
    skipped as seen (what a periodic run on /dev/kmsg pays for the ring buffer);
  - /dev/kmsg: a fresh run on this machine's real log (read-only), when readable.

usage:  benchmarks/kmsg_cost.py [--lines 100000] [--runs 5] [--event-every 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

from startd_health.core.runner import BudgetedContext  # noqa: E402
from startd_health.probes.kernel import KernelProbe  # noqa: E402
from startd_health.system import kmsg  # noqa: E402

ORDINARY = [
    "Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0)",
    "Command line: BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=0d4f8e2c ro quiet",
    "x86/fpu: Supporting XSAVE feature 0x001: 'x87 floating point registers'",
    "e820: BIOS-provided physical RAM map:",
    "ACPI: RSDP 0x00000000000F05B0 000024 (v02 BOCHS )",
    "pci 0000:00:02.0: [1af4:1000] type 00 class 0x020000",
    "sd 0:0:0:0: [sda] 41943040 512-byte logical blocks: (21.5 GB/20.0 GiB)",
    "EXT4-fs (sda1): mounted filesystem 5d3a0f8e-2f4c-4c8b-9d0e-3f8f2d7c1b6a r/w with ordered data mode.",
    "systemd[1]: Started systemd-journald.service - Journal Service.",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
    "audit: type=1400 audit(1701600000.123:42): apparmor=\"STATUS\" operation=\"profile_load\"",
    "overlayfs: idmapped layers are currently not supported",
]
EVENTS = [
    "EXT4-fs (sdb7): Remounting filesystem read-only",
    "EXT4-fs error (device sdb7): ext4_get_branch:171: inode #8: block 30343695: comm jbd2/sdb7-8: invalid block",
    "blk_update_request: I/O error, dev sde, sector 4054268520 op 0x1:(WRITE) flags 0x100000 phys_seg 62 prio class 0",
    "Out of memory: Killed process 1669 (python3) total-vm:105068kB, anon-rss:9792kB, file-rss:10972kB",
    "INFO: task cryptomgr_test:391009 blocked for more than 120 seconds.",
    "mce: [Hardware Error]: Machine check events logged",
    "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
]


def machine_texts():
    """This machine's kernel messages (read-only), else the built-in sample."""
    try:
        reader = kmsg.KmsgReader(kmsg.DEFAULT_LOG, None, kmsg.boot_id(), None, 0.0, 100_000, time.monotonic() + 10)
        with reader:
            texts = [r.message for r in reader.records() if r.facility == 0 and r.message]
    except OSError:
        texts = []
    return (texts or ORDINARY), ("this machine's /dev/kmsg" if texts else "a built-in sample")


def write_log(path, lines, event_every, texts):
    uptime = 1_000_000.0
    with open(path, "w") as handle:
        for seq in range(1, lines + 1):
            if event_every and seq % event_every == 0:
                text, prio = EVENTS[(seq // event_every) % len(EVENTS)], 3
            else:
                text, prio = texts[seq % len(texts)], 6
            escaped = "".join(c if " " <= c < "\x7f" and c != "\\" else f"\\x{ord(c):02x}" for c in text) \
                if not text.isascii() or "\\" in text else text
            handle.write(f"{prio},{seq},{int((uptime - lines + seq) * 1e6)},-;{escaped}\n")
            if seq % 7 == 0:
                handle.write(" SUBSYSTEM=block\n DEVICE=b8:16\n")
    return uptime


def settings(log):
    found = {"period": KernelProbe.default_period, "timeout": 60.0}
    found.update({k.name[len("KERNEL_"):].lower(): k.default for k in KernelProbe.knobs})
    found.update(log=log, lookback=7 * 86400.0, max_lines=10_000_000)
    return found


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run_once(log, state, system_root="/"):
    ctx = BudgetedContext("kernel", settings(log), time.monotonic() + 60, scratch_root=state, system_root=system_root)
    return KernelProbe().run(ctx)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--event-every", type=int, default=100, help="one classified message in N (0: none)")
    args = parser.parse_args()
    texts, origin = machine_texts()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "kmsg")
        uptime = write_log(log, args.lines, args.event_every, texts)
        # a recorded tree for /proc/uptime and the boot id, so that the look-back covers every line
        root = os.path.join(tmp, "root")
        os.makedirs(os.path.join(root, "proc/sys/kernel/random"))
        os.makedirs(os.path.join(root, "proc/self"))
        with open(os.path.join(root, "proc/uptime"), "w") as handle:
            handle.write(f"{uptime + 1:.2f} 0.00\n")
        with open(os.path.join(root, "proc/sys/kernel/random/boot_id"), "w") as handle:
            handle.write("bench\n")
        with open(os.path.join(root, "proc/self/mounts"), "w") as handle:
            handle.write("/dev/sda1 / ext4 rw 0 0\n")
        size = os.path.getsize(log)
        print(f"{args.lines} records ({size / 2**20:.1f} MiB, texts from {origin}, one event in "
              f"{args.event_every or 'none'}), Python {sys.version.split()[0]}, median of {args.runs} runs")
        rows = []
        fresh, caught = [], []
        for index in range(args.runs):
            state = os.path.join(tmp, f"state{index}")
            fresh.append(timed(lambda: run_once(log, state, root)))
            caught.append(timed(lambda: run_once(log, state, root)))
        rows.append(("fresh start: read + classify + judge + save", fresh))
        rows.append(("caught up: every record skipped as seen", caught))
        try:
            os.close(os.open(kmsg.DEFAULT_LOG, os.O_RDONLY | os.O_NONBLOCK))
            real = [timed(lambda: run_once(kmsg.DEFAULT_LOG, os.path.join(tmp, f"real{i}"))) for i in range(args.runs)]
            rows.append((f"this machine's /dev/kmsg ({real[0][2].facts.get('lines_read')} records), fresh", real))
        except OSError as exc:
            print(f"(/dev/kmsg not readable: {exc.strerror})")
        for label, samples in rows:
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            print(f"  {label:<58} wall {wall:.3f} s   CPU {cpu:.3f} s")
        result = fresh[-1][2]
        counted = {dict(m.labels)["class"]: int(m.value) for m in result.measurements if m.name == "events"}
        print(f"  classified on the fresh start: {counted}; status {result.status.value}")
        worst = statistics.median(s[0] for s in fresh)
        print(f"  target: {args.lines} lines under 0.5 s -> {'met' if worst < 0.5 else 'MISSED'} ({worst:.3f} s)")


if __name__ == "__main__":
    main()
