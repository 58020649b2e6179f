"""Timed runs: loops in forked worker processes, with the daemon's counters read around them."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .progress import BenchError
from .targets import Snapshot, Target, snapshot, table_state
from .workers import HELD_PER_DIR, hold_worker, list_worker, loop_worker


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
    with Workers(loop_worker, jobs_args, go=True) as workers:
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
def holding(
    target: Target,
    first: int,
    count: int,
    procs: int,
    *,
    root: str | None = None,
    per_dir: int = HELD_PER_DIR,
) -> Iterator[dict[str, Any]]:
    """Hold locks ``first .. first+count-1`` on ``target`` in ``procs`` processes, at
    workers.held_path under ``root`` (default: the target's), ``per_dir`` per directory."""
    ranges = split_range(range(first, first + count), procs)
    jobs = [(root or target.root, r, per_dir) for r in ranges]
    with Workers(hold_worker, jobs) as workers:
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


@contextlib.contextmanager
def listing(directory: str, procs: int) -> Iterator[dict[str, Any]]:
    """``procs`` processes list ``directory`` in a loop while the block runs; afterwards the
    dictionary holds how many listings and entries per second they made."""
    out: dict[str, Any] = {"procs": procs}
    with Workers(list_worker, [(directory,)] * procs) as workers:
        workers.expect("ready", 60)
        yield out
        workers.send_all("stop")
        results = workers.expect("done", 600)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    out["wall_s"] = wall
    out["listings"] = sum(r["listings"] for r in results)
    out["entries"] = sum(r["entries"] for r in results)
    out["listings_per_s"] = out["listings"] / wall if wall > 0 else None
    out["entries_per_s"] = out["entries"] / wall if wall > 0 else None


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
