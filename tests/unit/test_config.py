"""Configuration: parsing, precedence, and one clear error line for bad values."""

import pytest

from startd_health.core.config import (ConfigError, Knob, load_config, parse_bool, parse_list,
                            parse_seconds)

from .helpers import FakeCondor, run_cli


KNOBS = [Knob("DEADLINE", parse_seconds, 150.0, "h"), Knob("PROBES", parse_list, None, "h"),
         Knob("FLAG", parse_bool, False, "h")]


def test_parsers():
    assert parse_seconds("90") == 90 and parse_seconds("5m") == 300 and parse_seconds(" 1.5h ") == 5400
    assert parse_list("a, b  c,,d") == ("a", "b", "c", "d")
    assert parse_bool("Yes") is True and parse_bool("FALSE") is False
    for bad in ("", "5 minutes", "-1", "1d"):
        with pytest.raises(ValueError):
            parse_seconds(bad)


def test_precedence_flag_over_environment_over_condor_over_default():
    condor = FakeCondor(STARTD_HEALTH_DEADLINE="60", STARTD_HEALTH_PROBES="container")
    config = load_config(KNOBS, {"DEADLINE": None}, condor, environ={"_CONDOR_STARTD_HEALTH_PROBES": "x y"})
    assert config["DEADLINE"] == 60 and config.source("DEADLINE") == "HTCondor config STARTD_HEALTH_DEADLINE"
    assert config["PROBES"] == ("x", "y") and config.source("PROBES") == "environment _CONDOR_STARTD_HEALTH_PROBES"
    assert config["FLAG"] is False and config.source("FLAG") == "default"
    config = load_config(KNOBS, {"DEADLINE": "2m"}, condor, environ={})
    assert config["DEADLINE"] == 120 and config.source("DEADLINE") == "command line --deadline"


def test_invalid_value_names_knob_value_and_source():
    with pytest.raises(ConfigError) as err:
        load_config(KNOBS, {}, FakeCondor(STARTD_HEALTH_FLAG="maybe"), environ={})
    assert str(err.value) == "STARTD_HEALTH_FLAG = 'maybe' (HTCondor config STARTD_HEALTH_FLAG): expected true or false"


def test_cli_bad_flag_value_is_one_line_and_exit_2(cli_env):
    proc = run_cli(["config", "--no-condor-config", "--deadline", "soon"], cli_env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "startd-health: error: STARTD_HEALTH_DEADLINE = 'soon' (command line --deadline): "
        "expected a duration in seconds (e.g. 90, 90s, 5m, 1h)"]


def test_cli_unknown_probe_and_too_short_deadline(cli_env):
    proc = run_cli(["config", "--no-condor-config", "--probes", "container,gpu9"], cli_env)
    assert proc.returncode == 2 and "unknown probe gpu9 (known: " in proc.stderr and "container" in proc.stderr
    proc = run_cli(["config", "--no-condor-config", "--deadline", "1"], cli_env)
    assert proc.returncode == 2 and "must be at least 5 seconds" in proc.stderr


def test_cli_environment_error_exits_2(cli_env):
    cli_env["_CONDOR_STARTD_HEALTH_CONTAINER_IMAGES"] = "el9="
    proc = run_cli(["config", "--no-condor-config"], cli_env)
    assert proc.returncode == 2
    assert "STARTD_HEALTH_CONTAINER_IMAGES = 'el9=' (environment _CONDOR_STARTD_HEALTH_CONTAINER_IMAGES): " \
           "image entry 'el9=' has no path" in proc.stderr


def test_config_command_shows_value_and_source(cli_env):
    proc = run_cli(["config", "--no-condor-config", "--container-images", "el9=/i/el9.sif"], cli_env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# HTCondor configuration: not used")
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert by_name["STARTD_HEALTH_CONTAINER_IMAGES"].endswith("= el9=/i/el9.sif    # command line --container-images")
    assert "= --ipc --pid --contain    # default" in by_name["STARTD_HEALTH_CONTAINER_FLAGS"]
    probes_line = by_name["STARTD_HEALTH_PROBES"]
    assert "container" in probes_line and probes_line.endswith("# default (probes enabled by default)")


def test_help_reads_like_a_condor_tool(cli_env):
    proc = run_cli(["--help"], cli_env)
    assert proc.returncode == 0 and "usage: startd-health" in proc.stdout and "STARTD_HEALTH_NAME" in proc.stdout
    proc = run_cli(["cron", "--help"], cli_env)
    assert "--container-images LIST" in proc.stdout


def test_cron_with_bad_config_still_prints_a_complete_unhealthy_ad(cli_env):
    from .helpers import parse_cron_output
    proc = run_cli(["--no-condor-config", "--deadline", "x"], cli_env, entry="cron")
    assert proc.returncode == 2
    ad = parse_cron_output(proc.stdout)
    assert ad["StartdHealthOk"] is False
    assert ad["StartdHealthReason"].startswith("configuration error: STARTD_HEALTH_DEADLINE = 'x'")


def test_cron_with_bad_arguments_still_prints_a_complete_unhealthy_ad(cli_env):
    from .helpers import parse_cron_output
    proc = run_cli(["--no-such-option"], cli_env, entry="cron")
    assert proc.returncode == 2
    assert parse_cron_output(proc.stdout)["StartdHealthOk"] is False


def test_without_bindings_the_config_comes_from_condor_config_val(tmp_path, cli_env):
    """A pilot's Python may lack the bindings: `condor_config_val -dump -expand` stands in.
    (The stand-in script prints what the real tool prints; the real tool is used in tests/e2e.)"""
    tool = tmp_path / "condor_config_val"
    tool.write_text('#!/bin/sh\n[ "$1 $2" = "-dump -expand" ] || exit 2\n'
                    'echo "# Configuration from machine: x"\necho "SPOOL = /var/lib/condor/spool"\n'
                    'echo "STARTD_HEALTH_DEADLINE = 42"\n')
    tool.chmod(0o755)
    (tmp_path / "condor_config").write_text("")
    cli_env.update(PATH=f"{tmp_path}:/usr/bin:/bin", CONDOR_CONFIG=str(tmp_path / "condor_config"))
    # -S: no site-packages, so no htcondor2/classad2, as on a bare pilot; the
    # package itself comes from its own directory, as from the pilot's zipapp
    import subprocess
    import sys

    from .helpers import PACKAGE_PARENT
    cli_env["PYTHONPATH"] = PACKAGE_PARENT
    proc = subprocess.run([sys.executable, "-S", "-m", "startd_health", "config"], env=cli_env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "read through condor_config_val" in proc.stdout
    assert "STARTD_HEALTH_DEADLINE                 = 42    # HTCondor config STARTD_HEALTH_DEADLINE" in proc.stdout \
        or "= 42    # HTCondor config STARTD_HEALTH_DEADLINE" in proc.stdout
    assert "/var/lib/condor/spool/startd_health    # default (HTCondor $(SPOOL)/startd_health)" in proc.stdout
