"""The command line: the parser, built from the command table, and dispatch.

Only the command being run gets its options (its own knobs, grouped per
probe, each with its default) and only its module is imported; the other
commands are listed, not loaded.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, List, Optional, Sequence

from startd_health import __version__
from startd_health.cli.base import EXIT_CONFIG, EXIT_OK, require_packages
from startd_health.cli.commands import BY_NAME, COMMANDS, Command
from startd_health.cli.knobs import knob_groups, knobs_of
from startd_health.core.config import ConfigError

DESCRIPTION = "Health and benchmark probes for an HTCondor execute node."
EPILOG = """Every option --NAME has the HTCondor configuration variable STARTD_HEALTH_NAME
(e.g. --container-images is STARTD_HEALTH_CONTAINER_IMAGES); an option given
here wins over the configuration. `startd-health COMMAND --help` lists the
knobs COMMAND reads. The startd runs `startd-health-cron`, which is
`startd-health cron` that prints a complete (unhealthy) ad even when its own
arguments are wrong."""

KNOB_OPTIONS = ("Each knob option --NAME overrides the HTCondor configuration variable STARTD_HEALTH_NAME "
                "(--container-images: STARTD_HEALTH_CONTAINER_IMAGES).")

# condor tools spell these with one dash
SINGLE_DASH = {"-help": "--help", "-version": "--version"}


def command_list(indent: str = "  ") -> str:
    width = max(len(c.name) for c in COMMANDS)
    return "\n".join(f"{indent}{c.name:<{width}}  {c.help}" for c in COMMANDS)


def _module(command: Command) -> Any:
    return importlib.import_module(f"startd_health.cli.{command.module}")


def _help(knob: Any) -> str:
    # argparse %-formats help texts; the backticks are for the README
    return f"{knob.help} (default: {knob.default_label})".replace("%", "%%").replace("`", "")


def add_command(sub: Any, common: argparse.ArgumentParser, command: Command) -> argparse.ArgumentParser:
    """The running command's parser: its arguments and its knobs, one section per group."""
    module = _module(command)
    parser = sub.add_parser(command.name, parents=[common], help=command.help,
                            description=getattr(module, "DESCRIPTION", command.help),
                            epilog=KNOB_OPTIONS if command.knobs else None)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    groups = knob_groups(command.knobs) if command.knobs else []
    for group in groups:
        section = parser.add_argument_group(f"{group.title} knobs")
        for knob in group.knobs:
            section.add_argument(knob.flag, dest=knob.dest, metavar=knob.metavar, help=_help(knob))
    parser.set_defaults(func=module.main, knobs=knobs_of(groups), command_entry=command)
    return parser


def make_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only `command` (the one on the command line) is fully built."""
    def common_options(default: Any) -> argparse.ArgumentParser:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("-d", "--debug", action="store_true", default=default,
                            help="log debugging messages to stderr")
        common.add_argument("--no-condor-config", action="store_true", default=default,
                            help="ignore HTCondor's configuration (use defaults and options only)")
        return common

    # Accepted before and after the command. The command's copy has no default
    # of its own: otherwise it would overwrite `startd-health --no-condor-config cron`'s.
    common = common_options(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="startd-health", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common_options(False)])
    parser.add_argument("-V", "--version", action="version", version=f"startd-health {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for entry in COMMANDS:
        if entry.name == command:
            add_command(sub, common, entry)
        else:  # listed, not loaded
            sub.add_parser(entry.name, help=entry.help, add_help=False)
    return parser


def command_in(argv: Sequence[str]) -> Optional[str]:
    """The command named on the command line: the first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in BY_NAME else None
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_in: List[str] = list(sys.argv[1:] if argv is None else argv)
    args_in = [SINGLE_DASH.get(arg, arg) for arg in args_in]
    command = command_in(args_in)
    if command is not None and (set(BY_NAME[command].knobs) & {"periodic probes", "all"} or command == "probes"):
        from startd_health.cli.base import learn_dynamic_probes
        learn_dynamic_probes(args_in)
    parser = make_parser(command)
    args = parser.parse_args(args_in)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if getattr(args, "debug", False) else logging.WARNING,
                        format="startd-health: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print(f"startd-health: error: a command is required:\n{command_list()}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command_entry.needs:
            require_packages(f"startd-health {args.command}", args.command_entry.needs,
                             "use a Python that has the exporters' packages (the pilot zipapp does not bundle them)")
        return args.func(args)
    except ConfigError as exc:
        print(f"startd-health: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        return EXIT_OK
