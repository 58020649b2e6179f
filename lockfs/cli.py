"""Command line: ``lockfs [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d]``.

Follows the conventions of FUSE filesystems such as sshfs, so that ``mount -t fuse.lockfs``
can start it: mount(8) runs /sbin/mount.fuse (fuse3's mount.fuse3), which runs
``lockfs SOURCE MOUNTPOINT -o OPTIONS`` through ``/bin/sh -c`` with the shell's default PATH
(mount(8) drops the caller's PATH), so ``lockfs`` must be in /usr/local/bin or /usr/sbin.

Without ``-f`` the command returns only once the mount answers, with exit status 0; otherwise
it prints why on stderr, exits 1 and leaves no mount behind. The daemon exits 0 when its mount
is unmounted (``umount``, ``fusermount3 -u``, or SIGTERM/SIGINT while nothing is open).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import re
import signal
import sys
from collections.abc import Sequence

from . import __version__, testing_hooks
from .admin import SUBCOMMANDS, run_subcommand
from .admin import fail as _fail
from .mounts import MountError, MountpointClaim, check_fuse_device, resolve, umount
from .options import MountOptions, OptionError, parse_options
from .testing_hooks import TestHooks

log = logging.getLogger("lockfs")

EXIT_FAILURE = 1

#: What mount.fuse3 passes as the mountpoint when given ``drop_privileges``: it has mounted
#: already and hands over the /dev/fuse descriptor.
_FD_MOUNTPOINT = re.compile(r"/dev/fd/\d+")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockfs",
        description="Mount a lock directory whose entries vanish once nobody holds them.",
        epilog=(
            "Options (-o, comma-separated): uid=USER, gid=GROUP, mode=OCTAL (root directory), "
            "reclaim_delay=SECONDS (idle empty files, default 0.5), dir_grace=SECONDS (idle "
            "empty directories, default 10), max_entries=N (default 1000000), "
            "max_file_size=SIZE (default 64M), max_depth=N (default 32), metrics_file=PATH, "
            "metrics_interval=SECONDS (default 15), debug, and the usual kernel flags (nosuid, "
            "nodev, noexec, noatime, ...). Options for mount(8), fstab and systemd (nofail, "
            "_netdev, x-systemd.*, ...) are accepted and ignored. "
            "Other commands: `lockfs status MOUNTPOINT`, `lockfs locks MOUNTPOINT [PREFIX]`, "
            "`lockfs metrics MOUNTPOINT` (root only; see --help of each)."
        ),
    )
    parser.add_argument("source", nargs="?", default="lockfs", help="name shown in mount tables")
    parser.add_argument("mountpoint", help="an existing, empty directory")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument(
        "-d", "--debug", action="store_true", help="trace every request (implies -f)"
    )
    parser.add_argument("-V", "--version", action="version", version=f"lockfs {__version__}")
    return parser


def _setup_logging(debug: bool, to_syslog: bool, quiet: bool = False) -> None:
    """Log to syslog (a detached daemon) or stderr; ``quiet`` keeps stderr to warnings, so a
    successful ``mount`` prints nothing."""
    handler: logging.Handler
    if to_syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("lockfs[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s lockfs[%(process)d] %(levelname)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    # pyfuse3 logs every worker start at debug level; keep it quieter unless tracing.
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # mount.fuse3 always passes -o, so a mount whose source is "status" is still a mount.
    if argv and argv[0] in SUBCOMMANDS and "-o" not in argv:
        return run_subcommand(SUBCOMMANDS[argv[0]], argv[1:])
    args = _parser().parse_args(argv)
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
        check_fuse_device()
        claim = MountpointClaim(mountpoint)
    except MountError as exc:
        return _fail(str(exc))
    if foreground:
        _setup_logging(options.debug, to_syslog=False)
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
            _detach_stdio()

    try:
        daemon.serve(on_ready=ready)
    except Exception:
        log.exception("lockfs daemon failed")
        return EXIT_FAILURE
    return 0


def _detach_stdio() -> None:
    """Once ready, the daemon logs to syslog and lets go of the caller's terminal/pipes."""
    _setup_logging(logging.getLogger().level == logging.DEBUG, to_syslog=True)
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
            _setup_logging(options.debug, to_syslog=False, quiet=True)
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
