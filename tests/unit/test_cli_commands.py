"""The command line through the real CLI (`python -m startd_health`, the
cron entry point, the real zipapp): each command reads only its own knobs,
help and README come from the declarations, admins' condor-tool habits,
missing optional libraries."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from startd_health.cli import docs
from startd_health.cli.commands import COMMANDS

from .helpers import REPO, FakeCondor, parse_cron_output, run_cli

SESSIONS_ONLY = ["--no-condor-config", "--probes", "sessions"]


def flags_in(help_text: str):
    return set(re.findall(r"^  (--[a-z0-9-]+)", help_text, re.MULTILINE))


def run_without(packages, args, env, timeout=60):
    """The real CLI in a Python where `packages` cannot be imported (simulated:
    a None entry in sys.modules is how Python marks a module as absent), as
    on a pilot whose zipapp was built without them."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({list(packages)!r})); "
            "from startd_health.cli import run; run()")
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- one knob set per command

def test_a_pool_exporter_knob_never_breaks_the_cron_run(cli_env):
    """Before: every command parsed every knob, so a pool-exporter constraint
    that did not parse (or could not be checked without classad2) made each
    cron run an error ad."""
    cli_env["_CONDOR_STARTD_HEALTH_POOL_CONSTRAINT"] = 'GLIDEIN_Site == "X" &&'
    cli_env["_CONDOR_STARTD_HEALTH_POOL_INTERVAL"] = "often"
    cli_env["_CONDOR_STARTD_HEALTH_EXPORTER_LISTEN"] = "nowhere"        # the exporter's
    cli_env["_CONDOR_STARTD_HEALTH_HOOK_TIMEOUT"] = "soon"              # the hook's
    cli_env["_CONDOR_STARTD_HEALTH_BENCHMARKS_RUN"] = "hepscore"        # the benchmark job's
    proc = run_cli(SESSIONS_ONLY, cli_env, entry="cron")
    assert proc.returncode == 0, proc.stderr
    ad = parse_cron_output(proc.stdout)
    assert "StartdHealthSessionsOk" in ad and "configuration error" not in ad["StartdHealthReason"]
    # ... while the pool exporter, which reads it, names it
    proc = run_cli(["pool-exporter", "--no-condor-config", "--pool-collectors", "cm.example.org"], cli_env)
    assert proc.returncode == 2 and proc.stderr.startswith("startd-health: error: STARTD_HEALTH_POOL_")


