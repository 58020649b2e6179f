"""``python -m lockfs.bench``: lock cycles on lockfs beside tmpfs, measured in the same run.

By default the command mounts its own lockfs (a ``lockfs -f`` daemon started with this
Python) and its own tmpfs in a temporary directory, runs the same worker processes with the
same parameters on both, prints a table per section and unmounts both at the end, also on
errors and Ctrl-C. ``--mount DIR`` measures an existing lockfs mount instead (counters then
come from its control socket); ``--tmpfs DIR`` an existing tmpfs.

The hot and cold sections also run on a reference server, a minimal pyfuse3 + trio server with
lockfs's cache timeouts (:mod:`lockfs.bench_reference`), to show lockfs against the limit of
the framework it runs on.

Sections (see docs/benchmark.md for what each figure means and how it is measured):

* **hot**: one path, ``open(O_RDWR|O_CREAT)`` + ``flock(LOCK_EX)`` + ``close``, 1 and N
  processes;
* **cold**: a fresh chunk path each time with PBS's full lock sequence, 1 and N processes;
* **memory**: what N distinct cold locks leave behind (files, kernel slab, daemon RSS, node
  table entries), after lockfs's reclaim;
* **held**: the cost of a hot cycle on another path while many locks are held, against the
  cost with 10 held.

Must run as root (it mounts filesystems and drops the page cache).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import __version__, bench_reference, bench_rounds, bench_workers
from .control import ControlError, query
from .mounts import is_busy, is_lockfs_mounted, mounts_at, umount

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("hot", "cold", "memory", "held")
#: Request types always printed (a lock cycle may send them); others only when counted.
ALWAYS_SHOWN = {"lookup", "forget", "getattr", "setattr", "mkdir", "create", "open", "flush"}
ALWAYS_SHOWN |= {"release", "rename"}
#: Request types in the order they are printed; others follow alphabetically.
REQUEST_ORDER = (
    "lookup", "forget", "getattr", "setattr", "mkdir", "mknod", "create", "open", "flush",
    "release", "rename", "link", "unlink", "rmdir", "read", "write", "fsync", "opendir",
    "readdir", "releasedir", "statfs",
)  # fmt: skip


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


@dataclass(frozen=True)
class Sizes:
    """How much work each section does."""

    hot_cycles: int
    cold_cycles: int
    memory_locks: int
    held_locks: int


PRESETS = {
    "quick": Sizes(hot_cycles=300, cold_cycles=200, memory_locks=500, held_locks=200),
    "default": Sizes(hot_cycles=20_000, cold_cycles=5_000, memory_locks=20_000, held_locks=10_000),
    "full": Sizes(
        hot_cycles=100_000, cold_cycles=20_000, memory_locks=1_000_000, held_locks=100_000
    ),
}
#: Locks held in the reference case of the held section.
FEW_HELD = 10


# --------------------------------------------------------------------- small helpers


def log(message: str) -> None:
    """Progress on stderr, with the time since the bench started."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


_STARTED = time.monotonic()


def wait_until(
    condition: Callable[[], Any], timeout: float, max_delay: float = 0.1
) -> tuple[Any, float] | None:
    """Poll ``condition`` until it returns something truthy: ``(result, seconds)``.

    Returns ``None`` once ``timeout`` seconds have passed (like ``wait_for`` in the tests,
    but the caller decides whether a timeout is an error).
    """
    start = time.monotonic()
    deadline = start + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result, time.monotonic() - start
        if time.monotonic() > deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, max_delay)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    return out


