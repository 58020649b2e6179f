"""Administrator commands that read a running mount: ``status``, ``locks`` and ``metrics``.

They talk to the daemon over its root-only, read-only control socket and read the kernel's
/proc/locks; none of them changes anything or touches the lock namespace.

:data:`SUBCOMMANDS` is the registry the command line dispatches on (name → function taking
the arguments after the name); every command runs inside one error boundary,
:func:`run_subcommand`, so each ends with one of these exit statuses:

* 0: done;
* 1: failed, with ``lockfs: REASON`` on stderr: no lockfs daemon answers at the mountpoint
  (not a lockfs mount, its daemon is gone, or not root), it is a directory inside a lockfs
  mount (the message names the mount and the command to run), the daemon refused the
  command, or the kernel's tables could not be read;
* 2: usage error (unknown command or option, missing argument);
* 3: the daemon was reached but gave no proper answer: it did not answer within the timeout,
  or its reply was empty, truncated or not JSON. It may be stuck; see docs/deploying.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .control import ControlError, NoProperAnswer, query, query_status
from .linux import ofd_holders, read_proc_locks
from .locks import format_table as format_lock_table
from .locks import lock_rows
from .metrics import prometheus_text
from .mounts import FSTYPE, entries_at, mount_holding, resolve
from .status import format_text
from .switchover import main as switchover_main

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_PROPER_ANSWER = 3

#: Seconds an admin command waits for the daemon's answer unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT = 10.0

Subcommand = Callable[[Sequence[str]], int]


def fail(message: str, status: int = EXIT_FAILURE) -> int:
    """Print ``lockfs: message`` on stderr; returns ``status``, the command's exit status."""
    print(f"lockfs: {message}", file=sys.stderr)
    return status


def summary(command: Subcommand) -> str:
    """The first line of a subcommand's docstring: its one-line description in ``--help``."""
    return (command.__doc__ or "").strip().partition("\n")[0]


#: What argparse would take for a negative number rather than an option.
_NUMBER = re.compile(r"-\d+(\.\d*)?|-\.\d+")


