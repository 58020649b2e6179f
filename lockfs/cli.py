"""Command line: ``lockfs [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d]``.

Follows the conventions of FUSE filesystems such as sshfs, so that ``mount -t fuse.lockfs``
(through mount.fuse3) can start it: without ``-f`` the command returns only once the mount
answers, with exit status 0, or prints why mounting failed and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence

from . import __version__
from .mounts import MountError, check_fuse_device, check_mountpoint
from .options import MountOptions, OptionError, parse_options

log = logging.getLogger("lockfs")

EXIT_FAILURE = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockfs",
        description="Mount a lock directory whose entries vanish once nobody holds them.",
        epilog=(
            "Options (-o, comma-separated): uid=USER, gid=GROUP, mode=OCTAL (root directory), "
            "reclaim_delay=SECONDS (idle empty files, default 0.5), dir_grace=SECONDS (idle "
            "empty directories, default 10), debug, and the usual kernel flags (nosuid, "
            "nodev, noexec, noatime, ...)."
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


def _setup_logging(debug: bool, to_syslog: bool) -> None:
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
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # pyfuse3 logs every worker start at debug level; keep it quieter unless tracing.
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if debug else logging.WARNING)


def _fail(message: str) -> int:
    print(f"lockfs: {message}", file=sys.stderr)
    return EXIT_FAILURE


def status_main(argv: Sequence[str]) -> int:
    """``lockfs status MOUNTPOINT``: the daemon's counters as JSON."""
    from .control import ControlError, query

    parser = argparse.ArgumentParser(prog="lockfs status")
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    try:
        result = query(args.mountpoint, "status")
    except ControlError as exc:
        return _fail(str(exc))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


SUBCOMMANDS = {"status": status_main}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = _parser().parse_args(argv)
    try:
        options = parse_options(args.options, MountOptions(uid=os.getuid(), gid=os.getgid()))
    except OptionError as exc:
        return _fail(str(exc))
    options.debug = options.debug or args.debug
    foreground = args.foreground or options.debug
    try:
        check_fuse_device()
        check_mountpoint(args.mountpoint)
    except MountError as exc:
        return _fail(str(exc))
    if foreground:
        _setup_logging(options.debug, to_syslog=False)
        return _run(args.mountpoint, options, args.source, ready_fd=None)
    return _daemonize(args.mountpoint, options, args.source)


def _run(mountpoint: str, options: MountOptions, source: str, ready_fd: int | None) -> int:
    # Imported here so that `lockfs --help` and option errors work without pyfuse3.
    from .daemon import Daemon

    daemon = Daemon(mountpoint, options, fsname=source)
    try:
        daemon.mount()
    except Exception as exc:  # pyfuse3 raises RuntimeError; libfuse printed the cause
        message = f"mounting {mountpoint} failed: {exc}"
        if ready_fd is not None:
            os.write(ready_fd, f"error: {message}\n".encode())
        log.error("%s", message)
        return EXIT_FAILURE

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
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


def _daemonize(mountpoint: str, options: MountOptions, source: str) -> int:
    """Fork a daemon; return 0 once the mount answers, or report why it did not."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        os.setsid()
        os.chdir("/")
        _setup_logging(options.debug, to_syslog=False)
        code = EXIT_FAILURE
        try:
            code = _run(mountpoint, options, source, ready_fd=write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.readline().decode(errors="replace").strip()
    if message != "ready":
        os.waitpid(pid, 0)
        if message.startswith("error: "):
            return _fail(message[len("error: ") :])
        return _fail(f"mounting {mountpoint} failed (daemon exited)")
    # The mount answers once the daemon has served this stat (INIT, then GETATTR).
    try:
        st = os.stat(mountpoint)
    except OSError as exc:
        return _fail(f"{mountpoint} does not answer: {exc.strerror}")
    if st.st_ino != 1:
        return _fail(f"{mountpoint} is not served by lockfs (inode {st.st_ino})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
