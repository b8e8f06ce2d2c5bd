"""system/: /proc reading under a root, and shipped programs run by path
(or, from a zipapp, by their source)."""

import os
import subprocess
import sys
import zipfile

from startd_health.system import procfs
from startd_health.system.programs import python_argv


def test_stat_of_a_command_name_with_blanks_and_parentheses(tmp_path):
    # As the kernel writes it for a process that named itself "a) (b"
    # (prctl PR_SET_NAME): split at the LAST ')', never at the first blank.
    text = "4242 (a) (b) S 1 4242 4242 0 -1 4194560 90 0 0 0 0 0 0 0 20 0 1 0 123456 1000 100 18446744073709551615\n"
    stat = procfs.parse_stat(text)
    assert stat == procfs.ProcessStat(4242, "S", 1, 123456, pgrp=4242, session=4242) and stat.alive
    assert procfs.parse_stat("garbage") is None
    (tmp_path / "proc" / "4242").mkdir(parents=True)
    (tmp_path / "proc" / "4242" / "stat").write_text(text.replace(" S ", " Z ", 1))
    assert procfs.read_stat(4242, str(tmp_path)).state == "Z"
    assert procfs.start_ticks(4242, str(tmp_path)) is None      # a zombie is no live process
    assert procfs.start_ticks(4243, str(tmp_path)) is None      # gone


def test_stat_of_this_process():
    me = procfs.read_stat(os.getpid())
    assert me.pid == os.getpid() and me.ppid == os.getppid() and me.alive
    assert procfs.start_ticks(os.getpid()) == me.start_ticks > 0
    assert procfs.cmdline_contains(os.getpid(), "python") and not procfs.cmdline_contains(os.getpid(), "no such marker")


def test_mount_fields_are_unescaped_in_mounts_and_mountinfo():
    assert procfs.unescape_mount_field(r"/my\040cvmfs\011x\134y") == "/my cvmfs\tx\\y"
    mounts = procfs.parse_mounts("cvmfs2 /cvmfs/a\\040b fuse ro 0 0\ntmpfs /cvmfs/a\\040b tmpfs rw 0 0\n")
    assert mounts == {"/cvmfs/a b": procfs.Mount("tmpfs", "/cvmfs/a b", "tmpfs")}   # the last one is visible
    info = procfs.parse_mountinfo("35 24 0:30 /a\\040b /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
                                  "not a mountinfo line\n")
    assert info == [procfs.MountInfo("/a b", "/sys/fs/cgroup", True, "cgroup2", ("rw", "nsdelegate"))]


def test_reading_under_a_recorded_root(tmp_path):
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "mounts").write_text("proc /proc proc rw 0 0\n")
    assert procfs.read_mounts(str(tmp_path)) == ({"/proc": procfs.Mount("proc", "/proc", "proc")}, "")
    mounts, error = procfs.read_mounts(str(tmp_path / "nothing"))
    assert mounts is None and error.startswith(f"cannot read {tmp_path}/nothing/proc/self/mounts: ")
    assert procfs.read_text(str(tmp_path), "/proc/self/mounts") == "proc /proc proc rw 0 0\n"
    assert procfs.read_text(str(tmp_path), "proc/absent") is None


def test_a_shipped_program_runs_by_path():
    argv = python_argv("startd_health.probes", "_clone_test.py", str(os.getuid()), str(os.getgid()))
    assert argv[1:3] == ["-I", "-S"] and os.path.isfile(argv[3]) and argv[3].endswith("probes/_clone_test.py")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    # ok, or the step that failed: never a traceback (it is a real file, linted and run as is)
    assert out.stdout.strip() == "ok" or out.returncode == 3 and ": " in out.stdout, out


def test_a_shipped_program_runs_from_a_zipapp_by_its_source(tmp_path, monkeypatch):
    """Simulated: a package imported from a zip file, as in a pilot's zipapp."""
    archive = tmp_path / "app.pyz"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_pkg/__init__.py", "")
        z.writestr("zipped_pkg/_hello.py", "import sys\nprint('hello', *sys.argv[1:])\n")
    monkeypatch.syspath_prepend(str(archive))
    argv = python_argv("zipped_pkg", "_hello.py", "from", "zip")
    assert argv[1:4] == ["-I", "-S", "-c"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.stdout == "hello from zip\n", out
    sys.modules.pop("zipped_pkg", None)