class CommandParser(argparse.ArgumentParser):
    """An argument parser that names an unknown option before a missing argument.

    argparse checks for missing arguments first, so a mistyped option alone (``lockfs status
    --jsn``) would be reported as "the following arguments are required: mountpoint".
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Every option string added, ``-h`` and ``--help`` included.
        self.known_options: set[str] = set()
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.known_options.update(action.option_strings)
        return action

    def unknown_options(self, argv: Sequence[str]) -> list[str]:
        """The arguments before ``--`` that look like options this parser does not have (a
        long option may be abbreviated, as argparse allows; short ones may be clustered)."""
        unknown = []
        for arg in argv:
            if arg == "--":
                break
            if not arg.startswith("-") or arg == "-" or _NUMBER.fullmatch(arg):
                continue
            name = arg.partition("=")[0] if arg.startswith("--") else arg[:2]
            if name in self.known_options or (
                arg.startswith("--") and any(o.startswith(name) for o in self.known_options)
            ):
                continue
            unknown.append(arg)
        return unknown

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """``parse_args``, but unknown options are the error even where an argument is missing
        too (usage error, exit status 2)."""
        unknown = self.unknown_options(argv)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return self.parse_args(argv)


def subcommand_parser(name: str, command: Subcommand) -> CommandParser:
    """The argument parser of ``lockfs NAME``, described by ``command``'s docstring (plain
    text: it is shown as is by ``--help``)."""
    return CommandParser(prog=f"lockfs {name}", description=inspect.cleandoc(command.__doc__ or ""))


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up (exit status 3) if the daemon has not answered by then "
        f"(default {DEFAULT_TIMEOUT:g})",
    )


def run_subcommand(command: Subcommand, argv: Sequence[str]) -> int:
    """The error boundary of every subcommand: a message and an exit status, no traceback."""
    try:
        return command(argv)
    except BrokenPipeError:  # the reader went away (lockfs metrics | head): no message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit flush does not fail again
        os.close(devnull)
        return EXIT_FAILURE
    except NoProperAnswer as exc:
        return fail(str(exc), EXIT_NO_PROPER_ANSWER)
    except ControlError as exc:
        return fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:  # a bug: say so, in one line
        return fail(f"internal error: {type(exc).__name__}: {exc} (please report this)")


def _check_not_inside(mountpoint: str, command: str, prefix: str = "") -> None:
    """Refuse a directory inside a lockfs mount, naming the mount and the command to run: a
    daemon answers only for its mountpoint (and ``lockfs locks`` takes a path prefix)."""
    path = resolve(mountpoint)
    holding = mount_holding(path)
    if holding is None or holding.fstype != FSTYPE or holding.mountpoint == path:
        return
    instead = f"lockfs {command} {holding.mountpoint}"
    if command == "locks":
        instead += " " + os.path.join(os.path.relpath(path, holding.mountpoint), prefix)
    raise ControlError(
        f"{path} is inside the lockfs mount at {holding.mountpoint}: run `{instead.rstrip('/')}`"
    )


def _device(mountpoint: str) -> int:
    """The device number of the lockfs mounted at ``mountpoint``, from the mount table (a stat
    of the mount would wait for a stuck daemon, or fail with ENOTCONN on a dead one)."""
    entries = entries_at(mountpoint)
    if not entries or entries[-1].fstype != FSTYPE:
        raise ControlError(f"{mountpoint} is not a lockfs mount")
    return entries[-1].dev


def describe_log(log: str) -> str:
    """The status's ``log`` (where the daemon's next line goes) as ``lockfs status`` shows it:
    a log file appears with its first line, so one that is not there yet is said to be empty
    rather than named as if it could be read."""
    path, space, rest = log.partition(" ")  # log files are named without spaces
    if path.startswith("/") and not os.path.exists(path):
        return f"{path} (nothing logged yet){space}{rest}"
    return log


def status_main(argv: Sequence[str]) -> int:
    """Show the counters of the daemon serving MOUNTPOINT.

    Live entries, what was created and reclaimed since the mount, requests by type, faults
    (internal errors; each fails the mount closed), memory and the mount options in force.
    """
    parser = subcommand_parser("status", status_main)
    parser.add_argument("mountpoint")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    _add_timeout(parser)
    args = parser.parse(argv)
    _check_not_inside(args.mountpoint, "status")
    status = query_status(args.mountpoint, args.timeout)
    if args.json:
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print(format_text(dataclasses.replace(status, log=describe_log(status.log))))
    return 0


def locks_main(argv: Sequence[str]) -> int:
    """List every lock held or awaited on the mount at MOUNTPOINT.

    One row per lock: path (relative to the mount), kind (flock, posix, ofd), mode, whether it
    is held or awaited, the holder's pid and command, how many wait for it, and how long the
    file has been open.
    """
    parser = subcommand_parser("locks", locks_main)
    parser.add_argument("mountpoint")
    parser.add_argument("prefix", nargs="?", default="", help="only paths starting with this")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    _add_timeout(parser)
    args = parser.parse(argv)
    _check_not_inside(args.mountpoint, "locks", args.prefix.strip("/"))
    dev = _device(args.mountpoint)
    locks = read_proc_locks(dev)
    inos = " ".join(str(ino) for ino in sorted({lock.ino for lock in locks}))
    reply = query(args.mountpoint, f"nodes {inos}", args.timeout)
    if not isinstance(reply, dict):
        raise NoProperAnswer(f"the lockfs daemon of {args.mountpoint} sent bad node info")
    nodes = {int(ino): info for ino, info in reply.items()}
    ofd = [lock.ino for lock in locks if lock.kind == "ofd" and lock.pid is None]
    rows = lock_rows(locks, nodes, ofd_holders(dev, ofd) if ofd else None)
    prefix = args.prefix.strip("/")
    rows = [row for row in rows if row.path.startswith(prefix)]
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    elif rows:
        print(format_lock_table(rows))
    else:
        print("no locks held or awaited" + (f" under {prefix}" if prefix else ""))
    return 0


def metrics_main(argv: Sequence[str]) -> int:
    """Print the counters and locks of the mount at MOUNTPOINT in Prometheus text format."""
    parser = subcommand_parser("metrics", metrics_main)
    parser.add_argument("mountpoint")
    _add_timeout(parser)
    args = parser.parse(argv)
    _check_not_inside(args.mountpoint, "metrics")
    status = query_status(args.mountpoint, args.timeout)
    sys.stdout.write(prometheus_text(status, read_proc_locks(_device(args.mountpoint))))
    return 0


#: The admin commands by name. The command line adds ``mount``; a new command is one entry
#: here: a function that parses its arguments (with :func:`subcommand_parser`) and returns an
#: exit status, or raises ControlError/OSError for :func:`run_subcommand` to report.
SUBCOMMANDS: dict[str, Subcommand] = {
    "status": status_main,
    "locks": locks_main,
    "metrics": metrics_main,
    "switch-over": switchover_main,
}
