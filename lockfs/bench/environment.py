"""The targets of one run, mounted by the bench (its own tmpfs, lockfs daemon and reference
servers, see lockfs.harness) or given on the command line; unmounted on the way out."""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from ..control import ControlError, query
from ..harness import ServerExited, ServerProcess, lockfs_command, unmount
from ..mounts import is_lockfs_mounted, mounts_at
from . import reference, workers
from .progress import BenchError, progress
from .targets import Target


def _die_with_parent() -> None:
    """In the daemon child: get SIGTERM (unmount when idle) if the bench is killed."""
    import ctypes

    ctypes.CDLL(None).prctl(workers.PR_SET_PDEATHSIG, signal.SIGTERM)


#: How long a server may take to exit on SIGTERM, and a busy mount to become free.
STOP_TIMEOUT = 15.0
UMOUNT_TIMEOUT = 5.0


class OwnDaemon(ServerProcess):
    """A server the bench started (its lockfs daemon, or a reference server with
    ``mounted`` telling its mounts apart), with a control socket or ``status(pid)``.

    It runs in its own session (Ctrl-C goes to the bench, which stops it) and gets SIGTERM
    if the bench dies."""

    def __init__(
        self,
        command: list[str],
        mountpoint: str,
        log_path: str,
        *,
        mounted: Callable[[str], bool] = is_lockfs_mounted,
        status: Callable[[int], dict[str, Any]] | None = None,
        name: str = "lockfs daemon",
    ) -> None:
        super().__init__(
            command,
            mountpoint,
            log_path,
            mounted=mounted,
            name=name,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.read_status = status

    def wait_ready(self, timeout: float = 20) -> dict[str, Any]:
        """Wait until the mount serves and the status can be read; the status."""

        def status() -> dict[str, Any] | None:
            try:
                if self.read_status is not None:
                    return self.read_status(self.pid)
                return query(self.mountpoint, "status")
            except (ControlError, OSError, ValueError):
                return None

        try:
            return self.wait_serving(timeout, status)
        except (ServerExited, TimeoutError) as exc:
            raise BenchError(str(exc)) from None

    def stop(self) -> None:
        """SIGTERM (the daemon unmounts when nothing is open), then force if needed."""
        if self.proc.poll() is not None:
            progress(f"{self.name} had exited ({self.proc.returncode}):\n{self.log_tail()}")
        elif not self.terminate(STOP_TIMEOUT):
            progress(f"{self.name} did not stop on SIGTERM: killed it")
        self.close_log()
        unmount_if(self.mountpoint, self.mounted)


def unmount_if(path: str, mounted: Callable[[str], bool]) -> None:
    """Unmount ``path`` while ``mounted(path)``; raises if it stays busy (never lazily)."""
    if mounted(path):
        unmount(path, UMOUNT_TIMEOUT)


def is_tmpfs_mount(path: str) -> bool:
    types = mounts_at(path)
    return bool(types) and types[-1] == "tmpfs"


def kill_workers() -> None:
    """Kill the bench's own worker processes that are still running."""
    for child in multiprocessing.active_children():
        child.kill()
        child.join(10)


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[tuple[Target, Target, list[Target]]]:
    """The tmpfs and lockfs targets and the reference servers; whatever the bench mounted is
    unmounted on the way out."""
    with contextlib.ExitStack() as stack:
        tmp = tempfile.mkdtemp(prefix="lockfs-bench-")
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stack.callback(kill_workers)  # runs first: nothing may keep the mounts busy
        tmpfs = _tmpfs_target(args, tmp, stack)
        lockfs = _lockfs_target(args, tmp, stack)
        references = _reference_targets(args, tmp, stack, lockfs)
        stack.callback(kill_workers)
        yield tmpfs, lockfs, references


def _tmpfs_target(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> Target:
    if args.tmpfs:
        if not is_tmpfs_mount(args.tmpfs):
            raise BenchError(f"{args.tmpfs} is not a tmpfs mount")
        root = os.path.join(os.path.realpath(args.tmpfs), f"lockfs-bench-{os.getpid()}")
        os.mkdir(root)
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        return Target("tmpfs", args.tmpfs, root)
    path = os.path.join(tmp, "tmpfs")
    os.mkdir(path)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0755,size=64m,nr_inodes=0", "lockfs-bench", path],
        check=True,
    )
    stack.callback(unmount_if, path, is_tmpfs_mount)
    return Target("tmpfs", path, path)


def _lockfs_target(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> Target:
    if args.mount:
        if not is_lockfs_mounted(args.mount):
            raise BenchError(f"{args.mount} is not a lockfs mount")
        mountpoint = os.path.realpath(args.mount)
        status = query(mountpoint, "status")
        root = os.path.join(mountpoint, f"lockfs-bench-{os.getpid()}")
    else:
        mountpoint = os.path.join(tmp, "lockfs")
        os.mkdir(mountpoint)
        options = f"reclaim_delay={args.reclaim_delay},dir_grace={args.dir_grace}"
        progress(f"starting lockfs -f -o {options} at {mountpoint}")
        daemon = OwnDaemon(
            lockfs_command(mountpoint, options), mountpoint, os.path.join(tmp, "lockfs.log")
        )
        stack.callback(daemon.stop)
        status = daemon.wait_ready()
        root = mountpoint
    return Target(
        "lockfs",
        mountpoint,
        root,
        idle_nodes=status["nodes"],
        reclaim_delay=status["options"]["reclaim_delay"],
        dir_grace=status["options"]["dir_grace"],
        daemon_pid=status["pid"],
    )


def _reference_targets(
    args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack, lockfs: Target
) -> list[Target]:
    """The reference servers (bench.reference), with lockfs's cache timeouts."""
    if args.no_reference:
        return []
    targets = []
    binary, why_not = reference.build_libfuse(tmp)
    if binary is None:
        progress(f"no libfuse reference server: {why_not}")
    for name in reference.REFERENCES:
        mountpoint = os.path.join(tmp, name)
        status: Callable[[int], dict[str, Any]] | None = None
        if name == reference.MINIMAL:
            command = reference.minimal_command(mountpoint, lockfs.dir_grace)
            mounted = reference.is_minimal_mounted
        elif binary is not None:
            counts = os.path.join(tmp, "libfuse.counts")
            command = reference.libfuse_command(binary, mountpoint, lockfs.dir_grace, counts)
            mounted = reference.is_libfuse_mounted
            status = functools.partial(reference.libfuse_status, counts)
        else:
            continue
        os.mkdir(mountpoint)
        progress(f"starting the {name} reference server at {mountpoint}")
        log_path = os.path.join(tmp, f"{name}.log")
        server = OwnDaemon(
            command, mountpoint, log_path, mounted=mounted, status=status, name=f"{name} server"
        )
        stack.callback(server.stop)
        ready = server.wait_ready()
        target = Target(name, mountpoint, mountpoint, daemon_pid=ready["pid"], reclaims=False)
        if status is not None:
            target.read_status = functools.partial(status, ready["pid"])
        targets.append(target)
    return targets