def drop_caches(enabled: bool) -> bool:
    """Write back and drop clean caches (page cache, unused dentries and inodes).

    Makes two slab readings comparable: what is left is memory that something pins, such as
    the dentries and inodes of tmpfs files, or FUSE entries the kernel still references.
    """
    if not enabled:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def slab_caches() -> dict[str, tuple[int, int]]:
    """``name: (active objects, object size)`` from /proc/slabinfo (empty if unreadable)."""
    out = {}
    with contextlib.suppress(OSError), open("/proc/slabinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[1].isdigit():
                out[fields[0]] = (int(fields[1]), int(fields[3]))
    return out


#: Slab caches that hold a file's kernel objects: its dentry and its inode on each filesystem.
KEY_CACHES = ("dentry", "shmem_inode_cache", "fuse_inode")


def slab_reading(drop: bool) -> dict[str, Any]:
    """Slab and SUnreclaim (kB) and per-cache objects, after dropping caches when ``drop``."""
    dropped = drop_caches(drop)
    info = meminfo()
    return {
        "slab_kb": info["Slab"],
        "sunreclaim_kb": info["SUnreclaim"],
        "dropped": dropped,
        "caches": slab_caches(),
    }


def slab_growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Growth between two readings: totals, key caches' objects, top caches by bytes."""
    old, new = before["caches"], after["caches"]
    grown = {
        name: (objs - old.get(name, (0, size))[0]) * size for name, (objs, size) in new.items()
    }
    top = sorted((n for n in grown if grown[n] > 0), key=lambda n: -grown[n])[:8]
    return {
        "slab_kb": after["slab_kb"] - before["slab_kb"],
        "sunreclaim_kb": after["sunreclaim_kb"] - before["sunreclaim_kb"],
        "objects": {
            name: new.get(name, (0, 0))[0] - old.get(name, (0, 0))[0] for name in KEY_CACHES
        },
        "top_caches_kb": {name: grown[name] / 1024 for name in top},
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_peak(pid: int) -> int | None:
    """Peak resident set size of process ``pid`` since it started (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def count_tree(root: str) -> tuple[int, int]:
    """Files and directories below ``root`` (not counting it); ``(0, 0)`` if it is gone."""
    files = dirs = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                dirs += 1
                stack.append(entry.path)
            else:
                files += 1
    return files, dirs


def remove_contents(root: str) -> None:
    """Delete everything below ``root`` (a tmpfs directory of the bench)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def split_range(indices: range, parts: int) -> list[range]:
    """``indices`` cut into ``parts`` contiguous, non-empty ranges of nearly equal size."""
    parts = max(1, min(parts, len(indices)))
    size, extra = divmod(len(indices), parts)
    out, start = [], indices.start
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def lock_owner() -> tuple[int, int]:
    """The owner PBS gives its lock files (backup:backup), or ours if there is no such user."""
    try:
        user = pwd.getpwnam("backup")
    except KeyError:
        return os.getuid(), os.getgid()
    return user.pw_uid, user.pw_gid


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """What the numbers depend on: CPUs, kernel, memory, Python and library versions."""
    cpu = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_total_kb": meminfo()["MemTotal"],
        "python": platform.python_version(),
        "pyfuse3": package_version("pyfuse3"),
        "trio": package_version("trio"),
        "lockfs": __version__,
    }


# --------------------------------------------------------------------- targets


@dataclass
class Target:
    """One filesystem under test and the directory the bench works in."""

    name: str
    mountpoint: str
    root: str
    #: Node-table size when idle (lockfs): reclaim is complete once it is back to this.
    idle_nodes: int = 1
    reclaim_delay: float = 0.0
    dir_grace: float = 0.0
    daemon_pid: int | None = None
    #: False for a reference server (bench_reference): it keeps its entries, nothing to wait for.
    reclaims: bool = True
    #: Reads the status where there is no control socket (the C reference server).
    read_status: Callable[[], dict[str, Any]] | None = None

    @property
    def is_lockfs(self) -> bool:
        return self.daemon_pid is not None

    def status(self) -> dict[str, Any]:
        """The daemon's status (lockfs and the reference servers)."""
        if self.read_status is not None:
            return self.read_status()
        return query(self.mountpoint, "status")

    def settle_timeout(self) -> float:
        """How long reclaim may take: file delay, then one grace period per directory level."""
        return self.reclaim_delay + 4 * self.dir_grace + 60

    def settle(self) -> dict[str, Any]:
        """Wait until lockfs has reclaimed everything the bench left (tmpfs: delete it)."""
        if not self.is_lockfs:
            remove_contents(self.root)
            return {}
        if not self.reclaims:
            return {"settled": None, "reclaim_s": None, "status": self.status()}
        polled = wait_until(
            lambda: (s := self.status())["nodes"] <= self.idle_nodes and s,
            self.settle_timeout(),
            max_delay=0.25,
        )
        if polled is None:
            status = self.status()
            log(
                f"warning: lockfs still has {status['nodes']} nodes after "
                f"{self.settle_timeout():.0f}s (idle: {self.idle_nodes})"
            )
            return {"settled": False, "reclaim_s": None, "status": status}
        status, seconds = polled
        return {"settled": True, "reclaim_s": seconds, "status": status}


@dataclass
class Snapshot:
    """The daemon's request counters, CPU time and status at one moment."""

    requests: dict[str, int]
    cpu_s: float
    status: dict[str, Any]


def snapshot(target: Target, *, cpu_first: bool) -> Snapshot | None:
    """Counters and CPU of the lockfs daemon; the status query stays outside the CPU window.

    Before a run pass ``cpu_first=False`` (query, then read CPU), after it ``cpu_first=True``.
    """
    if not target.is_lockfs:
        return None
    assert target.daemon_pid is not None
    if cpu_first:
        cpu = cpu_seconds(target.daemon_pid)
        status = target.status()
    else:
        status = target.status()
        cpu = cpu_seconds(target.daemon_pid)
    return Snapshot(dict(status["requests"]), cpu, status)


def table_state(status: dict[str, Any]) -> dict[str, int]:
    """The node-table figures of a status reply."""
    keys = ("nodes", "files", "dirs", "open", "rss_bytes", "reclaimed", "invalidations")
    return {key: status[key] for key in keys}


# --------------------------------------------------------------------- workers


class Workers:
    """Forked worker processes, one pipe each; killed on exit if still running."""

    def __init__(
        self, target: Callable[..., None], jobs: Sequence[tuple[Any, ...]], *, go: bool = False
    ) -> None:
        """Start ``target(conn, *job)`` for each job (``target(conn, go_event, *job)`` with
        ``go``: the workers then start their timed part together once :attr:`go` is set)."""
        ctx = multiprocessing.get_context("fork")
        self.go = ctx.Event()
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        for job in jobs:
            parent, child = ctx.Pipe()
            args = (child, self.go, *job) if go else (child, *job)
            proc = ctx.Process(target=target, args=args, daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect(self, tag: str, timeout: float) -> list[dict[str, Any]]:
        """The ``tag`` message of every worker; raises on an error report, exit or timeout."""
        deadline = time.monotonic() + timeout
        results: dict[int, dict[str, Any]] = {}
        while len(results) < len(self.conns):
            remaining = deadline - time.monotonic()
            pending = [c for i, c in enumerate(self.conns) if i not in results]
            if remaining <= 0:
                raise BenchError(f"{len(pending)} workers did not report {tag!r} in {timeout}s")
            for conn in multiprocessing.connection.wait(pending, remaining):
                assert isinstance(conn, multiprocessing.connection.Connection)
                index = self.conns.index(conn)
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    proc = self.procs[index]
                    proc.join(1)
                    raise BenchError(f"worker {proc.pid} exited ({proc.exitcode})") from None
                if kind == "error":
                    raise BenchError(payload)
                if kind != tag:
                    raise BenchError(f"worker sent {kind!r}, expected {tag!r}")
                results[index] = payload
        return [results[i] for i in range(len(self.conns))]

    def send_all(self, message: str) -> None:
        for conn in self.conns:
            conn.send(message)

    def close(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
        for conn in self.conns:
            conn.close()


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput, per-process latency and client CPU of one timed run."""
    cycles = sum(r["cycles"] for r in results)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    latency = sum((r["end"] - r["start"]) / r["cycles"] for r in results) / len(results)
    client_cpu = sum(r["cpu_s"] for r in results)
    return {
        "procs": len(results),
        "cycles": cycles,
        "wall_s": wall,
        "cycles_per_s": cycles / wall if wall > 0 else None,
        "us_per_cycle": wall / cycles * 1e6,
        "latency_us": latency * 1e6,
        "client_cpu_us_per_cycle": client_cpu / cycles * 1e6,
    }


def daemon_figures(before: Snapshot, after: Snapshot, cycles: int) -> dict[str, Any]:
    """Request counts by type, daemon CPU and reclaim activity between two snapshots."""
    names = set(before.requests) | set(after.requests)
    deltas = {n: after.requests.get(n, 0) - before.requests.get(n, 0) for n in names}
    deltas = {n: d for n, d in sorted(deltas.items()) if d}
    total = sum(deltas.values())
    cpu = after.cpu_s - before.cpu_s
    return {
        "requests": deltas,
        "requests_per_cycle": {n: d / cycles for n, d in deltas.items()},
        "requests_total_per_cycle": total / cycles,
        "daemon_cpu_s": cpu,
        "daemon_cpu_us_per_cycle": cpu / cycles * 1e6,
        "daemon_cpu_us_per_request": cpu / total * 1e6 if total else None,
        "created_per_cycle": (after.status["created"] - before.status["created"]) / cycles,
        "reclaimed_per_cycle": (after.status["reclaimed"] - before.status["reclaimed"]) / cycles,
    }


def run_timeout(cycles: int) -> float:
    """A generous limit for one timed run (10 ms per cycle on top of a minute)."""
    return 60 + cycles * 0.01


def timed_run(
    target: Target,
    kind: str,
    jobs: list[dict[str, Any]],
    *,
    prewarm: Callable[[], None] | None = None,
    settle: bool = False,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one loop per job in parallel worker processes and measure it.

    Workers build their paths, report ready and start together. For lockfs, the request
    counters and the daemon's CPU time are read just before the start and just after the
    last worker finished; with ``settle`` also once reclaim has finished, so that the
    figures ``with_reclaim`` include the FORGETs and the reclaim work a cycle causes.
    ``on_done(result)`` runs right after the run, before any settling.
    """
    cycles = sum(job.get("cycles", 0) or len(job.get("indices", ())) for job in jobs)
    jobs_args = [(kind, job) for job in jobs]
    with Workers(bench_workers.loop_worker, jobs_args, go=True) as workers:
        workers.expect("ready", 60 + cycles * 1e-4)
        if prewarm is not None:
            prewarm()
        before = snapshot(target, cpu_first=False)
        workers.go.set()
        results = workers.expect("done", run_timeout(cycles))
        after = snapshot(target, cpu_first=True)
    out = summarize(results)
    if on_done is not None:
        on_done(out)
    if before is None or after is None:
        out["total_cpu_us_per_cycle"] = out["client_cpu_us_per_cycle"]
        if settle:
            target.settle()
        return out
    out.update(daemon_figures(before, after, out["cycles"]))
    out["total_cpu_us_per_cycle"] = out["client_cpu_us_per_cycle"] + out["daemon_cpu_us_per_cycle"]
    out["table_after_run"] = table_state(after.status)
    if settle:
        settled = target.settle()
        final = snapshot(target, cpu_first=True)
        assert final is not None
        out["settled"] = settled["settled"]
        out["reclaim_s"] = settled["reclaim_s"]
        out["with_reclaim"] = daemon_figures(before, final, out["cycles"])
        out["table_after_reclaim"] = table_state(final.status)
    return out


@contextlib.contextmanager
def holding(target: Target, first: int, count: int, procs: int) -> Iterator[dict[str, Any]]:
    """Hold locks ``first .. first+count-1`` on ``target`` in ``procs`` processes."""
    ranges = split_range(range(first, first + count), procs)
    with Workers(bench_workers.hold_worker, [(target.root, r) for r in ranges]) as workers:
        infos = workers.expect("ready", run_timeout(count))
        wall = max(i["end"] for i in infos) - min(i["start"] for i in infos)
        yield {
            "held": sum(i["held"] for i in infos),
            "procs": len(infos),
            "nofile_limit": max(i["nofile"] for i in infos),
            "acquire_s": wall,
            "acquire_us_per_lock": wall / count * 1e6,
        }
        workers.send_all("release")
        workers.expect("done", 60 + count * 1e-3)


def ratios(tmpfs: dict[str, Any], lockfs: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """lockfs / tmpfs for each of ``keys`` present and non-zero in both."""
    out = {}
    for key in keys:
        a, b = tmpfs.get(key), lockfs.get(key)
        out[key] = (
            b / a if isinstance(a, int | float) and isinstance(b, int | float) and a else None
        )
    return out


RUN_RATIO_KEYS = ("us_per_cycle", "latency_us", "cycles_per_s", "total_cpu_us_per_cycle")


# --------------------------------------------------------------------- sections


@dataclass
class Bench:
    """Everything a section needs: the two targets, sizes and options."""

    tmpfs: Target
    lockfs: Target
    sizes: Sizes
    procs: int
    held_procs: int
    drop: bool
    owner: tuple[int, int] = field(default_factory=lock_owner)
    next_index: int = 0
    #: Reference servers measured beside tmpfs and lockfs in the hot and cold sections.
    references: list[Target] = field(default_factory=list)
    #: Rounds the hot and cold runs are cut into, the targets taking turns (bench_rounds).
    rounds: int = 1

    @property
    def targets(self) -> tuple[Target, Target]:
        return self.tmpfs, self.lockfs

    @property
    def run_targets(self) -> tuple[Target, ...]:
        """Targets of the hot and cold sections: tmpfs, the reference servers, lockfs."""
        return self.tmpfs, *self.references, self.lockfs

    @property
    def proc_counts(self) -> list[int]:
        return sorted({1, self.procs})

    def allocate(self, count: int) -> range:
        """Chunk numbers never used before in this run, so every cold path is fresh."""
        out = range(self.next_index, self.next_index + count)
        self.next_index += count
        return out

    def hot_jobs(self, path: str, cycles: int, procs: int) -> list[dict[str, Any]]:
        return [{"path": path, "cycles": len(r)} for r in split_range(range(cycles), procs)]

    def cold_jobs(self, target: Target, indices: range, procs: int) -> list[dict[str, Any]]:
        uid, gid = self.owner
        return [
            {"root": target.root, "indices": r, "uid": uid, "gid": gid}
            for r in split_range(indices, procs)
        ]

    def hot_run(self, target: Target, path: str, cycles: int, procs: int) -> dict[str, Any]:
        """Hot cycles on ``path``; the file exists and is cached before the clock starts."""

        def prewarm() -> None:
            bench_workers.create_dir_all(os.path.dirname(path))
            bench_workers.hot_cycle(path)

        return timed_run(target, "hot", self.hot_jobs(path, cycles, procs), prewarm=prewarm)


def in_rounds(
    bench: Bench, label: str, run_part: Callable[[Target, int], dict[str, Any]], *, settle: bool
) -> dict[str, dict[str, Any]]:
    """One run per target of the hot and cold sections, cut into ``bench.rounds`` parts that
    the targets take in turns (bench_rounds); ``run_part(target, part)`` measures one part.

    With ``settle``, every target first finishes what an earlier run left, and the figures
    ``with_reclaim`` go from the start of its first part until its reclaim has finished
    (including the daemon's idle time while the other targets run their parts).
    """
    targets = bench.run_targets
    if settle:
        for target in targets:
            target.settle()
    start = {target.name: snapshot(target, cpu_first=False) for target in targets}
    parts: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
    log(f"{label}, {bench.rounds} rounds: {', '.join(t.name for t in targets)}")
    for part, target in bench_rounds.turns(targets, bench.rounds):
        parts[target.name].append(run_part(target, part))
    out = {}
    for target in targets:
        figures = bench_rounds.combine(parts[target.name])
        before = start[target.name]
        if settle:
            settled = target.settle()
            final = snapshot(target, cpu_first=True)
            if before is not None and final is not None:
                figures["settled"] = settled["settled"]
                figures["reclaim_s"] = settled["reclaim_s"]
                figures["with_reclaim"] = daemon_figures(before, final, figures["cycles"])
                figures["table_after_reclaim"] = table_state(final.status)
        out[target.name] = figures
    return out


def section_hot(bench: Bench) -> dict[str, Any]:
    """Hot cycles on one path, 1 and N processes, on every target in turns."""
    cycles = bench.sizes.hot_cycles
    runs = []
    for procs in bench.proc_counts:
        run: dict[str, Any] = {"procs": procs, "cycles": cycles}
        shares = split_range(range(cycles), bench.rounds)

        def hot_part(target: Target, part: int) -> dict[str, Any]:
            path = os.path.join(target.root, "hot", "vm-100.lck")
            return bench.hot_run(target, path, len(shares[part]), procs)  # noqa: B023

        run.update(
            in_rounds(bench, f"hot: {cycles:,} cycles, {procs} processes", hot_part, settle=False)
        )
        run["ratio"] = ratios(run["tmpfs"], run["lockfs"], RUN_RATIO_KEYS)
        run.update(bench_reference.reference_ratios(run))
        runs.append(run)
    return {"cycles": cycles, "runs": runs}


def section_cold(bench: Bench) -> dict[str, Any]:
    """PBS's sequence on fresh chunk paths, 1 and N processes, on every target in turns;
    reclaim waited for."""
    cycles = bench.sizes.cold_cycles
    runs = []
    for procs in bench.proc_counts:
        run: dict[str, Any] = {"procs": procs, "cycles": cycles}
        shares = split_range(bench.allocate(cycles), bench.rounds)

        def cold_part(target: Target, part: int) -> dict[str, Any]:
            return timed_run(target, "cold", bench.cold_jobs(target, shares[part], procs))  # noqa: B023

        run.update(
            in_rounds(bench, f"cold: {cycles:,} cycles, {procs} processes", cold_part, settle=True)
        )
        run["ratio"] = ratios(run["tmpfs"], run["lockfs"], RUN_RATIO_KEYS)
        run.update(bench_reference.reference_ratios(run))
        runs.append(run)
    return {"cycles": cycles, "runs": runs}


def memory_lockfs(bench: Bench, indices: range) -> dict[str, Any]:
    """N cold locks on lockfs: table, RSS and slab before, at the end, after reclaim."""
    target = bench.lockfs
    target.settle()
    before = table_state(target.status())
    slab0 = slab_reading(bench.drop)
    at_end: dict[str, Any] = {}

    def read_caches(result: dict[str, Any]) -> None:
        at_end.update(slab_caches())

    jobs = bench.cold_jobs(target, indices, bench.procs)
    run = timed_run(target, "cold", jobs, settle=True, on_done=read_caches)
    slab1 = slab_reading(bench.drop)
    files, dirs = count_tree(target.root)  # after reclaim: listing makes lookups
    after = run.get("table_after_reclaim", {})
    assert target.daemon_pid is not None
    return {
        "run": run,
        # Kernel objects the mount pins at the end of the run (no caches dropped).
        "objects_at_end_of_run": {
            name: at_end.get(name, (0, 0))[0] - slab0["caches"].get(name, (0, 0))[0]
            for name in KEY_CACHES
        },
        "rss_peak_bytes": rss_peak(target.daemon_pid),
        "files_left": files,
        "dirs_left": dirs,
        "slab_growth": slab_growth(slab0, slab1),
        "drop_caches": slab1["dropped"],
        "table_before": before,
        "table_after_run": run.get("table_after_run"),
        "table_after_reclaim": after,
        "rss_before_bytes": before["rss_bytes"],
        "rss_after_run_bytes": run.get("table_after_run", {}).get("rss_bytes"),
        "rss_after_bytes": after.get("rss_bytes"),
        "rss_growth_bytes": after.get("rss_bytes", 0) - before["rss_bytes"],
        "reclaim_s": run.get("reclaim_s"),
        "settled": run.get("settled"),
    }


def memory_tmpfs(bench: Bench, indices: range) -> dict[str, Any]:
    """N cold locks on tmpfs: files and slab they leave, and slab after deleting them."""
    target = bench.tmpfs
    remove_contents(target.root)
    slab0 = slab_reading(bench.drop)
    run = timed_run(target, "cold", bench.cold_jobs(target, indices, bench.procs))
    slab1 = slab_reading(bench.drop)
    files, dirs = count_tree(target.root)
    remove_contents(target.root)
    slab2 = slab_reading(bench.drop)
    return {
        "run": run,
        "files_left": files,
        "dirs_left": dirs,
        "slab_growth": slab_growth(slab0, slab1),
        "slab_growth_after_cleanup": slab_growth(slab0, slab2),
        "drop_caches": slab1["dropped"],
    }


def section_memory(bench: Bench) -> dict[str, Any]:
    """What N distinct cold locks leave behind on each filesystem."""
    count = bench.sizes.memory_locks
    indices = bench.allocate(count)
    log(f"memory: {count:,} cold locks, {bench.procs} processes, lockfs (then reclaim)")
    lockfs = memory_lockfs(bench, indices)
    log(f"memory: {count:,} cold locks, {bench.procs} processes, tmpfs")
    tmpfs = memory_tmpfs(bench, indices)
    for result in (tmpfs, lockfs):
        growth = result["slab_growth"]
        result["slab_bytes_per_lock"] = growth["slab_kb"] * 1024 / count
        result["sunreclaim_bytes_per_lock"] = growth["sunreclaim_kb"] * 1024 / count
    return {"locks": count, "procs": bench.procs, "tmpfs": tmpfs, "lockfs": lockfs}


def holder_procs(count: int, procs: int) -> int:
    """Processes needed to hold ``count`` locks: ``procs``, or more if RLIMIT_NOFILE's hard
    limit is too low for that and cannot be raised (no CAP_SYS_RESOURCE, as in containers)."""
    needed = -(-count // procs) + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= needed:
        return procs
    try:  # the holders inherit the hard limit and raise their soft limit to their share
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, needed))
    except (ValueError, OSError):
        more = -(-count // (hard - 64))
        log(f"held: RLIMIT_NOFILE hard limit {hard} cannot be raised: using {more} processes")
        return more
    return procs


def held_target(bench: Bench, target: Target, count: int) -> dict[str, Any]:
    """Hot cycles on another path with FEW_HELD held, then with ``count`` held."""
    cycles = bench.sizes.hot_cycles
    probe = os.path.join(target.root, "probe", "vm-200.lck")
    out: dict[str, Any] = {}
    for label, held in (("few", FEW_HELD), ("many", count)):
        procs = holder_procs(held, bench.held_procs)
        log(f"held: {held:,} locks in {procs} processes, {target.name}")
        first = 0 if label == "few" else FEW_HELD
        with holding(target, first, held, procs) as info:
            if target.is_lockfs:
                info["table_while_held"] = table_state(target.status())
            info["hot"] = bench.hot_run(target, probe, cycles, 1)
        out[label] = info
    out["cost_ratio"] = out["many"]["hot"]["us_per_cycle"] / out["few"]["hot"]["us_per_cycle"]
    log(f"held: releasing, {target.name}")
    settled = target.settle()
    if target.is_lockfs:
        out["reclaim_s"] = settled.get("reclaim_s")
        out["table_after_reclaim"] = table_state(settled["status"])
    return out


def section_held(bench: Bench) -> dict[str, Any]:
    """The held-locks section on both targets."""
    count = bench.sizes.held_locks
    out: dict[str, Any] = {"held": count, "few": FEW_HELD}
    for target in bench.targets:
        out[target.name] = held_target(bench, target, count)
    out["procs"] = out["lockfs"]["many"]["procs"]
    out["ratio"] = {
        "few_us_per_cycle": out["lockfs"]["few"]["hot"]["us_per_cycle"]
        / out["tmpfs"]["few"]["hot"]["us_per_cycle"],
        "many_us_per_cycle": out["lockfs"]["many"]["hot"]["us_per_cycle"]
        / out["tmpfs"]["many"]["hot"]["us_per_cycle"],
    }
    return out


SECTION_FUNCS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "hot": section_hot,
    "cold": section_cold,
    "memory": section_memory,
    "held": section_held,
}


# --------------------------------------------------------------------- output


def fmt(value: Any) -> str:
    """A number for a table: thousands separators, about three significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        if value == 0:
            return "0"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def render_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [list(header)] + [[str(r[0]), *(fmt(v) for v in r[1:])] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title]
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(parts).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


RUN_HEADER = ("", "tmpfs", "lockfs", "lockfs/tmpfs")


def run_header(run: dict[str, Any]) -> tuple[str, ...]:
    """Columns of a run's table: tmpfs, reference servers, lockfs, then lockfs's ratios."""
    refs = bench_reference.columns_of(run)
    return ("", "tmpfs", *refs, "lockfs", "lockfs/tmpfs", *(f"lockfs/{name}" for name in refs))


def run_rows(run: dict[str, Any], *, cold: bool) -> list[list[Any]]:
    """Rows of one set of timed runs: tmpfs, the reference servers (if any) and lockfs."""
    t, lf, r = run["tmpfs"], run["lockfs"], run["ratio"]
    reclaim = lf.get("with_reclaim", lf)
    refs = [bench_reference.daemon_view(run[n]) for n in bench_reference.columns_of(run)]
    ref_ratios = [run[f"ratio_{n}"] for n in bench_reference.columns_of(run)]
    suffix = " (incl. reclaim)" if cold else ""

    def row(label: str, key: str, tmpfs: Any, lockfs: Any, ratio: Any) -> list[Any]:
        return [
            label,
            tmpfs,
            *(ref.get(key) for ref in refs),
            lockfs,
            ratio,
            *(ratios.get(key) for ratios in ref_ratios),
        ]

    def both(label: str, key: str) -> list[Any]:
        return row(label, key, t[key], lf[key], r.get(key))

    return [
        both("µs per cycle (wall / cycles)", "us_per_cycle"),
        both("µs per cycle, per process", "latency_us"),
        both("cycles/s", "cycles_per_s"),
        row("client CPU µs/cycle", "client_cpu_us_per_cycle", t["client_cpu_us_per_cycle"],
            lf["client_cpu_us_per_cycle"], None),
        row("daemon CPU µs/cycle" + suffix, "daemon_cpu_us_per_cycle", None,
            reclaim["daemon_cpu_us_per_cycle"], None),
        both("total CPU µs/cycle", "total_cpu_us_per_cycle"),
        row("FUSE requests/cycle" + suffix, "requests_total_per_cycle", None,
            reclaim["requests_total_per_cycle"], None),
        row("daemon CPU µs/request" + suffix, "daemon_cpu_us_per_request", None,
            reclaim["daemon_cpu_us_per_request"], None),
    ]  # fmt: skip


def render_runs(title: str, section: dict[str, Any], *, cold: bool) -> str:
    blocks = []
    for run in section["runs"]:
        blocks.append(
            render_table(
                f"{title}: {run['cycles']:,} cycles, {run['procs']} process(es)",
                run_header(run),
                run_rows(run, cold=cold),
            )
        )
    return "\n\n".join(blocks)


def request_columns(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, lockfs daemon figures) for every lockfs measurement of the run."""
    cols = []
    for run in results.get("hot", {}).get("runs", []):
        cols.append((f"hot {run['procs']}p", run["lockfs"]))
    for run in results.get("cold", {}).get("runs", []):
        cols.append((f"cold {run['procs']}p", run["lockfs"].get("with_reclaim", run["lockfs"])))
    memory = results.get("memory")
    if memory:
        run = memory["lockfs"]["run"]
        cols.append((f"cold N={memory['locks']:,}", run.get("with_reclaim", run)))
    held = results.get("held")
    if held:
        cols.append((f"hot, {held['few']} held", held["lockfs"]["few"]["hot"]))
        cols.append((f"hot, {held['held']:,} held", held["lockfs"]["many"]["hot"]))
    return cols


def render_requests(results: dict[str, Any]) -> str:
    """FUSE requests per cycle by type, one column per lockfs measurement."""
    return render_request_table(
        "FUSE requests per cycle by type (lockfs; cold columns include reclaim and FORGET)",
        request_columns(results),
    )


def render_request_table(title: str, cols: list[tuple[str, dict[str, Any]]]) -> str:
    """Requests per cycle by type, total, daemon CPU per cycle and per request; one column
    per measurement."""
    if not cols:
        return ""
    seen = {name for _, figures in cols for name in figures.get("requests_per_cycle", {})}
    seen |= ALWAYS_SHOWN
    names = [n for n in REQUEST_ORDER if n in seen] + sorted(seen - set(REQUEST_ORDER))
    rows: list[list[Any]] = [
        [name, *(figures.get("requests_per_cycle", {}).get(name, 0.0) for _, figures in cols)]
        for name in names
    ]
    rows.append(["total", *(f.get("requests_total_per_cycle") for _, f in cols)])
    rows.append(["daemon CPU µs/cycle", *(f.get("daemon_cpu_us_per_cycle") for _, f in cols)])
    rows.append(["daemon CPU µs/request", *(f.get("daemon_cpu_us_per_request") for _, f in cols)])
    return render_table(title, ["request", *(label for label, _ in cols)], rows)


def mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def render_memory(memory: dict[str, Any]) -> str:
    t, lf = memory["tmpfs"], memory["lockfs"]
    tb, la, lr = lf["table_before"], lf["table_after_run"] or {}, lf["table_after_reclaim"] or {}
    tg, lg, tc = t["slab_growth"], lf["slab_growth"], t["slab_growth_after_cleanup"]
    rows = [
        ["files left", t["files_left"], lf["files_left"]],
        ["directories left", t["dirs_left"], lf["dirs_left"]],
        ["Slab growth (KiB)", tg["slab_kb"], lg["slab_kb"]],
        ["SUnreclaim growth (KiB)", tg["sunreclaim_kb"], lg["sunreclaim_kb"]],
        ["Slab growth per lock (bytes)", t["slab_bytes_per_lock"], lf["slab_bytes_per_lock"]],
        *(
            [f"{name} objects growth", tg["objects"][name], lg["objects"][name]]
            for name in KEY_CACHES
        ),
        ["Slab growth after deleting the files (KiB)", tc["slab_kb"], None],
        ["µs per cycle (wall / cycles)", t["run"]["us_per_cycle"], lf["run"]["us_per_cycle"]],
        ["daemon RSS before (MiB)", None, mib(lf["rss_before_bytes"])],
        ["daemon RSS at end of run (MiB)", None, mib(lf["rss_after_run_bytes"])],
        ["daemon RSS after reclaim (MiB)", None, mib(lf["rss_after_bytes"])],
        ["daemon peak RSS since start (MiB)", None, mib(lf["rss_peak_bytes"])],
        ["node table entries before", None, tb.get("nodes")],
        ["node table entries at end of run", None, la.get("nodes")],
        ["node table entries after reclaim", None, lr.get("nodes")],
        ["fuse_inode objects at end of run", None, lf["objects_at_end_of_run"]["fuse_inode"]],
        ["seconds from end of run to reclaimed", None, lf["reclaim_s"]],
    ]
    return render_table(
        f"Memory after {memory['locks']:,} distinct cold locks ({memory['procs']} processes)",
        ("", "tmpfs", "lockfs"),
        rows,
    )


def render_held(held: dict[str, Any]) -> str:
    t, lf = held["tmpfs"], held["lockfs"]

    def pair(key: Callable[[dict[str, Any]], Any]) -> list[Any]:
        a, b = key(t), key(lf)
        ratio = b / a if isinstance(a, int | float) and isinstance(b, int | float) and a else None
        return [a, b, ratio]

    few, many = held["few"], held["held"]
    while_held = lf["many"].get("table_while_held", {})
    rows = [
        [f"hot µs/cycle, {few} held", *pair(lambda d: d["few"]["hot"]["us_per_cycle"])],
        [f"hot µs/cycle, {many:,} held", *pair(lambda d: d["many"]["hot"]["us_per_cycle"])],
        [f"cost ratio {many:,} / {few} held", t["cost_ratio"], lf["cost_ratio"], None],
        [
            f"FUSE requests/hot cycle, {many:,} held",
            None,
            lf["many"]["hot"].get("requests_total_per_cycle"),
            None,
        ],
        [
            f"µs to take each of {many:,} locks",
            *pair(lambda d: d["many"]["acquire_us_per_lock"]),
        ],
        ["node table entries while held", None, while_held.get("nodes"), None],
        ["daemon RSS while held (MiB)", None, mib(while_held.get("rss_bytes")), None],
        ["seconds to reclaim after release", None, lf.get("reclaim_s"), None],
    ]
    return render_table(
        f"Held locks: {many:,} held by {held['procs']} processes vs {few}; "
        "hot cycles on another path",
        RUN_HEADER,
        rows,
    )


def render(results: dict[str, Any]) -> str:
    """All tables of a run."""
    meta = results["meta"]
    cfg = results["config"]
    blocks = [
        f"lockfs-bench {meta['date']}: {meta['nproc']} CPUs ({meta['cpu']}), "
        f"Linux {meta['kernel']}, Python {meta['python']}, pyfuse3 {meta['pyfuse3']}, "
        f"trio {meta['trio']}\nlockfs {cfg['lockfs_mount']} reclaim_delay={cfg['reclaim_delay']} "
        f"dir_grace={cfg['dir_grace']}; tmpfs {cfg['tmpfs_mount']}; {cfg['procs']} processes "
        f"for N; preset {cfg['preset']}; reference servers: "
        f"{', '.join(cfg.get('references', [])) or 'none'}; hot and cold runs in "
        f"{cfg.get('rounds', 1)} rounds"
    ]
    if "hot" in results:
        blocks.append(
            render_runs(
                "Hot: open(O_RDWR|O_CREAT) + flock(LOCK_EX) + close", results["hot"], cold=False
            )
        )
    if "cold" in results:
        blocks.append(
            render_runs("Cold: PBS chunk lock sequence, fresh path", results["cold"], cold=True)
        )
    if "memory" in results:
        blocks.append(render_memory(results["memory"]))
    if "held" in results:
        blocks.append(render_held(results["held"]))
    requests = render_requests(results)
    if requests:
        blocks.append(requests)
    for name in bench_reference.REFERENCES:
        table = render_request_table(
            f"FUSE requests per cycle by type ({name} server)",
            bench_reference.request_columns(results, name),
        )
        if table:
            blocks.append(table)
    for section, error in results.get("errors", {}).items():
        blocks.append(f"{section}: FAILED: {error}")
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------- mounts


def _die_with_parent() -> None:
    """In the daemon child: get SIGTERM (unmount when idle) if the bench is killed."""
    import ctypes

    ctypes.CDLL(None).prctl(bench_workers.PR_SET_PDEATHSIG, signal.SIGTERM)


class OwnDaemon:
    """A ``lockfs -f`` daemon in a subprocess, mounted at a temporary directory (or another
    server: ``command``, mounted when ``mounted(mountpoint)``, with a control socket)."""

    def __init__(
        self,
        mountpoint: str,
        options: str,
        log_path: str,
        command: list[str] | None = None,
        mounted: Callable[[str], bool] = is_lockfs_mounted,
        status: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.mounted = mounted
        self.read_status = status
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = command or [sys.executable, "-m", "lockfs", mountpoint, "-f", "-o", options]
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C goes to the bench, which stops the daemon
                preexec_fn=_die_with_parent,
            )

    def log_tail(self, lines: int = 20) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def wait_ready(self, timeout: float = 20) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if not self.mounted(self.mountpoint) or os.stat(self.mountpoint).st_ino != 1:
                return None
            try:
                if self.read_status is not None:
                    return self.read_status(self.proc.pid)
                return query(self.mountpoint, "status")
            except (ControlError, OSError, ValueError):
                return None

        polled = wait_until(ready, timeout)
        if polled is None:
            raise BenchError(f"{self.name} did not answer at {self.mountpoint} in {timeout}s")
        return polled[0]

    def stop(self) -> None:
        """SIGTERM (the daemon unmounts when nothing is open), then force if needed."""
        if self.proc.poll() is not None:
            log(f"{self.name} had exited ({self.proc.returncode}):\n{self.log_tail()}")
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop on SIGTERM: killing it")
                self.proc.kill()
                self.proc.wait()
        unmount(self.mountpoint, self.mounted)

    @property
    def name(self) -> str:
        return "lockfs daemon" if self.mounted is is_lockfs_mounted else "reference server"


def unmount(path: str, mounted: Callable[[str], bool]) -> None:
    """Unmount ``path`` while ``mounted(path)``; lazily if it stays busy."""
    if not mounted(path):
        return
    try:
        umount(path)
    except OSError as exc:
        if not is_busy(exc):
            raise
        log(f"{path} is busy: detaching it lazily")
        umount(path, lazy=True)


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
    stack.callback(unmount, path, is_tmpfs_mount)
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
        log(f"starting lockfs -f -o {options} at {mountpoint}")
        daemon = OwnDaemon(mountpoint, options, os.path.join(tmp, "lockfs.log"))
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
    """The reference servers (bench_reference), with lockfs's cache timeouts."""
    if args.no_reference:
        return []
    targets = []
    binary, why_not = bench_reference.build_libfuse(tmp)
    if binary is None:
        log(f"no libfuse reference server: {why_not}")
    for name in bench_reference.REFERENCES:
        mountpoint = os.path.join(tmp, name)
        status: Callable[[int], dict[str, Any]] | None = None
        if name == bench_reference.MINIMAL:
            command = bench_reference.minimal_command(mountpoint, lockfs.dir_grace)
            mounted = bench_reference.is_minimal_mounted
        elif binary is not None:
            counts = os.path.join(tmp, "libfuse.counts")
            command = bench_reference.libfuse_command(binary, mountpoint, lockfs.dir_grace, counts)
            mounted = bench_reference.is_libfuse_mounted
            status = functools.partial(bench_reference.libfuse_status, counts)
        else:
            continue
        os.mkdir(mountpoint)
        log(f"starting the {name} reference server at {mountpoint}")
        server = OwnDaemon(
            mountpoint, "", os.path.join(tmp, f"{name}.log"), command, mounted, status
        )
        stack.callback(server.stop)
        ready = server.wait_ready()
        target = Target(name, mountpoint, mountpoint, daemon_pid=ready["pid"], reclaims=False)
        if status is not None:
            target.read_status = functools.partial(status, ready["pid"])
        targets.append(target)
    return targets


# --------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lockfs.bench",
        description="Measure lock cycles and memory on lockfs beside tmpfs, in the same run.",
        epilog="Run as root. Explained in docs/benchmark.md.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, < 20 s)")
    size.add_argument("--full", action="store_true", help="the issue's sizes (1,000,000 locks)")
    parser.add_argument("--mount", metavar="DIR", help="measure this lockfs mount")
    parser.add_argument("--tmpfs", metavar="DIR", help="measure this tmpfs mount")
    parser.add_argument("--procs", type=int, default=max(2, os.cpu_count() or 2), metavar="N")
    parser.add_argument("--held-procs", type=int, default=4, metavar="N")
    parser.add_argument("--hot-cycles", type=int, metavar="N")
    parser.add_argument("--cold-cycles", type=int, metavar="N")
    parser.add_argument("--memory-locks", type=int, metavar="N")
    parser.add_argument("--held-locks", type=int, metavar="N")
    parser.add_argument("--reclaim-delay", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument(
        "--dir-grace", type=float, metavar="SECONDS", help="default 10 (--quick: 0.5)"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections to run ({','.join(SECTIONS)})"
    )
    parser.add_argument("--json", metavar="FILE", help="write all numbers to FILE")
    parser.add_argument("--keep-going", action="store_true", help="run later sections on errors")
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="hot and cold runs in N parts, the targets taking turns (default 4; --quick: 2)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="do not run the hot and cold cycles on the reference servers too",
    )
    parser.add_argument(
        "--no-drop-caches", action="store_true", help="do not drop caches before slab readings"
    )
    args = parser.parse_args(argv)
    args.preset = "quick" if args.quick else "full" if args.full else "default"
    if args.dir_grace is None:
        args.dir_grace = 0.5 if args.quick else 10.0
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.procs < 1 or args.held_procs < 1:
        parser.error("--procs and --held-procs must be at least 1")
    if args.rounds is None:
        args.rounds = 2 if args.quick else 4
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = PRESETS[args.preset]
    overrides = {
        key: getattr(args, key)
        for key in ("hot_cycles", "cold_cycles", "memory_locks", "held_locks")
        if getattr(args, key) is not None
    }
    return Sizes(**{**asdict(base), **overrides})


def run_sections(
    bench: Bench, sections: Sequence[str], results: dict[str, Any], keep_going: bool
) -> None:
    """Run ``sections`` in order, storing each result (or its error) in ``results``."""
    for name in sections:
        try:
            results[name] = SECTION_FUNCS[name](bench)
        except (BenchError, OSError, ControlError) as exc:
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: FAILED: {exc}")
            if os.environ.get("LOCKFS_BENCH_TRACEBACK"):
                traceback.print_exc()
            if not keep_going:
                return
            kill_workers()


def write_json(path: str, results: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("lockfs-bench: must run as root (it mounts filesystems)", file=sys.stderr)
        return 1
    # Ctrl-C interrupts even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    sizes = sizes_from(args)
    results: dict[str, Any] = {"meta": machine_facts(), "errors": {}}
    try:
        with environment(args) as (tmpfs, lockfs, references):
            results["config"] = {
                "preset": args.preset,
                "sizes": asdict(sizes),
                "procs": args.procs,
                "held_procs": args.held_procs,
                "lockfs_mount": args.mount or "own",
                "tmpfs_mount": args.tmpfs or "own",
                "references": [target.name for target in references],
                "rounds": args.rounds,
                "reclaim_delay": lockfs.reclaim_delay,
                "dir_grace": lockfs.dir_grace,
                "drop_caches": not args.no_drop_caches,
                "command": " ".join(["python -m lockfs.bench", *(argv or sys.argv[1:])]),
            }
            bench = Bench(
                tmpfs,
                lockfs,
                sizes,
                args.procs,
                args.held_procs,
                not args.no_drop_caches,
                references=references,
                rounds=args.rounds,
            )
            run_sections(bench, args.sections, results, args.keep_going)
    except KeyboardInterrupt:
        print("lockfs-bench: interrupted; mounts cleaned up", file=sys.stderr)
        return 130
    except (BenchError, ControlError, OSError, subprocess.CalledProcessError) as exc:
        print(f"lockfs-bench: {exc}", file=sys.stderr)
        return 1
    results["meta"]["seconds"] = round(time.monotonic() - _STARTED, 1)
    out.write(render(results))
    if args.json:
        write_json(args.json, results)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