def test_the_pool_constraint_without_classad2_does_not_break_cron(cli_env):
    cli_env["_CONDOR_STARTD_HEALTH_POOL_CONSTRAINT"] = 'GLIDEIN_Site == "X"'
    proc = run_without(["htcondor2", "htcondor"], ["cron", *SESSIONS_ONLY], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert parse_cron_output(proc.stdout)["StartdHealthOk"] in (True, False)
    assert "internal error" not in proc.stderr


@pytest.mark.parametrize("command, present, absent", [
    ("cron", {"--probes", "--deadline", "--textfile-dir", "--container-images", "--cvmfs-repositories",
              "--userns-user", "--force"},
     {"--pool-constraint", "--hook-timeout", "--benchmarks-run", "--exporter-listen"}),
    ("check", {"--probes", "--container-images", "--json"}, {"--textfile-dir", "--pool-listen", "--hook-timeout"}),
    ("exporter", {"--exporter-listen", "--exporter-tls-cert", "--container-images"},
     {"--deadline", "--textfile-dir", "--pool-listen", "--benchmarks-run"}),
    ("pool-exporter", {"--pool-collectors", "--pool-constraint", "--exporter-tls-key"},
     {"--probes", "--container-images", "--exporter-listen", "--state-dir"}),
    ("hook", {"--hook-timeout", "--state-dir", "--container-images", "--container-period", "--cvmfs-repositories"},
     {"--pool-constraint", "--cvmfs-repo-timeout", "--probes", "--deadline"}),
    ("benchmark", {"--state-dir", "--benchmarks-run", "--benchmarks-period"}, {"--container-images", "--probes"}),
])
def test_each_command_lists_only_the_knobs_it_reads(cli_env, command, present, absent):
    proc = run_cli([command, "--help"], cli_env)
    assert proc.returncode == 0, proc.stderr
    flags = flags_in(proc.stdout)
    assert present <= flags, present - flags
    assert not absent & flags, absent & flags


def test_every_command_names_knobs_that_exist():
    from startd_health.cli.knobs import knob_groups
    for command in COMMANDS:
        assert command.knobs == () or knob_groups(command.knobs), command.name


def test_inside_script_reads_its_three_knobs(cli_env):
    proc = run_cli(["inside-script", "--help"], cli_env)
    knobs = flags_in(proc.stdout) - {"--help", "--debug", "--no-condor-config"}
    assert knobs == {"--container-binds", "--cvmfs-repositories", "--cvmfs-root"}
    assert "PreCmd" not in proc.stdout


def test_help_is_grouped_per_probe_with_defaults(cli_env):
    text = run_cli(["cron", "--help"], cli_env).stdout
    sections = re.findall(r"^(\S[^:\n]*) knobs:$", text, re.MULTILINE)
    assert sections == ["general", "cron output", "site checks", "container probe", "cvmfs probe", "execute probe",
                        "gpu probe", "kernel probe", "sessions probe",
                        "userns probe"]
    flat = " ".join(text.split())
    assert "--deadline SECONDS the whole run ends within this many seconds; keep it below the cron period " \
           "(default: 150)" in flat
    assert "--container-flags FLAGS" in flat and "(default: --ipc --pid --contain)" in flat
    assert "(default: none)" in flat and "`" not in text


def test_a_probe_knob_is_not_parsed_by_a_command_that_does_not_read_it(cli_env):
    cli_env["_CONDOR_STARTD_HEALTH_CONTAINER_IMAGES"] = "el9="   # invalid: no path
    proc = run_cli(["benchmark", "--no-condor-config", "--help"], cli_env)
    assert proc.returncode == 0
    proc = run_cli(["config", "--no-condor-config", "DEADLINE"], cli_env)
    assert (proc.returncode, proc.stdout) == (0, "150\n"), proc.stderr


# ---------------------------------------------------------------- the command list exists once

def test_no_command_lists_every_command(cli_env):
    proc = run_cli([], cli_env)
    assert proc.returncode == 2
    for command in COMMANDS:
        assert re.search(rf"^  {re.escape(command.name)} ", proc.stderr, re.MULTILINE), command.name


def test_top_level_help_lists_every_command(cli_env):
    out = run_cli(["--help"], cli_env).stdout
    for command in COMMANDS:
        assert f"    {command.name} " in out


def test_readme_tables_are_generated_from_the_declarations():
    with open(os.path.join(REPO, "README.md")) as handle:
        readme = handle.read()
    assert docs.updated(readme) == readme, "README.md is out of date: run python -m startd_health.cli.docs"
    proc = subprocess.run([sys.executable, "-m", "startd_health.cli.docs", "--check", os.path.join(REPO, "README.md")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_docs_check_fails_on_a_stale_readme(tmp_path):
    with open(os.path.join(REPO, "README.md")) as handle:
        stale = handle.read().replace("| `STARTD_HEALTH_DEADLINE` | `150` |", "| `STARTD_HEALTH_DEADLINE` | `120` |")
    path = tmp_path / "README.md"
    path.write_text(stale)
    proc = subprocess.run([sys.executable, "-m", "startd_health.cli.docs", "--check", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "out of date" in proc.stderr
    subprocess.run([sys.executable, "-m", "startd_health.cli.docs", str(path)], check=True, timeout=60)
    assert "| `STARTD_HEALTH_DEADLINE` | `150` |" in path.read_text()


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory):
    out = tmp_path_factory.mktemp("pyz") / "startd-health.pyz"
    subprocess.run([sys.executable, os.path.join(REPO, "packaging", "pilot", "build_zipapp.py"), "--output", str(out)],
                   check=True, capture_output=True, timeout=120)
    return str(out)


def run_zipapp(zipapp, args, env):
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return subprocess.run([python, "-S", zipapp, *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_the_zipapp_runs_every_command_it_lists(zipapp, cli_env):
    """Before, its hand-written list lacked inside-script and pool-exporter:
    they ran a cron instead."""
    proc = run_zipapp(zipapp, ["inside-script", "--no-condor-config"], cli_env)
    assert proc.returncode == 0 and proc.stdout.startswith("#!/bin/sh"), proc.stderr
    proc = run_zipapp(zipapp, ["pool-exporter", "--help"], cli_env)
    assert proc.returncode == 0 and "--pool-collectors" in flags_in(proc.stdout)
    assert "--container-images" not in flags_in(proc.stdout)
    for command in COMMANDS:
        proc = run_zipapp(zipapp, [command.name, "--help"], cli_env)
        assert proc.returncode == 0 and f"usage: startd-health {command.name}" in proc.stdout, command.name
    proc = run_zipapp(zipapp, ["-version"], cli_env)
    assert proc.returncode == 0 and proc.stdout.startswith("startd-health ")


# ---------------------------------------------------------------- what admins expect

def test_single_dash_help_and_version_as_condor_tools(cli_env):
    proc = run_cli(["-version"], cli_env)
    assert proc.returncode == 0 and re.match(r"^startd-health \d", proc.stdout)
    proc = run_cli(["-help"], cli_env)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: startd-health")
    proc = run_cli(["cron", "-help"], cli_env)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: startd-health cron")


def test_config_names_print_just_their_values(cli_env):
    cli_env["_CONDOR_STARTD_HEALTH_CONTAINER_IMAGES"] = "el9=/i/el9.sif"
    proc = run_cli(["config", "--no-condor-config", "deadline", "STARTD_HEALTH_CONTAINER_IMAGES"], cli_env)
    assert (proc.returncode, proc.stdout) == (0, "150\nel9=/i/el9.sif\n"), proc.stderr
    proc = run_cli(["config", "--no-condor-config", "-v", "DEADLINE"], cli_env)
    assert proc.stdout == "STARTD_HEALTH_DEADLINE = 150    # default\n"


def test_config_unknown_name_is_one_line_and_non_zero(cli_env):
    proc = run_cli(["config", "--no-condor-config", "DEADLINE", "NO_SUCH_KNOB"], cli_env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["startd-health: error: no such knob: STARTD_HEALTH_NO_SUCH_KNOB "
                                        "(`startd-health config` lists them all)"]


def test_config_shows_what_derived_defaults_resolve_to(cli_env, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runtime = bin_dir / "apptainer"
    runtime.write_text("#!/bin/sh\nexit 0\n")   # a stand-in: only found, never run
    runtime.chmod(0o755)
    cli_env["PATH"] = f"{bin_dir}:{cli_env['PATH']}"
    cli_env["_CONDOR_STARTD_HEALTH_CONTAINER_IMAGES"] = "el9=/i/el9.sif, el8=/i/el8.sif"
    proc = run_cli(["config", "--no-condor-config", "CONTAINER_RUNTIME", "GPU_NV_IMAGE", "USERNS_USER"], cli_env)
    assert proc.returncode == 0, proc.stderr
    runtime_found, image, user = proc.stdout.splitlines()
    assert (runtime_found, image) == (str(runtime), "/i/el9.sif")
    assert user  # the running user, or the account root tests as
    full = run_cli(["config", "--no-condor-config"], cli_env).stdout
    assert f"STARTD_HEALTH_CONTAINER_RUNTIME" in full and f"= {runtime}    # default: found via PATH" in full


def test_pool_collectors_default_is_htcondor_collector_host():
    from startd_health.cli.knobs import knob_groups, knobs_of
    from startd_health.core.config import describe, load_config
    knobs = knobs_of(knob_groups(["pool"]))
    derived = {k.name: k.derive for k in knobs if k.derive}
    config = load_config(knobs, {}, FakeCondor(COLLECTOR_HOST="cm1.example.org, cm2.example.org"), derived, environ={})
    line = [l for l in describe(config, knobs) if l.startswith("STARTD_HEALTH_POOL_COLLECTORS")][0]
    assert line.endswith("= cm1.example.org, cm2.example.org    # default (HTCondor COLLECTOR_HOST)")
    config = load_config(knobs, {}, FakeCondor(), derived, environ={})
    line = [l for l in describe(config, knobs) if l.startswith("STARTD_HEALTH_POOL_COLLECTORS")][0]
    assert "default: none: HTCondor's COLLECTOR_HOST is not set" in line


# ---------------------------------------------------------------- missing optional libraries

def test_exporter_without_apscheduler_is_a_config_error(cli_env):
    proc = run_without(["apscheduler"], ["exporter", "--no-condor-config"], cli_env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]]
    assert proc.stderr.startswith("startd-health: error: startd-health exporter needs the Python package apscheduler")


def test_pool_exporter_without_the_bindings_is_a_config_error(cli_env):
    proc = run_without(["htcondor2", "classad2"], ["pool-exporter", "--no-condor-config"], cli_env)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "startd-health pool-exporter needs the Python package htcondor2" in proc.stderr


def test_textfile_dir_without_prometheus_client_is_a_config_error_with_a_complete_ad(cli_env, tmp_path):
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "from startd_health.cli import cron_main; cron_main()")
    proc = subprocess.run([sys.executable, "-c", code, *SESSIONS_ONLY, "--textfile-dir", str(textdir)],
                          env=cli_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is False
    assert ad["StartdHealthReason"].startswith("configuration error: STARTD_HEALTH_TEXTFILE_DIR (command line "
                                               "--textfile-dir) needs the Python package prometheus_client")
    assert "internal error" not in proc.stderr and not os.listdir(textdir)


def test_textfile_is_written_by_the_cron_run(cli_env, tmp_path):
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    proc = run_cli([*SESSIONS_ONLY, "--textfile-dir", str(textdir)], cli_env, entry="cron")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(textdir) == ["startd_health.prom"]   # atomic: no temporary file left
    path = textdir / "startd_health.prom"
    assert oct(path.stat().st_mode & 0o777) == "0o644" and 'startd_health_probe_success{probe="sessions"} 1.0' in path.read_text()


# ---------------------------------------------------------------- the periodic path stays cheap

def test_the_cron_entry_imports_nothing_it_does_not_need(cli_env, tmp_path):
    code = ("import sys, os; from startd_health.cli import cron_main; "
            "first = sorted(m for m in sys.modules if m.startswith('startd_health')); "
            "sys.stderr.write(repr(first) + '\\n'); "
            "exit_ = os._exit; os._exit = lambda c: (sys.stderr.write(repr(sorted(sys.modules)) + '\\n'), exit_(c)); "
            "cron_main()")
    proc = subprocess.run([sys.executable, "-c", code, *SESSIONS_ONLY], env=cli_env, capture_output=True, text=True,
                          timeout=60)
    first, loaded = (eval(line) for line in proc.stderr.splitlines()[-2:])
    assert first == ["startd_health", "startd_health.cli"]
    other_commands = {f"startd_health.cli.{c.module}" for c in COMMANDS if c.name != "cron"}
    assert not other_commands & set(loaded)
    for module in ("startd_health.monitor.pool_knobs", "startd_health.monitor.exporter_listen",
                   "startd_health.cli.docs", "prometheus_client", "apscheduler", "numpy"):
        assert module not in loaded


@pytest.mark.bindings
@pytest.mark.parametrize("where", ["before", "after"])
def test_no_condor_config_works_before_and_after_the_command(tmp_path, cli_env, where):
    """`startd-health --no-condor-config cron` was parsed and then silently
    overwritten by the command's own default (found in the root filesystems)."""
    pytest.importorskip("htcondor2")
    (tmp_path / "condor_config").write_text("STARTD_HEALTH_DEADLINE = 42\n")
    cli_env["CONDOR_CONFIG"] = str(tmp_path / "condor_config")
    args = ["--no-condor-config", "config", "DEADLINE"] if where == "before" else ["config", "--no-condor-config",
                                                                                     "DEADLINE"]
    assert run_cli(["config", "DEADLINE"], cli_env).stdout.strip() == "42"
    proc = run_cli(args, cli_env)
    assert proc.returncode == 0 and proc.stdout.strip() == "150", proc.stderr
