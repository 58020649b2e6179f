"""The daemon: mounts one lockfs, serves it with trio, and unmounts safely.

Shutdown fails closed. SIGTERM and SIGINT unmount only if the kernel agrees that nothing on the
mount is in use (a plain, non-lazy umount); while any file is open the mount stays and keeps
serving, because a lazy unmount would let new callers create a second lock file of the same
name in the directory underneath while old holders still hold theirs. If the daemon dies, the
mount stays in place and answers ENOTCONN until an administrator unmounts it. The daemon only
ever unmounts its own mount (identified by its mount ID), never one mounted after it.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import pyfuse3
import trio

from . import request_loop, rootfiles
from .commands import ControlCommands
from .control import serve_control, socket_path
from .fuse_ops import LockOperations
from .invalidator import EntryInvalidator
from .metrics import keep_metrics_file
from .mounts import FSTYPE, entries_at, is_busy, umount
from .nodes import Limits, NodeTable, ReclaimPolicy
from .options import MountOptions
from .persist import DataMirror
from .reclaimer import reclaim_loop
from .testing_hooks import NO_HOOKS, TestHooks
from .watchdog import EXIT_FAILED_CLOSED, FailClosed, Watchdog, describe_request

log = logging.getLogger(__name__)

#: Signals that ask the daemon to unmount (it refuses while files are open). The CLI blocks
#: them from before mounting until the daemon receives them, so that one arriving during
#: start-up is neither lost nor fatal (a fatal one would leave a dead mount behind).
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED_SIGNALS = (*SHUTDOWN_SIGNALS, signal.SIGHUP)
#: How long the daemon waits for the invalidation thread at exit (it is idle or nearly done).
INVALIDATOR_STOP_TIMEOUT = 2.0
#: Exit status of a daemon that failed closed on an internal error (EX_SOFTWARE, like a hang).
EXIT_FAULT = EXIT_FAILED_CLOSED
#: Exit status of a daemon whose FUSE connection was aborted from outside while mounted.
EXIT_ABORTED = 1


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard one: control connections, log sockets
    and the metrics file then never run out of descriptors before the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, exc)


class Daemon:
    """One mount: its node table, its request handlers, and its lifecycle."""

    def __init__(
        self,
        mountpoint: str,
        options: MountOptions,
        fsname: str = "lockfs",
        hooks: TestHooks = NO_HOOKS,
    ) -> None:
        self.mountpoint = os.path.realpath(mountpoint)
        self.options = options
        self.fsname = fsname
        self.table = NodeTable(
            root_mode=options.mode,
            root_uid=options.uid,
            root_gid=options.gid,
            policy=ReclaimPolicy(options.reclaim_delay, options.dir_grace),
            limits=Limits(options.max_entries, options.max_file_size, options.max_depth),
        )
        #: Keeps data files across restarts (restored in :meth:`mount`), or None.
        self.mirror: DataMirror | None = None
        if options.data_dir is not None:
            self.mirror = DataMirror(self.table, options.data_dir, self.mountpoint)
        self.ops = LockOperations(self.table, trace=options.debug)
        self.ops.fail_closed = self._fail_closed
        self.ops.fault_hook = hooks.request_hook()
        #: Ends the daemon when it can no longer be trusted to serve (from any thread): one
        #: log line with the reason, every thread's stack, the FUSE connection aborted, exit 70.
        self.fail_closed = FailClosed(
            self.mountpoint, self._device, abort=not hooks.watchdog_exit_only
        )
        #: Counts the requests the loop completes (set by mount(): the watchdog's progress).
        self.request_loop: request_loop.RequestLoop | None = None
        self.watchdog: Watchdog | None = None
        if options.hang_timeout:
            self.watchdog = Watchdog(
                options.hang_timeout,
                self.ops,
                self.fail_closed,
                progress=self._requests_completed,
                fault=hooks.watchdog_hook(),
            )
        #: Sends the reclaimer's invalidations from a thread of its own (and replaces that
        #: thread when it dies or gets stuck).
        self.invalidator = EntryInvalidator(
            hooks.invalidation_hook(pyfuse3.invalidate_entry),
            path_of=self._directory_path,
            fail_closed=self.fail_closed,
        )
        #: What the control socket answers (status, node info).
        self.commands = ControlCommands(
            self.mountpoint, self.table, self.ops, options, self.invalidator
        )
        self._mounted = False
        #: The mount ID of this daemon's mount (None before mounting).
        self.mount_id: int | None = None
        #: Set once the kernel ended the FUSE session: the mount is gone, nothing to unmount.
        self._session_ended = False
        #: What the process exits with once :meth:`serve` returns.
        self.exit_status = 0

    def mount(self) -> None:
        """Load the data kept from earlier mounts, then mount the filesystem (requests wait in
        the kernel until :meth:`serve` runs).

        Refused first, with the reason, when the control socket's directory is not root's
        alone (lockfs.rootfiles.private_dir; created 0700 when missing).
        """
        os.close(rootfiles.private_dir(os.path.dirname(socket_path(self.mountpoint))))
        raise_open_file_limit()
        self.request_loop = request_loop.install()
        if self.mirror is not None:
            self._restore(self.mirror)
        try:
            pyfuse3.init(self.ops, self.mountpoint, self.options.fuse_options(self.fsname))
        except BaseException:
            if self.mirror is not None:
                self.mirror.close()
            raise
        self._mounted = True
        # The caller holds the mountpoint claim, so the topmost lockfs here is this one.
        ours = [e for e in entries_at(self.mountpoint, resolve_path=False) if e.fstype == FSTYPE]
        self.mount_id = ours[-1].mount_id if ours else None
        log.info("mounted lockfs at %s", self.mountpoint)

    def _restore(self, mirror: DataMirror) -> None:
        mirror.open()
        try:
            restored = mirror.restore()
        except BaseException:
            mirror.close()
            raise
        if restored.files:
            log.info(
                "restored %d data files (%d bytes, %d directories) from %s",
                restored.files,
                restored.bytes,
                restored.dirs,
                mirror.path,
            )

    def serve(self, on_ready: Callable[[], None] = lambda: None) -> None:
        """Serve requests until the filesystem is unmounted, then clean up."""
        threading.excepthook = _log_thread_exception
        try:
            trio.run(self._serve, on_ready)
        finally:
            # Ending: a late SIGTERM has nothing left to do, and must not kill the exit (trio
            # gave the signals back the handler they had, see _handle_signals; Python resets
            # handlers to the default at interpreter exit, SIG_IGN it keeps).
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            if self.watchdog is not None:
                self.watchdog.stop()
            self._close()

    async def _serve(self, on_ready: Callable[[], None]) -> None:
        self.fail_closed.find_connection()
        async with trio.open_nursery() as nursery:
            self.invalidator.start()
            nursery.start_soon(self.invalidator.watch)
            nursery.start_soon(reclaim_loop, self.table, self.invalidator.submit)
            nursery.start_soon(self._handle_signals)
            if self.options.metrics_file:
                nursery.start_soon(
                    keep_metrics_file,
                    self.options.metrics_file,
                    self.options.metrics_interval,
                    self.commands.status,
                    self._device,
                )
            # Bound before the mount is reported ready, so `lockfs status` works at once.
            await nursery.start(serve_control, socket_path(self.mountpoint), self.commands)
            if self.watchdog is not None:
                nursery.start_soon(self.watchdog.heartbeat)
                self.watchdog.start()
            on_ready()
            # Handlers never wait, so one worker task serves every request in turn (more
            # tasks would only add scheduling); request_loop spares it most scheduler passes.
            try:
                await pyfuse3.main(min_tasks=1, max_tasks=1)
            except* ConnectionAbortedError:  # the session ended: judged below, like any end
                log.info("the FUSE session ended with ECONNABORTED")
            # Blocked again before trio gives the signals their default action back.
            signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
            self._session_over()
            if self.watchdog is not None:
                self.watchdog.stop()
            self._session_ended = True
            if self.mirror is not None:  # no request comes any more: a new mount may take it
                self.mirror.close()
            log.info("FUSE session ended")
            nursery.cancel_scope.cancel()

    def _session_over(self) -> None:
        """The kernel ended the session. After an unmount, plain or lazy, the mount has left
        the mount table: a normal end. The read then gives ENODEV, or ECONNABORTED when it took
        a request queued as the connection went down (a RELEASEDIR sent in the background
        after the last close, just before the umount: fs/fuse/dev.c, fuse_dev_do_read; once in
        284 daemon stops of tests/test_safe_switch.py, where it was taken for a fault). If it is
        still there, the connection was aborted (through /sys/fs/fuse/connections): nothing
        can be served any more, not by a fault of the daemon's, so one log line and no
        traceback; the mount stays and answers ENOTCONN until it is unmounted (by lockfs-heal
        or an administrator), and the daemon exits non-zero."""
        if self._own_mount_state() == "detached":
            return
        self.exit_status = EXIT_ABORTED
        log.error(
            "the FUSE connection of %s was aborted: the mount answers ENOTCONN until it is "
            "unmounted; once its holders are gone, `umount %s` and mount it again",
            self.mountpoint,
            self.mountpoint,
        )

    def _requests_completed(self) -> int:
        """Requests the loop has completed (the watchdog's sign of progress)."""
        return self.request_loop.passes if self.request_loop is not None else 0

    def _directory_path(self, ino: int) -> str:
        """The absolute path of directory inode ``ino`` (for log lines and the status)."""
        node = self.table.nodes.get(ino)
        if node is None:
            return f"{self.mountpoint} (directory inode {ino}, gone)"
        relative = node.path().decode("utf-8", "backslashreplace")
        return os.path.join(self.mountpoint, relative) if relative else self.mountpoint

    def _fail_closed(self, request: str, args: tuple[Any, ...], exc: Exception) -> NoReturn:
        """A handler raised an unexpected exception: the change it was making may be half
        done, and the kernel (which got no answer) has not applied it, so the table may
        disagree with the kernel. Never serve it: :attr:`fail_closed` with one log line (the
        request, its arguments, the exception and its traceback), the FUSE connection aborted
        (every caller gets ECONNABORTED, then ENOTCONN, as after a hang), exit EXIT_FAULT."""
        request_text = describe_request(self.ops, request, args)
        reason = f"internal error in {request_text}: {type(exc).__name__}: {exc}"
        self.fail_closed(reason, exc)
        os._exit(EXIT_FAULT)  # not reached: fail_closed ends the process

    def _device(self) -> int:
        """The mount's device number, from the mount table (never by stat'ing the mount)."""
        for entry in entries_at(self.mountpoint, resolve_path=False):
            if entry.mount_id == self.mount_id:
                return entry.dev
        raise OSError(f"{self.mountpoint} is not in the mount table")

    async def _handle_signals(self) -> None:
        """SIGTERM/SIGINT: unmount if nothing is open, else log why not and keep serving."""
        # What the receiver puts back when it closes, once the session is over: a signal sent
        # again by an impatient caller must not kill the daemon half-way through its exit
        # (dropping a large table takes a while). A handler, not SIG_IGN, which would discard
        # a signal that arrived during start-up (blocked until the receiver is open); serve()
        # ignores them once trio is done.
        for handled in HANDLED_SIGNALS:
            signal.signal(handled, _ignore_signal)
        with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    continue
                log.info("%s received: unmounting %s", signal.Signals(signum).name, self.mountpoint)
                await trio.to_thread.run_sync(self._try_unmount)

    def _own_mount_state(self) -> str:
        """``"top"`` if this daemon's mount is the visible one at the mountpoint, ``"covered"``
        if something is mounted over it, ``"detached"`` if it is no longer in the mount table
        (unmounted lazily: the session ends when the last file on it is closed)."""
        entries = entries_at(self.mountpoint, resolve_path=False)
        if self.mount_id is None:  # not found after mounting: judge by the type on top
            return "top" if entries and entries[-1].fstype == FSTYPE else "detached"
        ids = [entry.mount_id for entry in entries]
        if self.mount_id not in ids:
            return "detached"
        return "top" if ids[-1] == self.mount_id else "covered"

    def _try_unmount(self) -> bool:
        """Unmount (never lazily) unless busy; the session then ends by itself.

        Returns whether the mount is gone. EBUSY means files are open on the mount, so locks
        may be held: the mount stays and keeps serving (fail closed).
        """
        state = self._own_mount_state()
        if state == "detached":
            log.warning(
                "%s was unmounted lazily: serving the processes that still have files open "
                "there until they close them",
                self.mountpoint,
            )
            return True
        if state == "covered":
            log.error("not unmounting %s: another filesystem is mounted over it", self.mountpoint)
            return False
        try:
            umount(self.mountpoint)
        except OSError as exc:
            if is_busy(exc):
                open_files = self.table.open_count
                log.error(
                    "not unmounting %s: it is busy (%d files open here). Locks may be held; "
                    "stop their holders first (fuser -vm %s), then stop lockfs again. "
                    "`umount -l` would detach the mount while they still hold locks and is "
                    "unsafe.",
                    self.mountpoint,
                    open_files,
                    self.mountpoint,
                )
            else:
                log.error("cannot unmount %s: %s", self.mountpoint, exc.strerror)
            return False
        return True

    def _close(self) -> None:
        """After serving: make sure this daemon's mount is either gone or, if it cannot be
        unmounted safely, left in place to answer ENOTCONN (never lazily detached)."""
        if not self._mounted:
            return
        self._mounted = False
        # A session ended by the kernel means the mount is gone; its mount ID may even be
        # reused by a new mount already, which must not be touched.
        mounted = not self._session_ended and self._own_mount_state() != "detached"
        if mounted and not self._try_unmount():
            log.error(
                "leaving %s mounted without a daemon: it answers ENOTCONN until an "
                "administrator runs `umount %s` once its holders are gone",
                self.mountpoint,
                self.mountpoint,
            )
        if not self.invalidator.stop(timeout=INVALIDATOR_STOP_TIMEOUT):
            # It may still be using the FUSE session: leave closing /dev/fuse to process exit.
            log.warning("an entry invalidation is still blocked in the kernel")
        else:
            pyfuse3.close(unmount=False)
        if self.mirror is not None:
            self.mirror.close()
        log.info("lockfs at %s stopped", self.mountpoint)


def _ignore_signal(signum: int, frame: object) -> None:
    """The handler of the shutdown signals once the daemon no longer serves."""


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ends any thread is logged with its traceback (stderr is /dev/null in
    a detached daemon); the threads' keepers act on the death itself."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.critical(
        "internal error in thread %s; it has ended",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )
