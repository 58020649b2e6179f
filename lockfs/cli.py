"""The ``lockfs`` command line: explicit commands, and the mount form mount.fuse3 runs.

::

    lockfs mount [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d]
    lockfs status|locks|metrics MOUNTPOINT ...       (lockfs COMMAND --help)
    lockfs SOURCE MOUNTPOINT -o OPTIONS               (what mount.fuse3 runs)
    lockfs MOUNTPOINT [-o OPTIONS] [-f] [-d]          (by hand)

``mount -t fuse.lockfs`` (fstab, systemd mount units) starts lockfs the way it starts sshfs:
mount(8) runs /sbin/mount.fuse (fuse3's mount.fuse3), which runs ``lockfs SOURCE MOUNTPOINT
-o OPTIONS`` (no SOURCE when it is empty) through ``/bin/sh -c`` with the shell's default PATH
(mount(8) drops the caller's PATH), so ``lockfs`` must be in /usr/local/bin or /usr/sbin.
mount.fuse3 always passes ``-o``: it adds ``dev`` and ``suid`` unless ``nodev``/``nosuid``
were given, and mount(8) always adds ``rw`` or ``ro``.

So that a mistyped command never mounts, the first word decides (:func:`main`):

1. a command name (:data:`COMMANDS`) runs that command, unless the arguments carry ``-o`` and
   the name is not ``mount``: then it is mount.fuse3's form with a SOURCE named like a command;
2. otherwise the arguments are a mount only if they carry ``-o`` (mount.fuse3's form), or their
   only word is a path: it contains a ``/`` or names an existing directory;
3. anything else (``lockfs lock /run/x``, ``lockfs frobnicate``) is a usage error, exit
   status 2, and nothing is mounted.

Without ``-f`` a mount returns only once it answers, with exit status 0; otherwise it prints
why on stderr, exits 1 and leaves no mount behind. The daemon exits 0 when its mount is
unmounted (``umount``, ``fusermount3 -u``, or SIGTERM/SIGINT while nothing is open). The exit
statuses of the other commands are listed in lockfs.admin.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence

from . import __version__, logs, testing_hooks
from .admin import (
    EXIT_USAGE,
    SUBCOMMANDS,
    CommandParser,
    Subcommand,
    run_subcommand,
    subcommand_parser,
    summary,
)
from .admin import fail as _fail
from .heal import heal_main
from .mounts import (
    MountError,
    MountpointClaim,
    check_fuse_device,
    check_may_mount,
    resolve,
    umount,
)
from .options import MountOptions, OptionError, parse_options
from .testing_hooks import TestHooks

log = logging.getLogger("lockfs")

EXIT_FAILURE = 1

#: What mount.fuse3 passes as the mountpoint when given ``drop_privileges``: it has mounted
#: already and hands over the /dev/fuse descriptor.
_FD_MOUNTPOINT = re.compile(r"/dev/fd/\d+")

USAGE = """\
usage: lockfs COMMAND [ARGUMENTS]
       lockfs [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d]"""

_DEFAULTS = MountOptions()
_OPTIONS_HELP = (
    "Options (-o, comma-separated): uid=USER, gid=GROUP, mode=OCTAL (root directory), "
    f"reclaim_delay=SECONDS (idle empty files, default {_DEFAULTS.reclaim_delay:g}), "
    f"dir_grace=SECONDS (idle empty directories, default {_DEFAULTS.dir_grace:g}), "
    f"max_entries=N (default {_DEFAULTS.max_entries}), "
    f"max_file_size=SIZE (default {_DEFAULTS.max_file_size >> 20}M), "
    f"max_depth=N (default {_DEFAULTS.max_depth}), metrics_file=PATH, "
    f"metrics_interval=SECONDS (default {_DEFAULTS.metrics_interval:g}), "
    "hang_timeout=SECONDS (a daemon stuck this long fails closed: its mount answers ENOTCONN; "
    f"default {_DEFAULTS.hang_timeout:g}, 0: never), debug, and the usual "
    "kernel flags (nosuid, nodev, noexec, noatime, ...). Options for mount(8), fstab and "
    "systemd (nofail, _netdev, x-systemd.*, ...) are accepted and ignored."
)


def mount_main(argv: Sequence[str]) -> int:
    """Mount lockfs at MOUNTPOINT, an existing empty directory.

    Returns once the mount answers (exit status 0), or says why not and leaves no mount
    (exit status 1). mount -t fuse.lockfs, fstab and systemd mount units run this command.
    """
    return _mount(_mount_parser().parse(argv))


def _mount_parser() -> CommandParser:
    parser = subcommand_parser("mount", mount_main)
    parser.epilog = _OPTIONS_HELP
    parser.add_argument("source", nargs="?", default="lockfs", help="name shown in mount tables")
    parser.add_argument("mountpoint", help="an existing, empty directory")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument(
        "-d", "--debug", action="store_true", help="trace every request (implies -f)"
    )
    return parser


#: Every command by name: ``mount``, the admin commands of lockfs.admin.SUBCOMMANDS, and
#: ``heal`` (lockfs.heal: the self-healing watcher lockfs-heal.service runs).
COMMANDS: dict[str, Subcommand] = {"mount": mount_main, **SUBCOMMANDS, "heal": heal_main}


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    commands = "\n".join(f"  {name:<{width}}  {summary(fn)}" for name, fn in COMMANDS.items())
    return f"""{USAGE}

Mount a lock directory whose entries vanish once nobody holds them, and look inside
running mounts (root only).

commands:
{commands}

Without a command, the arguments are a mount if they carry -o (mount -t fuse.lockfs,
fstab and systemd units go through mount.fuse3, which always passes -o) or if their only
word is a path (it contains a "/" or names an existing directory). Any other first word
is refused as an unknown command, so a mistyped command never mounts.

Exit status: 0 done; 1 failed (the reason on stderr); 2 usage error; 3 the daemon was
reached but did not answer properly in time (status, locks, metrics).

lockfs COMMAND --help describes a command and its options (lockfs mount --help: the mount
options).
"""


def _carries_options(argv: Sequence[str]) -> bool:
    """Whether the arguments hold ``-o OPTIONS`` (or ``-oOPTIONS``), as mount.fuse3's do."""
    return any(arg == "-o" or (arg.startswith("-o") and len(arg) > 2) for arg in argv)


def _words(argv: Sequence[str]) -> list[str]:
    """The arguments that are not options or values of ``-o``."""
    words, after_o = [], False
    for arg in argv:
        if after_o:
            after_o = False
        elif arg == "-o":
            after_o = True
        elif not arg.startswith("-") or arg == "-":
            words.append(arg)
    return words


def _not_a_mount(argv: Sequence[str]) -> str | None:
    """Why arguments without a command cannot be a mount (see the module docstring), or None."""
    if _carries_options(argv):
        return None
    words = _words(argv)
    if not words:  # options only: a mistyped one, or the mount parser says what is missing
        unknown = _mount_parser().unknown_options(argv)
        if unknown:
            return (
                f"unrecognized option {unknown[0]!r} (lockfs --help lists the commands, "
                "lockfs mount --help the mount's options)"
            )
        return None
    first = words[0]
    if first in COMMANDS:
        return f"the command {first!r} must come first: lockfs {first} ..."
    if len(words) == 1 and ("/" in first or os.path.isdir(first)):
        return None
    if "/" in first:
        return (
            "SOURCE MOUNTPOINT without -o is not a mount; by hand, run "
            "lockfs mount SOURCE MOUNTPOINT"
        )
    close = difflib.get_close_matches(first, COMMANDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown command {first!r}{hint}; a mountpoint must be an existing directory"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lockfs`` with ``argv`` (default: the process's arguments); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"{USAGE}\nlockfs: error: a command or a MOUNTPOINT is required", file=sys.stderr)
        return EXIT_USAGE
    first = argv[0]
    if first in ("-h", "--help"):
        print(_help(), end="")
        return 0
    if first in ("-V", "--version"):
        print(f"lockfs {__version__}")
        return 0
    if first in COMMANDS and (first == "mount" or not _carries_options(argv)):
        return run_subcommand(COMMANDS[first], argv[1:])
    problem = _not_a_mount(argv)
    if problem is not None:
        print(f"{USAGE}\nlockfs: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return run_subcommand(mount_main, argv)


def _mount(args: argparse.Namespace) -> int:
    """Check, mount, and serve in the foreground or hand over to a daemon."""
    if _FD_MOUNTPOINT.fullmatch(args.mountpoint):
        return _fail(
            f"mount.fuse3 passed the descriptor {args.mountpoint} instead of a mountpoint "
            "(drop_privileges): not supported, because lockfs must check the mountpoint before "
            "mounting and unmount itself only when nothing is open. mount.fuse3 has already "
            "mounted it, unchecked; that mount is now dead: find it in /proc/self/mounts "
            "(type fuse.lockfs) and remove it with `umount MOUNTPOINT`"
        )
    try:
        options = parse_options(args.options, MountOptions(uid=os.getuid(), gid=os.getgid()))
        hooks = testing_hooks.from_environment()
    except (OptionError, testing_hooks.HookError) as exc:
        return _fail(str(exc))
    options.debug = options.debug or args.debug
    foreground = args.foreground or options.debug
    mountpoint = resolve(args.mountpoint)
    try:
        check_may_mount()
        check_fuse_device()
        claim = MountpointClaim(mountpoint)
    except MountError as exc:
        return _fail(str(exc))
    if foreground:
        logs.to_stderr(options.debug)
        return _run(mountpoint, options, args.source, hooks, claim, ready_fd=None)
    return _daemonize(mountpoint, options, args.source, hooks, claim)


def _run(
    mountpoint: str,
    options: MountOptions,
    source: str,
    hooks: TestHooks,
    claim: MountpointClaim | None,
    ready_fd: int | None,
) -> int:
    """Mount and serve until unmounted; report "ready" or "error: ..." on ``ready_fd``.

    The shutdown signals stay blocked from before the mount until the daemon receives them.
    """
    # Imported here so that `lockfs --help` and option errors work without pyfuse3.
    from .daemon import HANDLED_SIGNALS, Daemon

    daemon = Daemon(mountpoint, options, fsname=source, hooks=hooks)
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        daemon.mount()
    except Exception as exc:  # pyfuse3 raises RuntimeError; libfuse printed the cause
        message = f"mounting {mountpoint} failed: {exc}"
        if ready_fd is not None:
            os.write(ready_fd, f"error: {message}\n".encode())
            return EXIT_FAILURE
        return _fail(message)
    finally:
        if claim is not None:
            claim.release()
    hooks.at_startup_step("after-mount")

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            hooks.at_startup_step("when-ready")
            os.close(ready_fd)
            _detach_stdio(mountpoint, hooks, debug=options.debug)

    try:
        daemon.serve(on_ready=ready)
    except Exception:
        log.exception("lockfs daemon failed")
        return EXIT_FAILURE
    return daemon.exit_status


def _detach_stdio(mountpoint: str, hooks: TestHooks, *, debug: bool) -> None:
    """Once ready, the daemon logs to syslog (or where lockfs.logs falls back to), tracing
    every request if ``debug``, and lets go of the caller's terminal/pipes."""
    logs.detached(debug, mountpoint, **hooks.log_sockets())
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _daemonize(
    mountpoint: str,
    options: MountOptions,
    source: str,
    hooks: TestHooks,
    claim: MountpointClaim,
) -> int:
    """Fork a daemon; return 0 once the mount answers, or say why not and leave no mount.

    The parent keeps the mountpoint claim until then, so any lockfs mount that appears at the
    mountpoint meanwhile is the daemon's, and it may remove it if the daemon failed.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = EXIT_FAILURE
        try:
            os.close(read_end)
            claim.release()  # the parent's copy keeps the claim
            os.setsid()
            os.chdir("/")
            logs.to_stderr(options.debug, quiet=True)
            code = _run(mountpoint, options, source, hooks, None, ready_fd=write_end)
        except BaseException:
            log.exception("lockfs daemon failed to start")  # still on the caller's stderr
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.readline().decode(errors="replace").strip()
        if message != "ready":
            _, status = os.waitpid(pid, 0)
            if message.startswith("error: "):
                reason = message[len("error: ") :]
            else:
                reason = f"mounting {mountpoint} failed: the daemon {_describe(status)}"
            return _fail(reason + _remove_new_mounts(claim))
        # The mount answers once the daemon has served this stat (INIT, then GETATTR).
        try:
            st = os.stat(mountpoint)
            os.statvfs(mountpoint)  # never answered from a cache
        except OSError as exc:
            problem = f"{mountpoint} does not answer: {exc.strerror}"
        else:
            if st.st_ino == 1:
                return 0
            problem = f"{mountpoint} is not served by lockfs (inode {st.st_ino})"
        # The daemon is dead or broken: make sure it is gone, then remove its mount.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return _fail(problem + _remove_new_mounts(claim))
    finally:
        claim.release()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _remove_new_mounts(claim: MountpointClaim) -> str:
    """Unmount (never lazily) the lockfs mounts a failed start left; say what is left."""
    for entry in claim.new_mounts():
        try:
            umount(claim.path)
        except OSError as exc:
            return (
                f"; its dead mount could not be removed ({exc.strerror}): stop the processes "
                f"using it (fuser -vm {claim.path}), then run `umount {claim.path}`"
            )
        log.debug("removed the dead mount %d at %s", entry.mount_id, claim.path)
    return ""


if __name__ == "__main__":
    sys.exit(main())
